"""Process isolation: invoke overhead of process mode vs thread mode, and worker spawn.

    python -m benchmarks.isolation [--quick] [--json OUT.json]

Both modes are measured the way an app calls them - ``Container.invoke`` on an
installed task - in two containers side by side, interleaved round by round
(``timing.interleave``) so machine drift hits both alike.  The figure is the
median of per-round ratios (target <= 3x for the small-dict call).  A process
call adds a request to the worker (marshal, the host's own data), the worker's
reply (the strict codec: a worker is untrusted) and two cross-process wake-ups;
the 800 KB array row shows what the data copies cost when payloads are large.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.timing import Case, RatioStats, interleave, paired_ratios
from vmcontainer import Container
from vmcontainer.testing import build_test_bundle, test_container

IDENTITY = "def main(x):\n    return x\n"
PAYLOADS: dict[str, Any] = {
    "small dict": {"user": "u1", "scores": [0.5, 1.5, 2.5], "n": 3},
    "800 KB ndarray": np.ones((1000, 100)),
}


def _container(isolation: str) -> Container:
    c = test_container(workers=1, isolation=isolation, breaker_threshold=1 << 30)
    c.install(build_test_bundle(IDENTITY, name="identity", timeout=30))
    return c


def invoke_overhead(rounds: int, inner: int) -> list[dict[str, Any]]:
    rows = []
    thread, process = _container("thread"), _container("process")
    try:
        for label, payload in PAYLOADS.items():
            big = isinstance(payload, np.ndarray)
            res = interleave(
                [Case("thread", lambda p=payload: thread.invoke("identity", p)),
                 Case("process", lambda p=payload: process.invoke("identity", p))],
                rounds=max(5, rounds // 10) if big else rounds, inner=inner, warmup=20)
            ratio = RatioStats.of(paired_ratios(res["process"].rounds, res["thread"].rounds))
            rows.append({"payload": label, "thread_us": res["thread"].median * 1e6,
                         "process_us": res["process"].median * 1e6, "ratio": ratio.median,
                         "ratio_p25": ratio.p25, "ratio_p75": ratio.p75,
                         "target": "<= 3x" if not big else ""})
    finally:
        thread.close()
        process.close()
    return rows


def spawn_times(n: int) -> dict[str, float]:
    """Fork from the zygote + harden + ready, as the pool's maintenance thread does it."""
    from vmcontainer.isolation import ProcessPool

    with ProcessPool(1) as pool:
        times = []
        for _ in range(n):
            t = time.perf_counter()
            worker = pool._start_worker()
            times.append(time.perf_counter() - t)
            worker.child.reap()
    return {"spawn_median_ms": statistics.median(times) * 1e3, "spawn_max_ms": max(times) * 1e3}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer rounds (about 10 s)")
    ap.add_argument("--json", metavar="OUT.json")
    args = ap.parse_args(argv)
    rows = invoke_overhead(rounds=60 if args.quick else 300, inner=20)
    spawn = spawn_times(10 if args.quick else 30)
    print("| invoke, identity task | thread mode | process mode | process / thread | target |")
    print("|---|---|---|---|---|")
    for r in rows:
        met = ""
        if r["target"]:
            met = " met" if r["ratio"] <= 3.0 else " not met"
        print(f"| {r['payload']} | {r['thread_us']:.1f} µs | {r['process_us']:.1f} µs | "
              f"{r['ratio']:.2f}× [{r['ratio_p25']:.2f}–{r['ratio_p75']:.2f}] | {r['target']}{met} |")
    print(f"\nworker spawn (fork from the zygote, harden, ready): median {spawn['spawn_median_ms']:.1f} ms, "
          f"max {spawn['spawn_max_ms']:.1f} ms; off the call path (a spare worker is kept warm)")
    if args.json:
        Path(args.json).write_text(json.dumps({"invoke": rows, **spawn}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
