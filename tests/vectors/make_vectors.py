"""Generate the fixed bundle test vector in ``tests/vectors/v1/``.

    cd /work/main && PYTHONPATH=. .venv/bin/python tests/vectors/make_vectors.py [--out DIR]

Keys are generated once with ``bytecode_tools.keygen.generate_keys``; only the
device-side files (``publisher.pub``, ``device.key``) are kept - the publisher
signing key is thrown away, so nobody can mint new bundles for this vector.
The bundle is built with ``bytecode_tools.builder.build_bundle`` (no expiry, a
fixed ``created`` time), then installed and invoked once to record the result.
Bundles are per-interpreter by design: the vector carries the bytecode magic
of the Python that ran this script.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from bytecode_tools.builder import BuildOptions, build_bundle
from bytecode_tools.keygen import generate_keys
from vmcontainer.bundle import format as fmt
from vmcontainer.bundle.keys import load_device_private, load_publisher_public
from vmcontainer.bundle.verifier import BundleVerifier
from vmcontainer.container import Container

SOURCE = 'def main(inputs):\n    return {"sum": sum(inputs["xs"])}\n'
TASK = "vector-sum"
RELEASE = 3
CREATED = 1_700_000_000  # 2023-11-14T22:13:20Z
INPUTS = {"xs": [1, 2, 3, 4.5]}


def make(out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        ids = generate_keys(tmp, device_key="p256")  # v1 vectors: a P-256 device key
        keys = Path(tmp)
        bundle = build_bundle(
            SOURCE,
            BuildOptions(name=TASK, release=RELEASE, timeout=2.0, meta={"vector": "v1"}),
            signers=[keys / "publisher.key"],
            recipients=[keys / "device.pub"],
            filename="task.py",
            now=CREATED,
        )
        for name in ("publisher.pub", "device.key"):
            shutil.copyfile(keys / name, out / name)
    (out / "device.key").chmod(0o600)
    (out / "bundle.vmb").write_bytes(bundle)

    with Container(trust=out / "publisher.pub", device_key=out / "device.key", workers=1) as c:
        c.install(bundle)
        result = c.invoke(TASK, INPUTS)
    verified = BundleVerifier([load_publisher_public(out / "publisher.pub")],
                              load_device_private(out / "device.key")).verify(bundle)

    raw = fmt.parse_bundle(bundle)
    expected = {
        "source": SOURCE,
        "inputs": INPUTS,
        "result": result,
        "publisher_kid": ids["publisher"],
        "device_kid": ids["device"],
        "size": len(bundle),
        "header": raw.header,
        "manifest": verified.manifest,
        "code_filename": verified.code.co_filename,
    }
    (out / "expected.json").write_text(json.dumps(expected, indent=2, sort_keys=True) + "\n")
    return expected


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=HERE / "v1")
    args = parser.parse_args()
    expected = make(args.out)
    h = expected["header"]
    print(f"wrote {args.out}: {h['task']} release {h['release']} for {h['python']['cache_tag']}"
          f" -> {expected['result']}")


if __name__ == "__main__":
    main()
