"""A bundle built under another CPython is refused as BundleIncompatible, before
anything is unmarshalled.

The other interpreter (pyenv 3.12/3.13, when present) may lack the project's
dependencies.  It is first asked to build the whole bundle with the project's
own sealer; if it cannot import it, it compiles a trivial task with plain
``compile()`` and reports ``marshal.dumps`` of it with its bytecode magic and
cache tag, and this process packs and seals those bytes with the real keys
through the format primitives.  Either way the bundle is genuinely foreign:
its code bytes come from the other interpreter.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

import vmcontainer.bundle.verifier as verifier_mod
from vmcontainer import BundleIncompatible
from vmcontainer.bundle import format as fmt
from vmcontainer.bundle.sealer import pack_task
from vmcontainer.bundle.verifier import RUNNING_PYTHON

from ._support import container_for, forge, make_keys

REPO = Path(__file__).resolve().parents[2]
SOURCE = 'def main(inputs):\n    return {"sum": sum(inputs["xs"])}\n'


def _other_pythons() -> list[str]:
    found = []
    for pattern in ("~/.pyenv/versions/3.12*/bin/python", "~/.pyenv/versions/3.13*/bin/python"):
        found += sorted(glob.glob(os.path.expanduser(pattern)))
    return [p for p in found if os.path.realpath(p) != os.path.realpath(sys.executable)]


OTHERS = _other_pythons()

FULL_BUILD = r"""
import json, sys
from bytecode_tools.builder import BuildOptions, build_bundle
data = build_bundle(open(sys.argv[1]).read(), BuildOptions(name="foreign", release=1),
                    signers=[sys.argv[2]], recipients=[sys.argv[3]], filename="task.py")
sys.stdout.write(json.dumps({"bundle": data.hex()}))
"""

MARSHAL_ONLY = r"""
import importlib.util, json, marshal, sys
code = compile(sys.argv[1], "task.py", "exec", dont_inherit=True)
sys.stdout.write(json.dumps({
    "code": marshal.dumps(code).hex(),
    "python": {"impl": sys.implementation.name,
               "magic": importlib.util.MAGIC_NUMBER.hex(),
               "cache_tag": sys.implementation.cache_tag or ""},
}))
"""


def _run(python: str, script: str, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run([python, "-c", script, *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60, check=False)


def _foreign_bundle(python: str, keys) -> tuple[bytes, str]:
    """(bundle bytes, how it was made) for ``python``."""
    src = keys.dir / "task.py"
    src.write_text(SOURCE)
    full = _run(python, FULL_BUILD, str(src), str(keys.publisher_key), str(keys.device_pub))
    if full.returncode == 0:
        return bytes.fromhex(json.loads(full.stdout)["bundle"]), "sealer"
    out = _run(python, MARSHAL_ONLY, SOURCE)
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    code_bytes = bytes.fromhex(info["code"])
    manifest = pack_task(compile("0", "x", "exec"), name="foreign", release=1).manifest
    payload = fmt.Payload(manifest, code_bytes, {})
    data = forge(payload, signers=[keys.signer], recipients=[keys.recipient], task="foreign",
                 python=info["python"])
    return data, "primitives"


@pytest.fixture
def no_unmarshal(monkeypatch):
    def forbidden(data):
        pytest.fail("marshal.loads was called on a foreign bundle's code")

    monkeypatch.setattr(verifier_mod, "marshal", types.SimpleNamespace(loads=forbidden))


def test_running_python_fields_are_this_interpreter():
    import importlib.util

    assert {"impl": sys.implementation.name,
                              "magic": importlib.util.MAGIC_NUMBER.hex(),
                              "cache_tag": sys.implementation.cache_tag} == RUNNING_PYTHON


@pytest.mark.skipif(not OTHERS, reason="no other CPython 3.12/3.13 under ~/.pyenv")
@pytest.mark.parametrize("python", OTHERS, ids=[Path(p).parts[-3] for p in OTHERS])
def test_bundle_from_another_cpython_is_incompatible(tmp_path, python, no_unmarshal):
    keys = make_keys(tmp_path / "keys")
    data, how = _foreign_bundle(python, keys)
    header = fmt.parse_bundle(data).header
    if header["python"]["magic"] == RUNNING_PYTHON["magic"]:
        pytest.skip(f"{python} has this interpreter's bytecode magic")
    assert header["python"]["cache_tag"] != RUNNING_PYTHON["cache_tag"]
    with container_for(keys) as c:
        with pytest.raises(BundleIncompatible) as info:
            c.install(data)
        msg = str(info.value)
        assert header["python"]["magic"] in msg and RUNNING_PYTHON["magic"] in msg, (how, msg)
        assert c.tasks() == []


def test_same_route_with_this_interpreter_installs(tmp_path):
    """Positive control for the route above: the same helper run with *this*
    interpreter yields a bundle that installs and runs - so the foreign one is
    refused for its interpreter fields alone."""
    keys = make_keys(tmp_path / "keys")
    data, how = _foreign_bundle(sys.executable, keys)
    assert how == "sealer", "this interpreter must be able to run the full build"
    assert fmt.parse_bundle(data).header["python"] == RUNNING_PYTHON
    with container_for(keys) as c:
        assert c.install(data).name == "foreign"
        assert c.invoke("foreign", {"xs": [1, 2, 3]}) == {"sum": 6}


def test_primitives_route_with_this_interpreter_installs(tmp_path):
    """Positive control for the fallback: marshal bytes from a subprocess of this
    interpreter, sealed here, install and run."""
    keys = make_keys(tmp_path / "keys")
    out = _run(sys.executable, MARSHAL_ONLY, SOURCE)
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["python"] == RUNNING_PYTHON
    manifest = pack_task(compile("0", "x", "exec"), name="foreign", release=1).manifest
    data = forge(fmt.Payload(manifest, bytes.fromhex(info["code"]), {}), signers=[keys.signer],
                 recipients=[keys.recipient], task="foreign", python=info["python"])
    with container_for(keys) as c:
        c.install(data)
        assert c.invoke("foreign", {"xs": [4, 5]}) == {"sum": 9}
