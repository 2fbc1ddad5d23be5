"""Soak: >= 100k mixed calls across lanes while new releases are hot-installed.

    python -m benchmarks.soak [--calls 100000]

Calls succeed, raise, time out or are cancelled in a fixed pattern; a thread
hot-installs new releases throughout.  Checks (exit code 1 if any fails):
every future resolves exactly once, thread count and RSS do not grow, and the
container's metrics agree with what was sent.  The short version of this runs
in the test suite (tests/scheduler/test_scheduler.py).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import gc
import resource
import threading
import time
from collections import Counter

from vmcontainer import TaskError, TaskTimeout
from vmcontainer.testing import build_test_bundle, test_container

SOURCE = """import vm
def main(i):
    k = i % 4
    if k == 1:
        raise ValueError("bad input")
    if k == 2:
        while True:
            pass
    return vm.release
"""


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def run(calls: int, window: int = 64) -> dict[str, object]:
    sent: Counter[str] = Counter()
    got: Counter[str] = Counter()
    settle_counts: Counter[int] = Counter()
    lock = threading.Lock()

    def settled(fut: concurrent.futures.Future) -> None:
        with lock:
            settle_counts[fut.call_id] += 1  # type: ignore[attr-defined]

    with test_container(workers=2, max_queue=1_000_000, breaker_threshold=10**9) as c:
        c.install(build_test_bundle(SOURCE, name="soak", release=1, timeout=1.0))
        for _ in range(2000):  # warm up allocators before the baseline reading
            c.invoke("soak", 0)
        gc.collect()
        rss0, threads0 = rss_mb(), threading.active_count()
        stop = threading.Event()
        installs = [0]

        def installer() -> None:
            release = 2
            while not stop.wait(0.05):
                c.install(build_test_bundle(SOURCE, name="soak", release=release, timeout=1.0))
                release += 1
                installs[0] += 1

        t = threading.Thread(target=installer)
        t.start()
        start = time.perf_counter()
        inflight: list[concurrent.futures.Future] = []
        for i in range(calls):
            kind = ("ok", "error", "timeout", "ok")[i % 4]
            cancel = i % 16 == 3
            f = c.submit("soak", i, lane=("core", "regular", "low")[i % 3],
                         timeout=0.002 if kind == "timeout" else None)
            f.add_done_callback(settled)
            if cancel:
                f.cancel()
            sent["cancel-requested" if cancel else kind] += 1
            inflight.append(f)
            if len(inflight) >= window:
                _drain(inflight.pop(0), got)
        for f in inflight:
            _drain(f, got)
        elapsed = time.perf_counter() - start
        stop.set()
        t.join()
        time.sleep(0.2)
        gc.collect()
        rss1, threads1 = rss_mb(), threading.active_count()
        snap = c.metrics()["tasks"]["soak"]
    failures = []
    if sum(got.values()) != calls:
        failures.append(f"{sum(got.values())} outcomes for {calls} calls")
    if len(settle_counts) != calls or set(settle_counts.values()) != {1}:
        failures.append("a future settled more or less than once")
    if threads1 > threads0:
        failures.append(f"threads grew {threads0} -> {threads1}")
    if rss1 - rss0 > 50:
        failures.append(f"RSS grew {rss1 - rss0:.1f} MB")
    ran_ok = got["ok"]
    if snap["successes"] - 2000 != ran_ok:
        failures.append(f"metrics successes {snap['successes'] - 2000} != {ran_ok}")
    if snap["failures"].get("TaskError", 0) != got["error"]:
        failures.append("metrics TaskError count disagrees")
    if snap["timeouts"] != got["timeout"]:
        failures.append("metrics timeout count disagrees")
    return {
        "calls": calls, "elapsed_s": round(elapsed, 2), "calls_per_s": round(calls / elapsed),
        "outcomes": dict(got), "sent": dict(sent), "hot_installs": installs[0],
        "rss_mb_before": round(rss0, 1), "rss_mb_after": round(rss1, 1),
        "threads_before": threads0, "threads_after": threads1,
        "p50_ms": snap["latency"]["p50_ms"], "p99_ms": snap["latency"]["p99_ms"],
        "failures": failures,
    }


def _drain(f: concurrent.futures.Future, got: Counter[str]) -> None:
    try:
        f.result(timeout=60)
        got["ok"] += 1
    except TaskError:
        got["error"] += 1
    except TaskTimeout:
        got["timeout"] += 1
    except concurrent.futures.CancelledError:
        got["cancelled"] += 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calls", type=int, default=100_000)
    args = ap.parse_args(argv)
    report = run(args.calls)
    for k, v in report.items():
        print(f"{k:16s} {v}")
    return 1 if report["failures"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
