"""Micro-batching: concurrent runs of one model merged into one ORT run.

Opt-in per model (``DeviceProfile(micro_batch={"ranker": {"window_ms": 2,
"max_batch": 64, "max_concurrent": 1}})`` or the model bundle's
``micro_batch``), because it only pays in some regimes (docs/models.md has the
measurements) and needs a row-independent model whose every input and output
has a dynamic first (batch) axis.

The model gets ``max_concurrent`` run slots.  A caller that finds a free slot
and nobody queued simply runs, with its own ``RunOptions`` (two lock round
trips are all batching costs it).  Otherwise it queues and waits - for the
result, its deadline, a slot handed over by a finishing run, or the end of
``window_ms``, after which it runs even past the slot limit.  Whoever leads a
run takes the oldest queued request and every compatible one behind it (same
trailing shapes, up to ``max_batch``), stacks them along axis 0, runs once,
copies each member's rows out and wakes them.  So requests that arrive while
the model is busy are merged, and nobody waits longer than the window for a
slot.  There is no batching thread: a dedicated one has to win the GIL back
from the callers' Python for every batch (up to a switch interval each time),
which measured 5x slower than not batching.

Deadlines and cancellation stay per caller.  Each queued request is attached
to its caller's ``CallScope`` like a ``RunOptions``: cancel, or the watchdog at
the caller's deadline, sets its ``terminate``, which wakes a waiting caller (it
raises ``TaskTimeout``/``TaskCancelled``) and takes it out of the queue.  A
merged run is terminated when its leader's deadline passes or every member is
gone; members still within their deadlines are queued again and one of them
leads a new run, so nobody waits on someone else's deadline.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import TYPE_CHECKING

import numpy as np
import onnxruntime as ort

from ..errors import ModelError
from ..scheduler.scope import CallScope, Interrupt
from .profile import MicroBatch

if TYPE_CHECKING:
    from .loaded import LoadedModel


class _Signal:
    """A one-shot ``threading.Event`` made of one lock: creating an ``Event`` costs
    ~3 us (a ``Condition`` and two locks), a lock ~0.07 us, and there is one per run."""

    __slots__ = ("_lock", "is_set")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()
        self.is_set = False

    def set(self) -> None:
        if not self.is_set:
            self.is_set = True
            try:
                self._lock.release()
            except RuntimeError:  # a racing set() released it first
                pass

    def wait(self, timeout: float) -> bool:
        if self.is_set:
            return True
        if self._lock.acquire(True, timeout):
            self._lock.release()
            return True
        return self.is_set

    def clear(self) -> None:
        if self.is_set:
            self._lock.acquire()
            self.is_set = False


class _Request:
    """One caller's run, queued or part of a merged run."""

    __slots__ = ("arrived", "batch", "caller", "error", "event", "feeds", "gone", "key",
                 "result", "retry", "rows")

    def __init__(self, feeds: dict[str, np.ndarray], rows: int, key: tuple, caller: int):
        self.feeds = feeds
        self.rows = rows
        self.key = key
        self.caller = caller
        self.arrived = time.monotonic()
        self.event = _Signal()
        self.result: dict[str, np.ndarray] | None = None
        self.error: BaseException | None = None
        self.gone = False
        self.retry = False
        self.batch: _Batch | None = None

    # ``CallScope.terminate_runs`` sets this on cancel and (via the watchdog) at the deadline.
    @property
    def terminate(self) -> bool:
        return self.gone

    @terminate.setter
    def terminate(self, value: bool) -> None:
        if not value or self.gone:
            return
        self.gone = True
        self.event.set()
        batch = self.batch
        if batch is not None:
            batch.member_left(self)


class _Batch:
    """A merged run in flight: terminated when its leader or its last member leaves."""

    __slots__ = ("leader", "requests", "ro")

    def __init__(self, requests: list[_Request], leader: _Request, ro: ort.RunOptions):
        self.requests = requests
        self.leader = leader
        self.ro = ro

    def member_left(self, req: _Request) -> None:
        if req is self.leader or all(r.gone for r in self.requests):
            self.ro.terminate = True


class MicroBatcher:
    """The queue of one model; callers lead the merged runs themselves."""

    def __init__(self, model: LoadedModel, config: MicroBatch):
        for spec in (*model.signature.inputs, *model.signature.outputs):  # type: ignore[union-attr]
            if not spec.shape or type(spec.shape[0]) is int:
                raise ModelError(
                    f"micro_batch for model {model.name!r} needs a dynamic first axis on every "
                    f"input and output; {spec.name!r} has shape {list(spec.shape)}")
        self.model = model
        self.window = config.window_ms / 1000
        self.max_batch = config.max_batch
        self._input_names = [s.name for s in model.signature.inputs]  # type: ignore[union-attr]
        self._lock = threading.Lock()
        self._queue: deque[_Request] = deque()
        self.max_concurrent = config.max_concurrent
        self._running = 0  # merged runs in flight (slots taken)
        self._spare_ro: list[ort.RunOptions] = []  # RunOptions not terminated, for reuse
        self._closed = False
        self.runs = 0  # merged ORT runs
        self.requests = 0  # requests served by them
        self.expired_windows = 0  # runs started past the slot limit after a full window
        self.requeued = 0  # members re-run after their leader's deadline ended a merged run

    def run(self, model_name: str, feeds: dict[str, np.ndarray], scope: CallScope,
            ro: ort.RunOptions) -> dict[str, np.ndarray]:
        """Run checked ``feeds``, merged with whatever queued; return this caller's rows.

        ``ro`` is the caller's own ``RunOptions`` (terminated with its call): used when
        a slot is free and nobody is queued - then this is a plain run, no request
        object, no stacking, and micro-batching costs two lock round trips."""
        with self._lock:
            alone = self._running < self.max_concurrent and not self._queue
            if alone:
                self._running += 1
                self.runs += 1
                self.requests += 1
        if alone:
            try:
                return self.model.run_checked(model_name, feeds, ro, scope)
            finally:
                self._pass_slot()
        return self._run_queued(model_name, feeds, scope)

    def _run_queued(self, model_name: str, feeds: dict[str, np.ndarray],
                    scope: CallScope) -> dict[str, np.ndarray]:
        names = self._input_names
        req = _Request(feeds, feeds[names[0]].shape[0],
                       tuple(feeds[n].shape[1:] for n in names), threading.get_ident())
        start = time.perf_counter()
        scope.attach_run(req)
        try:
            with self._lock:
                if self._closed:
                    raise ModelError(f"model {model_name!r} was unloaded")
                self._queue.append(req)
                batch = None
                if self._running < self.max_concurrent:  # freed since run() looked
                    self._running += 1
                    batch = self._take()
            while True:
                if batch is not None:
                    try:
                        self._lead(batch, req)
                    finally:
                        self._pass_slot()
                    batch = None
                if req.result is not None:
                    return req.result
                if req.error is not None:
                    err = req.error  # shared by the batch: raise a copy of our own
                    raise type(err)(*err.args)
                if req.gone or time.monotonic() >= scope.deadline:
                    req.terminate = True
                    self._pass_slot(leaving=req)
                    scope.check()  # the timeout or cancellation
                    raise Interrupt("timeout", "model run did not finish before the deadline")
                batch = self._wait(req, scope)
        finally:
            scope.model_time += time.perf_counter() - start
            scope.detach_run(req)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            pending = list(self._queue)
            self._queue.clear()
        for req in pending:
            req.error = ModelError("model was unloaded while a run was queued")
            req.event.set()

    # -- queueing (callers hold ``_lock``) ----------------------------------------------

    def _take(self) -> list[_Request]:
        """The oldest live request and the compatible ones behind it, up to max_batch."""
        key = next((r.key for r in self._queue if not r.gone), None)
        taken: list[_Request] = []
        kept: deque[_Request] = deque()
        for r in self._queue:
            if r.gone:
                continue
            if r.key == key and len(taken) < self.max_batch:
                taken.append(r)
                if r.retry:  # handed a slot it will not use now: the slot is returned
                    r.retry = False
                    self._running -= 1
            else:
                kept.append(r)
        self._queue = kept
        return taken

    def _wait(self, req: _Request, scope: CallScope) -> list[_Request] | None:
        """Lead if a run slot was handed over or the window is over (then even past the
        slot limit); otherwise wait for the result, the deadline or one of those."""
        with self._lock:
            taken = req not in self._queue  # in a run: its leader will wake us
            if not taken:
                if req.retry:  # a finished run handed its slot to us
                    req.retry = False
                    return self._take()
                if time.monotonic() >= req.arrived + self.window:
                    self.expired_windows += 1
                    self._running += 1
                    return self._take()
            req.event.clear()
        # Whoever wakes us sets the result (or ``gone``) first: look after clearing.
        if req.result is not None or req.error is not None or req.gone:
            return None
        until = scope.deadline if taken else min(scope.deadline, req.arrived + self.window)
        req.event.wait(max(0.0, until - time.monotonic()))
        return None

    def _pass_slot(self, leaving: _Request | None = None) -> None:
        """A run ended (or a request holding a handed-over slot left): give the slot to
        the oldest queued request, or free it."""
        with self._lock:
            if leaving is not None:
                if not leaving.retry:
                    return
                leaving.retry = False
            for r in self._queue:
                if not r.gone and r is not leaving:
                    r.retry = True
                    r.event.set()
                    return
            self._running -= 1

    # -- one merged run ----------------------------------------------------------------

    def _lead(self, requests: list[_Request], leader: _Request) -> None:
        if not requests:
            return
        try:
            ro = self._spare_ro.pop()
        except IndexError:
            ro = ort.RunOptions()
            ro.log_severity_level = 4
        batch = _Batch(requests, leader, ro)
        for r in requests:
            r.batch = batch
        try:
            if any(r.gone for r in requests):
                for r in requests:
                    if r.gone:
                        batch.member_left(r)
            self._execute(requests, leader, ro)
        finally:
            for r in requests:  # request <-> batch is a cycle: break it, free it now
                r.batch = None

    def _execute(self, requests: list[_Request], leader: _Request, ro: ort.RunOptions) -> None:
        model = self.model
        names = self._input_names
        feeds = requests[0].feeds if len(requests) == 1 else _stack(requests, names)
        try:
            outputs = model._run(model._output_names, feeds, ro)  # type: ignore[misc]
        except Exception as exc:  # any ORT failure
            if ro.terminate:
                self._requeue([r for r in requests if not r.gone and r is not leader])
                leader.gone = True
                return
            error = model.run_error(model.name, exc, None, None)
            self._settle(requests, error=error)
            return
        if not ro.terminate:
            self._spare_ro.append(ro)  # list.append/pop are atomic: no lock needed
        with self._lock:
            self.runs += 1
            self.requests += len(requests)
        total = sum(r.rows for r in requests)
        for out_name, out in zip(model._output_names, outputs):
            if out.ndim == 0 or out.shape[0] != total:
                self._settle(requests, error=ModelError(
                    f"micro-batching model {model.name!r}: output {out_name!r} does not follow "
                    "the batch axis; disable micro_batch for it"))
                return
        if len(requests) == 1:
            requests[0].result = dict(zip(model._output_names, outputs))
            return
        offset = 0
        for r in requests:
            end = offset + r.rows
            # Copies, not views: callers in different tasks must not share a buffer.
            r.result = {n: out[offset:end].copy() for n, out in zip(model._output_names, outputs)}
            offset = end
            if r is not leader:
                r.event.set()

    def _settle(self, requests: list[_Request], *, error: BaseException) -> None:
        for r in requests:
            r.error = error
            r.event.set()

    def _requeue(self, requests: list[_Request]) -> None:
        """Members of a run terminated on its leader's account: they lead again."""
        self.requeued += len(requests)
        now = time.monotonic()
        with self._lock:
            for r in reversed(requests):
                r.batch = None
                r.arrived = now  # a fresh window; the leader's slot goes to the oldest
                self._queue.appendleft(r)
        for r in requests:
            r.event.set()


def _stack(requests: list[_Request], names: list[str]) -> dict[str, np.ndarray]:
    """Requests' feeds stacked along axis 0 (into one preallocated array per input:
    about half the cost of ``np.concatenate`` for small feeds)."""
    total = sum(r.rows for r in requests)
    out = {}
    for name in names:
        first = requests[0].feeds[name]
        stacked = np.empty((total, *first.shape[1:]), dtype=first.dtype)
        offset = 0
        for r in requests:
            stacked[offset:offset + r.rows] = r.feeds[name]
            offset += r.rows
        out[name] = stacked
    return out
