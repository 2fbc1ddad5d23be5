"""The watchdog: terminates ONNX Runtime runs whose call's deadline has passed.

Python code in a task checks its own clock, but an ORT ``run`` is one C call
that releases the GIL and checks nothing of ours: only
``RunOptions.terminate`` stops it.  One thread serves every call.  A scope is
pushed once per call (at its first model run); the thread sleeps until the
earliest deadline and is only woken when a new, earlier one arrives, so a
steady stream of calls costs no wake-ups.
"""

from __future__ import annotations

import heapq
import threading
import time

from ..scheduler.scope import CallScope


class Watchdog:
    def __init__(self) -> None:
        self._heap: list[tuple[float, int, CallScope]] = []
        self._cond = threading.Condition()
        self._wake_at = float("inf")
        self._closed = False
        self._thread: threading.Thread | None = None

    def watch(self, scope: CallScope) -> None:
        with self._cond:
            if self._closed:
                return
            heapq.heappush(self._heap, (scope.deadline, scope.call_id, scope))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="vm-watchdog", daemon=True)
                self._thread.start()
            elif scope.deadline < self._wake_at:
                self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout=2)

    def _run(self) -> None:
        with self._cond:
            while not self._closed:
                now = time.monotonic()
                while self._heap and self._heap[0][0] <= now:
                    _, _, scope = heapq.heappop(self._heap)
                    scope.terminate_runs()
                self._wake_at = self._heap[0][0] if self._heap else float("inf")
                timeout = None if not self._heap else max(0.0, self._wake_at - now)
                self._cond.wait(timeout)
