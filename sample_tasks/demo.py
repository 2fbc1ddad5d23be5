"""The end-to-end demo: keys -> model -> signed bundle -> container -> invoke by name.

Run from the repository root::

    python -m sample_tasks.demo [--out demo-out]

It creates keys, trains and exports the ranker model, builds signed and
encrypted bundles, installs them into a container, invokes the ranker, hot-swaps
a new release while calls are running, shows a runaway task timing out and a
tampered bundle being refused while the container keeps serving, and prints a
summary table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from pathlib import Path

from bytecode_tools import BuildOptions, build_bundle, generate_keys
from sample_tasks.ranker import model as ranker
from vmcontainer import BundleError, Container, TaskTimeout

RUNAWAY = "def main(inputs):\n    while True:\n        pass\n"


def step(msg: str) -> None:
    print(f"==> {msg}", flush=True)


def timed_calls(container: Container, name: str, inputs: object, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        container.invoke(name, inputs)
        out.append((time.perf_counter() - t) * 1000)
    return out


def _other_samples(c: Container, build, out: Path) -> list[tuple[str, tuple[str, str]]]:  # type: ignore[no-untyped-def]
    """Build, install and invoke ipv_features (and image_check when scikit-learn,
    which ships the digits it trains on, is installed)."""
    from sample_tasks.ipv_features import model as ipv

    results = []
    intent = ipv.build_intent_model(out / "intent.onnx")
    c.install(build_bundle(ipv.TASK_PATH, BuildOptions(name="ipv_features", release=1, timeout=2.0,
                                                       models={ipv.MODEL_NAME: intent}),
                           signers=[out / "keys" / "publisher.key"],
                           recipients=[out / "keys" / "device.pub"]))
    inputs = json.loads(ipv.EXAMPLE_INPUTS_PATH.read_text())
    lat = timed_calls(c, "ipv_features", inputs, 50)
    views = c.invoke("ipv_features", inputs)
    n = len(views.get("page_views", views)) if isinstance(views, dict) else len(views)
    results.append((f"ipv_features: {len(inputs.get('events', []))} events -> {n} page-view records",
                    ("ipv_features invoke p50", f"{statistics.median(lat):.2f} ms")))
    try:
        from sample_tasks.image_check import model as img
    except ImportError:
        return results
    try:
        digits = img.build_digits_model(out / "digits.onnx")
    except ImportError:
        results.append(("image_check skipped: pip install '.[samples]' for scikit-learn", ("image_check", "skipped")))
        return results
    c.install(build_bundle(img.TASK_PATH, BuildOptions(name="image_check", release=1, timeout=2.0,
                                                       models={img.MODEL_NAME: digits}),
                           signers=[out / "keys" / "publisher.key"],
                           recipients=[out / "keys" / "device.pub"]))
    inputs = json.loads(img.EXAMPLE_INPUTS_PATH.read_text())
    verdict = c.invoke("image_check", inputs)
    lat = timed_calls(c, "image_check", inputs, 50)
    results.append((f"image_check: verdicts {_summarise(verdict)}",
                    ("image_check invoke p50", f"{statistics.median(lat):.2f} ms")))
    return results


def _summarise(verdict: object) -> str:
    if isinstance(verdict, dict):
        items = verdict.get("results") or verdict.get("verdicts") or []
        if isinstance(items, list):
            counts: dict[str, int] = {}
            for item in items:
                key = item.get("verdict", "?") if isinstance(item, dict) else str(item)
                counts[key] = counts.get(key, 0) + 1
            return str(counts)
    return str(verdict)[:80]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="demo-out", help="where keys, model and bundles go")
    args = parser.parse_args(argv)
    out = Path(args.out)
    rows: list[tuple[str, str]] = []

    step(f"vmtool keygen --out {out / 'keys'}")
    ids = generate_keys(out / "keys", overwrite=True)
    keys = out / "keys"
    print(f"    publisher {ids['publisher']}  device {ids['device']}")

    step("training the ranker MLP on generated session data and exporting ONNX")
    t = time.perf_counter()
    model_bytes = ranker.build_ranker_model(out / "ranker.onnx", seed=0)
    rows.append(("train + export model", f"{(time.perf_counter() - t) * 1000:.0f} ms"))

    def build(release: int, seed_model: bytes, source: Path | str = ranker.TASK_PATH,
              name: str = "ranker", timeout: float = 1.0) -> bytes:
        opts = BuildOptions(name=name, release=release, timeout=timeout, lane="core",
                            models={"ranker": seed_model} if name == "ranker" else {})
        data = build_bundle(Path(source) if isinstance(source, Path) else source, opts,
                            signers=[keys / "publisher.key"], recipients=[keys / "device.pub"])
        path = out / f"{name}-r{release}.vmb"
        path.write_bytes(data)
        return data

    step("vmtool build sample_tasks/ranker/task.py --name ranker --release 1 (signed, encrypted)")
    bundle1 = build(1, model_bytes)
    print(f"    {out / 'ranker-r1.vmb'}: {len(bundle1)} bytes")

    inputs = json.loads(ranker.EXAMPLE_INPUTS_PATH.read_text())
    with Container(trust=keys / "publisher.pub", device_key=keys / "device.key", workers=2) as c:
        step("device: verify, decrypt, load and install release 1")
        t = time.perf_counter()
        info = c.install(bundle1)
        rows.append(("install ranker r1 (incl. ORT session)", f"{(time.perf_counter() - t) * 1000:.2f} ms"))
        print(f"    installed {info.name} release {info.release} lane {info.lane} models {info.models}")

        step("invoke 'ranker' by name")
        result = c.invoke("ranker", inputs)
        print(f"    ranking {result['ranking']}")
        print(f"    scores  {result['scores']}")
        lat = timed_calls(c, "ranker", inputs, 300)
        rows.append(("ranker invoke p50 / p99",
                     f"{statistics.median(lat):.2f} / {sorted(lat)[int(len(lat) * 0.99) - 1]:.2f} ms"))

        step("the other samples: item-page-view features (Walle) and image compliance (JD)")
        for label, info_row in _other_samples(c, build, out):
            print(f"    {label}")
            rows.append(info_row)

        step("hot swap: install release 2 (retrained model) while calls are running")
        model2 = ranker.build_ranker_model(out / "ranker-v2.onnx", seed=1)
        bundle2 = build(2, model2)
        seen: list[int] = []
        stop = threading.Event()

        def caller() -> None:
            while not stop.is_set():
                c.invoke("ranker", inputs)
                seen.append(max(t.release for t in c.tasks() if t.name == "ranker"))

        th = threading.Thread(target=caller)
        th.start()
        time.sleep(0.05)
        t = time.perf_counter()
        c.install(bundle2)
        swap_ms = (time.perf_counter() - t) * 1000
        time.sleep(0.05)
        stop.set()
        th.join()
        print(f"    {len(seen)} calls during the swap, none failed; now on release "
              f"{next(t.release for t in c.tasks() if t.name == 'ranker')}")
        rows.append(("hot swap to r2 (calls kept running)", f"{swap_ms:.2f} ms, 0 failed calls"))

        step("a runaway task (while True: pass) with a 100 ms deadline")
        c.install(build(1, b"", source=RUNAWAY, name="runaway", timeout=0.1))
        t = time.perf_counter()
        try:
            c.invoke("runaway", None)
        except TaskTimeout as exc:
            took = (time.perf_counter() - t) * 1000
            print(f"    TaskTimeout after {took:.1f} ms: {exc}")
            rows.append(("runaway task stopped", f"TaskTimeout after {took:.1f} ms (deadline 100 ms)"))
        assert c.invoke("ranker", inputs)["ranking"], "container must keep serving"
        print("    ranker still answers")

        step("a tampered bundle (one ciphertext byte flipped)")
        forged = bytearray(bundle2)
        forged[-40] ^= 0x01
        try:
            c.install(bytes(forged))
        except BundleError as exc:
            print(f"    refused: {type(exc).__name__}: {exc}")
            rows.append(("tampered bundle", f"refused ({type(exc).__name__})"))
        assert c.invoke("ranker", inputs)["ranking"], "container must keep serving"
        print("    ranker still answers")

    print()
    print("| step | result |")
    print("|---|---|")
    for k, v in rows:
        print(f"| {k} | {v} |")
    print()
    print("Try the CLI on the same files:")
    print(f"  vmc invoke {out / 'ranker-r2.vmb'} --trust {keys / 'publisher.pub'} --key {keys / 'device.key'} "
          f"--input-file {ranker.EXAMPLE_INPUTS_PATH} --json")
    print(f"  vmc run {ranker.TASK_PATH} --model ranker={out / 'ranker.onnx'} "
          f"--input-file {ranker.EXAMPLE_INPUTS_PATH}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
