"""Invoke overhead of process mode vs thread mode, and worker spawn time.

Not collected by pytest.  Run: ``python -m tests.isolation.bench_overhead``.
Both modes are measured as the container runs them: a hand-off through a
``SimpleQueue`` to a long-lived lane thread, which calls ``TaskProgram.call``
(thread mode) or ``ProcessPool.call`` (process mode).  Variants
are interleaved call by call, so machine noise hits them alike.
"""

from __future__ import annotations

import queue
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from tests.isolation.conftest import make_spec
from vmcontainer.isolation import ProcessPool
from vmcontainer.sandbox.compiler import compile_task
from vmcontainer.sandbox.runtime import TaskProgram
from vmcontainer.scheduler.scope import CallScope

SOURCE = "def main(x):\n    return x\n"
ROUNDS = 2000


def _thread_caller(run: Callable[[Any], Any]) -> tuple[Callable[[Any], Any], Callable[[], None]]:
    """A lane thread: ``run`` on a long-lived thread behind a ``SimpleQueue``."""
    jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
    done: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def serve() -> None:
        while (item := jobs.get()) is not None:
            done.put(run(item))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()

    def call(x: Any) -> Any:
        jobs.put(x)
        return done.get()

    return call, lambda: (jobs.put(None), thread.join())


def main() -> None:
    program = TaskProgram(compile_task(SOURCE, "script.py").code, name="b", release=1)
    spec = make_spec(SOURCE)
    start = time.perf_counter()
    pool = ProcessPool(1)
    pool.call(spec, 0, CallScope(30))
    print(f"pool start + first call (zygote imports, fork, program load): "
          f"{(time.perf_counter() - start) * 1000:.0f} ms")
    thread_call, stop_thread = _thread_caller(lambda x: program.call(x, CallScope(5)))
    process_call, stop_process = _thread_caller(lambda x: pool.call(spec, x, CallScope(5)))
    variants = {
        "direct TaskProgram.call": lambda x: program.call(x, CallScope(5)),
        "thread mode": thread_call,
        "process mode": process_call,
        "pool.call, no hand-off": lambda x: pool.call(spec, x, CallScope(5)),
    }
    for label, payload in (("small dict", {"a": 1, "b": [1.5, "x"]}),
                           ("800 KB ndarray", np.ones((1000, 100)))):
        times: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(ROUNDS if label == "small dict" else ROUNDS // 10):
            for name, fn in variants.items():
                t = time.perf_counter()
                fn(payload)
                times[name].append(time.perf_counter() - t)
        print(f"-- {label}")
        for name, samples in times.items():
            samples.sort()
            print(f"{name:>24}: median {statistics.median(samples) * 1e6:8.1f} us   "
                  f"p90 {samples[int(len(samples) * 0.9)] * 1e6:8.1f} us")
    stop_thread()
    stop_process()
    spawns = []
    for _ in range(20):
        t = time.perf_counter()
        worker = pool._start_worker()
        spawns.append(time.perf_counter() - t)
        worker.child.reap()
    spawns.sort()
    print(f"worker spawn (fork from zygote + harden + ready): median "
          f"{statistics.median(spawns) * 1000:.1f} ms, min {spawns[0] * 1000:.1f} ms, "
          f"max {spawns[-1] * 1000:.1f} ms")
    pool.close()


if __name__ == "__main__":
    main()
