"""Worker threads behind a ``concurrent.futures.Future`` contract.

A hand-off through ``SimpleQueue`` to long-lived workers is the cheapest
cross-thread path measured here (about half of ``ThreadPoolExecutor``).  Each
job carries its ``CallScope``: a call whose deadline passes while it waits in
the queue fails with ``TaskTimeout`` without running; a call cancelled while
queued never starts.
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future
from typing import Any, Callable

from ..errors import TaskCancelled, TaskTimeout, VmError
from .scope import CallScope

Job = tuple[Future, CallScope, Callable[[], Any]]


class QueueFull(VmError):
    """The pool's queue is at its bound; the call was not accepted."""


class WorkerPool:
    def __init__(self, workers: int = 2, *, name: str = "vm-worker", max_queue: int = 10_000):
        if workers < 1:
            raise ValueError("workers must be >= 1")
        self._queue: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._max_queue = max_queue
        self._lock = threading.Lock()
        self._closed = False
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
            for i in range(workers)
        ]
        for t in self._threads:
            t.start()

    def submit(self, scope: CallScope, fn: Callable[[], Any]) -> Future:
        if self._closed:
            raise RuntimeError("container is closed")
        if self._queue.qsize() >= self._max_queue:
            raise QueueFull(f"{self._max_queue} calls already queued")
        fut: Future = Future()
        self._queue.put((fut, scope, fn))
        return fut

    def _work(self) -> None:
        get = self._queue.get
        while True:
            job = get()
            if job is None:
                return
            fut, scope, fn = job
            if not fut.set_running_or_notify_cancel():
                continue
            if scope.cancelled:
                fut.set_exception(TaskCancelled("call cancelled before it started"))
                continue
            if scope.done_by_deadline:
                fut.set_exception(TaskTimeout("deadline passed while the call was queued"))
                continue
            try:
                result = fn()
            except BaseException as exc:  # the runtime already made it public
                fut.set_exception(exc)
            else:
                fut.set_result(result)
            del job, fut, scope, fn

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        for _ in self._threads:
            self._queue.put(None)
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(timeout=5)
