"""Scheduler figures: calls/s, per-lane p50/p99, core-lane p99 with the low lane
flooded vs idle, and first call vs steady state.

    python -m benchmarks.scheduler [--quick]

The core task is the ranker sample (a real script + ONNX MLP, ~1 ms): a flood
of low-lane work must not delay it.  Idle and flooded rounds are interleaved so
machine drift hits both alike; the figure is the ratio of their p99s (target
<= 1.5x).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from concurrent.futures import wait
from pathlib import Path

from benchmarks.timing import percentile
from sample_tasks.ranker import model as ranker
from vmcontainer.testing import build_test_bundle, test_container

HOG = "def main(i):\n    n = 0\n    while True:\n        n += 1\n"
TRIVIAL = "def main(i):\n    return i\n"


def _timed(c, name, inputs, lane, n):  # type: ignore[no-untyped-def]
    out = []
    for _ in range(n):
        t = time.perf_counter()
        c.invoke(name, inputs, lane=lane)
        out.append(time.perf_counter() - t)
    return out


def core_flooded_vs_idle(rounds: int, per_round: int) -> dict[str, float]:
    model = ranker.build_ranker_model(Path(tempfile.mkdtemp()) / "r.onnx")
    inputs = json.loads(ranker.EXAMPLE_INPUTS_PATH.read_text())
    idle: list[float] = []
    flooded: list[float] = []
    with test_container(workers=1, lanes={"low": 2}, max_queue=100_000) as c:
        c.install(build_test_bundle(ranker.TASK_PATH, name="ranker", models={"ranker": model},
                                    lane="core", timeout=5))
        c.install(build_test_bundle(HOG, name="hog", timeout=60))
        _timed(c, "ranker", inputs, "core", 20)
        for _ in range(rounds):
            idle += _timed(c, "ranker", inputs, "core", per_round)
            hogs = [c.submit("hog", None, lane="low") for _ in range(6)]
            time.sleep(0.02)
            flooded += _timed(c, "ranker", inputs, "core", per_round)
            for h in hogs:
                h.cancel()
            wait(hogs)
    return {
        "core_p50_idle_ms": percentile(idle, 50) * 1e3,
        "core_p99_idle_ms": percentile(idle, 99) * 1e3,
        "core_p50_flooded_ms": percentile(flooded, 50) * 1e3,
        "core_p99_flooded_ms": percentile(flooded, 99) * 1e3,
        "core_p99_ratio": percentile(flooded, 99) / percentile(idle, 99),
    }


def throughput(calls: int) -> dict[str, float]:
    with test_container(workers=2, max_queue=1_000_000) as c:
        c.install(build_test_bundle(TRIVIAL, name="t", timeout=30))
        lanes = ("core", "regular", "low")
        start = time.perf_counter()
        pending = [c.submit("t", i, lane=lanes[i % 3]) for i in range(calls)]
        wait(pending)
        elapsed = time.perf_counter() - start
        snap = c.metrics()["lanes"]
    out = {"calls_per_s": calls / elapsed}
    for lane in lanes:
        out[f"{lane}_p50_ms"] = snap[lane]["latency"]["p50_ms"]
        out[f"{lane}_p99_ms"] = snap[lane]["latency"]["p99_ms"]
    return out


def first_call_vs_steady() -> dict[str, float]:
    model = ranker.build_ranker_model(Path(tempfile.mkdtemp()) / "r.onnx")
    inputs = json.loads(ranker.EXAMPLE_INPUTS_PATH.read_text())
    out = {}
    for label, warm in (("cold", None), ("preloaded", inputs)):
        with test_container(workers=1) as c:
            c.install(build_test_bundle(ranker.TASK_PATH, name="ranker", models={"ranker": model},
                                        warmup=warm, timeout=5))
            first = _timed(c, "ranker", inputs, None, 1)[0]
            steady = percentile(_timed(c, "ranker", inputs, None, 200), 50)
        out[f"first_call_{label}_ms"] = first * 1e3
        out[f"steady_{label}_ms"] = steady * 1e3
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    results = {}
    results.update(throughput(5_000 if args.quick else 30_000))
    results.update(core_flooded_vs_idle(rounds=3 if args.quick else 8, per_round=50 if args.quick else 100))
    results.update(first_call_vs_steady())
    print("| figure | value |\n|---|---|")
    for k, v in results.items():
        print(f"| {k} | {v:,.3f} |")
    print(f"\ncore-lane p99 flooded / idle = {results['core_p99_ratio']:.2f}x (target <= 1.5x)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
