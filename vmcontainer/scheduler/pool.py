"""Priority lanes of worker threads behind a ``concurrent.futures.Future`` contract.

Three lanes - core, regular, low - each with its own threads and its own
bounded queue (``QueueFull`` when full: never unbounded memory).  Threads do
not give priority under the GIL, so the core lane also *preempts*: while any
core call is queued or running, the lower lanes' gates are shut and their
running calls park at their next checkpoint (``CallScope.request_yield``),
handing the GIL to the core call within microseconds instead of a switch
interval.  Calls whose deadline passes in the queue fail without running;
calls cancelled in the queue never start.

Hand-off is a ``SimpleQueue`` to long-lived threads: the cheapest cross-thread
path measured here, about half of ``ThreadPoolExecutor``.  A caller that blocks
for the result (``Container.invoke``) waits on a ``CallSlot`` - one raw lock -
instead of a ``Future``, whose ``Condition`` costs a few microseconds per call.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from typing import Any

from ..errors import TaskCancelled, TaskTimeout, VmError
from .scope import CallScope, Gate

LANES = ("core", "regular", "low")


class QueueFull(VmError):
    """The lane's queue is at its bound; the call was not accepted."""


class CallFuture(Future):
    """A ``Future`` that knows its call and can stop it while it runs.

    ``cancel()`` on a pending call behaves as usual.  On a running call it
    cancels the call's scope - the task stops at its next checkpoint (a running
    inference is terminated) and the future resolves with ``TaskCancelled``,
    which is also a ``concurrent.futures.CancelledError`` - and returns True.
    """

    def __init__(self, scope: CallScope):
        super().__init__()
        self.scope = scope
        self.call_id = scope.call_id

    def cancel(self) -> bool:
        if super().cancel():
            self.scope.cancel()
            return True
        if self.done():
            return False
        self.scope.cancel()
        return True


class CallSlot:
    """The outcome of a call whose caller blocks for it: the ``Future`` subset the
    lanes use, on one raw lock the worker releases when the call settles.  It is
    never cancelled itself: cancelling the call goes through its scope."""

    __slots__ = ("_error", "_lock", "_value", "scope")

    def __init__(self, scope: CallScope):
        self.scope = scope
        self._value: Any = None
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        self._lock.acquire()

    def set_running_or_notify_cancel(self) -> bool:
        return True

    def cancelled(self) -> bool:
        return False

    def set_result(self, value: Any) -> None:
        self._value = value
        self._lock.release()

    def set_exception(self, error: BaseException) -> None:
        self._error = error
        self._lock.release()

    def result(self) -> Any:
        """Block until the call settles; return its result or raise its error."""
        self._lock.acquire()
        error = self._error
        if error is not None:
            self._error = None  # the traceback holds this frame: no reference cycle
            try:
                raise error
            finally:
                error = None
        return self._value


Outcome = CallFuture | CallSlot
Job = tuple[Outcome, Callable[[], Any], Callable[[BaseException], None] | None]


class Lane:
    def __init__(self, name: str, threads: int, max_queue: int,
                 on_enqueue: Callable[[Lane], None] | None = None,
                 on_done: Callable[[Lane], None] | None = None):
        if threads < 1:
            raise ValueError(f"lane {name!r} needs at least one thread")
        self.name = name
        self.max_queue = max_queue
        self.gate = Gate()
        self.gate.set()
        self.running: set[CallScope] = set()
        self._queue: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._on_enqueue = on_enqueue
        self._on_done = on_done
        self._closed = False
        self._threads = [
            threading.Thread(target=self._work, name=f"vm-{name}-{i}", daemon=True)
            for i in range(threads)
        ]
        for t in self._threads:
            t.start()

    def depth(self) -> int:
        return self._queue.qsize()

    def submit(self, outcome: Outcome, fn: Callable[[], Any],
               on_skip: Callable[[BaseException], None] | None = None) -> None:
        """Queue ``fn``, to settle ``outcome``; ``on_skip(error)`` is told when the call
        ends without running (cancelled, or its deadline passed in the queue)."""
        if self._closed:
            raise RuntimeError("container is closed")
        if self._queue.qsize() >= self.max_queue:
            raise QueueFull(f"lane {self.name!r} has {self.max_queue} calls queued")
        if self._on_enqueue is not None:
            self._on_enqueue(self)
        self._queue.put((outcome, fn, on_skip))

    def _work(self) -> None:
        get = self._queue.get
        while True:
            job = get()
            if job is None:
                return
            fut, fn, on_skip = job
            scope = fut.scope
            try:
                skipped: BaseException | None = None
                if not fut.set_running_or_notify_cancel() or scope.cancelled:
                    skipped = TaskCancelled("call cancelled before it started")
                elif time.monotonic() > scope.deadline:
                    skipped = TaskTimeout("deadline passed while the call was queued")
                if skipped is not None:
                    if on_skip is not None:
                        on_skip(skipped)
                    if not fut.cancelled():
                        fut.set_exception(skipped)
                    continue
                scope.gate = self.gate
                self.running.add(scope)
                try:
                    result = fn()
                except BaseException as exc:  # already public: the runtime translated it
                    fut.set_exception(exc)
                else:
                    fut.set_result(result)
                finally:
                    self.running.discard(scope)
            finally:
                if self._on_done is not None:
                    self._on_done(self)
            del job, fut, fn, on_skip, scope

    def close(self) -> None:
        self._closed = True
        for _ in self._threads:
            self._queue.put(None)
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(timeout=5)


class LaneSet:
    """The three lanes plus core-over-lower preemption."""

    def __init__(self, threads: dict[str, int], *, max_queue: int = 10_000, preempt: bool = True,
                 resume_grace: float = 0.002):
        self._grace = resume_grace
        self._core_active = 0
        self._lock = threading.Lock()
        # Only core calls move the gates: the other lanes run no hook per call.
        hooks = (self._enqueued, self._done) if preempt else (None, None)
        self.lanes = {
            name: Lane(name, threads.get(name, 1), max_queue, *(hooks if name == "core" else (None, None)))
            for name in LANES
        }

    def submit(self, lane: str, outcome: Outcome, fn: Callable[[], Any],
               on_skip: Callable[[BaseException], None] | None = None) -> None:
        try:
            target = self.lanes[lane]
        except KeyError:
            raise ValueError(f"unknown lane {lane!r}; lanes are {', '.join(LANES)}") from None
        target.submit(outcome, fn, on_skip)

    def queued(self, lane: str) -> int:
        """Calls waiting in ``lane``'s queue (``ValueError`` for an unknown lane)."""
        try:
            return self.lanes[lane].depth()
        except KeyError:
            raise ValueError(f"unknown lane {lane!r}; lanes are {', '.join(LANES)}") from None

    def _lower(self) -> Iterable[Lane]:
        return (self.lanes["regular"], self.lanes["low"])

    def _enqueued(self, lane: Lane) -> None:
        with self._lock:
            self._core_active += 1
            if self._core_active == 1:
                for lower in self._lower():
                    lower.gate.clear()
                    for scope in list(lower.running):
                        scope.request_yield()

    def _done(self, lane: Lane) -> None:
        with self._lock:
            self._core_active -= 1
            if self._core_active == 0:
                resume_at = time.monotonic() + self._grace
                for lower in self._lower():
                    lower.gate.resume_at = resume_at
                    lower.gate.set()

    def depths(self) -> dict[str, int]:
        return {name: lane.depth() for name, lane in self.lanes.items()}

    def running(self) -> dict[str, int]:
        return {name: len(lane.running) for name, lane in self.lanes.items()}

    def close(self) -> None:
        for lane in self.lanes.values():
            lane.close()
