"""The device-side container: verify and install bundles, run tasks by name.

Workflow::

    container = Container(trust=["publisher.pub"], device_key="device.key")
    container.install(bundle_bytes)          # verify -> decrypt -> load -> warm -> publish
    result = container.invoke("ranker", inputs, timeout=0.5)
    future = container.submit("ranker", inputs)   # concurrent.futures.Future (CallFuture)
    result = await container.ainvoke("ranker", inputs)

Install runs the verifier's checks in order (``bundle.verifier``), checks the
task graph, creates the release's model sessions, loads the program, warms it
(module body executed once, optional dry run) and only then publishes it
(``registry``).  Each call copies its inputs at the boundary, passes its
task's circuit breaker, gets one ``CallScope`` - deadline = min(caller
timeout, manifest default, container maximum), counted from submit so queue
time counts - and runs on its lane (``scheduler.pool``) in fresh globals
(``sandbox.runtime``).
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from .bundle.format import DEFAULT_CAPS, MODEL_BUNDLE_PREFIX, SizeCaps, manifest_kind
from .bundle.keys import KeySource, load_device_private, load_publisher_public
from .bundle.verifier import BundleVerifier
from .errors import ModelError, TaskCancelled, TaskError, UpstreamFailed, VmError
from .inference.profile import DeviceProfile
from .inference.sessions import ModelHub
from .inference.store import ModelInfo, ModelStore
from .isolation.pool import ProcessLimits, ProcessPool, ProgramSpec
from .registry import InstalledTask, Registry, TaskInfo
from .sandbox.boundary import BoundaryError, copy_plain
from .sandbox.limits import DEFAULT_LIMITS, ResourceLimits
from .scheduler.breaker import CircuitBreaker
from .scheduler.graph import TaskGraphError, check_graph, dependants
from .scheduler.metrics import Metrics
from .scheduler.pool import CallFuture, CallSlot, LaneSet, Outcome
from .scheduler.scope import CallScope

log = logging.getLogger("vmcontainer")


SPAWN_ALLOWANCE = 5.0  # seconds added to the install-time check in process isolation


class InvalidInputs(VmError, TypeError):
    """Inputs that cannot be handed to a task (not JSON-like data and numeric arrays)."""


def _as_list(value: KeySource | Iterable[KeySource]) -> list[KeySource]:
    if isinstance(value, (bytes, str, Path)):
        return [value]
    return list(value)


class GraphFuture(CallFuture):
    """The future of a task-graph call: cancelling it cancels every link."""

    def __init__(self, scope: CallScope):
        super().__init__(scope)
        self.children: list[CallFuture] = []

    def cancel(self) -> bool:
        for child in list(self.children):
            child.cancel()
        return super().cancel()


class Container:
    """A registry of verified tasks and the lanes that run them.  Thread-safe."""

    def __init__(
        self,
        trust: KeySource | Sequence[KeySource],
        device_key: KeySource,
        *,
        workers: int = 2,
        lanes: dict[str, int] | None = None,
        threshold: int = 1,
        max_timeout: float = 30.0,
        caps: SizeCaps = DEFAULT_CAPS,
        profile: DeviceProfile | None = None,
        max_queue: int = 10_000,
        clock_skew: float = 24 * 3600,
        breaker_threshold: int = 5,
        breaker_cooldown: float = 30.0,
        preempt: bool = True,
        switch_interval: float | None = 0.001,
        limits: ResourceLimits = DEFAULT_LIMITS,
        task_limits: dict[str, ResourceLimits] | None = None,
        isolation: str = "thread",
        process_limits: ProcessLimits | None = None,
    ):
        self._verifier = BundleVerifier(
            [load_publisher_public(k) for k in _as_list(trust)],
            load_device_private(device_key),
            threshold=threshold,
            caps=caps,
            clock_skew=clock_skew,
        )
        self.max_timeout = max_timeout
        self._limits = limits
        self._task_limits = dict(task_limits or {})
        self._hub = ModelHub(profile)
        self._models = ModelStore(self._hub)  # models installed from model bundles
        self._registry = Registry()
        self._install_lock = threading.Lock()
        threads = {"core": 1, "regular": workers, "low": 1, **(lanes or {})}
        if isolation not in ("thread", "process"):
            raise ValueError("isolation must be 'thread' or 'process'")
        self.isolation = isolation
        # Process mode: task code never runs in this process; one worker slot per lane thread.
        self._procs = (ProcessPool(sum(threads.values()), process_limits, profile)
                       if isolation == "process" else None)
        self._lanes = LaneSet(threads, max_queue=max_queue, preempt=preempt)
        self._metrics = Metrics()
        self._breakers: dict[str, CircuitBreaker] = {}
        self._breaker_args = (breaker_threshold, breaker_cooldown)
        # Calls that may still be cancelled by id: a single call's scope (registered
        # before it is queued, removed when it settles) or a graph call's future.
        self._calls: dict[int, CallScope | GraphFuture] = {}
        self._metric_sources: dict[str, Callable[[], Any]] = {}
        self._closed = False
        if switch_interval is not None and sys.getswitchinterval() > switch_interval:
            # Process-wide: bounds how long an app thread waits for the GIL while a
            # task computes (the default 5 ms would dominate a sub-millisecond call).
            sys.setswitchinterval(switch_interval)

    # -- installing ---------------------------------------------------------------

    def install(self, bundle: bytes | str | Path, *,
                allow_rollback: bool = False) -> TaskInfo | ModelInfo:
        """Verify ``bundle`` and make it the task's current release (hot swap).

        Raises a ``BundleError`` subclass naming the failed check, ``TaskGraphError``
        for a missing or cyclic link, or the warm-up's error; in every case nothing
        is installed and the running releases are untouched.
        """
        data = bundle if isinstance(bundle, (bytes, bytearray)) else Path(bundle).read_bytes()
        with self._install_lock:
            verified = self._verifier.verify(
                bytes(data), high_water=self._high_water, allow_rollback=allow_rollback
            )
            if manifest_kind(verified.manifest) == "model":  # a model bundle: no script
                return self._models.install(verified)
            m = verified.manifest
            check_graph(verified.name, m["requires"], m["then"], self._links_of,
                        self._registry.has)
            task = InstalledTask(verified, self._hub, self._limits_for(verified.name),
                                 self._models)
            if self._procs is not None:
                if m.get("model_refs"):
                    task.release_models()
                    raise ModelError("model bundles (model_refs) are not supported in process "
                                     "isolation yet; embed the model in the task bundle")
                task.spec = ProgramSpec.from_verified(verified, limits=self._limits_for(verified.name))
            try:
                warm_ms = self._warm(task)
            except BaseException:
                task.release_models()
                raise
            if warm_ms is not None:
                task.info = task.info.with_warmup(warm_ms)
            old = self._registry.publish(task)
            self._breaker(verified.name).reset()
        if old is not None:
            old.release_models()
        log.debug("installed %s release %d", task.info.name, task.info.release,
                 extra={"task": task.info.name, "release": task.info.release})
        return task.info

    def _high_water(self, name: str) -> int | None:
        """Anti-rollback marks: model bundles (``model:NAME``) and tasks apart."""
        if name.startswith(MODEL_BUNDLE_PREFIX):
            return self._models.high_water(name)
        return self._registry.high_water(name)

    def models(self) -> list[ModelInfo]:
        """Models installed from model bundles (current release of each)."""
        return self._models.infos()

    def _limits_for(self, name: str) -> ResourceLimits:
        return self._task_limits.get(name, self._limits)

    def _scope(self, task: InstalledTask, timeout: float) -> CallScope:
        """Every call's scope is made here: deadline capped by the container's maximum,
        the task's CPU budget and model-run cap attached."""
        limits = task.program.limits
        return CallScope(min(timeout, self.max_timeout), cpu_budget=limits.cpu_seconds,
                         audit_interval=limits.audit_interval, max_model_runs=limits.max_model_runs,
                         memory_budget=limits.max_memory_growth)

    def _links_of(self, name: str) -> list[str]:
        info = self._registry.get(name).info
        return list(info.requires) + list(info.then)

    def _warm(self, task: InstalledTask) -> float | None:
        """Load the module once (catching load-time errors before publishing) and,
        if the manifest asks, make one dry run; return the dry run's milliseconds."""
        if self._procs is not None:
            # The first check may have to start a worker process (~0.5 s): give it room.
            self._procs.load_check(task.spec, self._scope(task, task.info.timeout + SPAWN_ALLOWANCE))
        else:
            task.program.load_check(self._scope(task, task.info.timeout))
        warmup = task.warmup_inputs
        if warmup is None:
            return None
        upstream = {r: None for r in task.info.requires} if task.info.requires else None
        start = time.perf_counter()
        self._execute(task, copy_plain(warmup), self._scope(task, task.info.timeout), upstream)
        return (time.perf_counter() - start) * 1000

    def _execute(self, task: InstalledTask, data: Any, scope: CallScope,
                 upstream: dict[str, Any] | None) -> tuple[Any, str]:
        """One call of ``task``: in this process's sandbox, or in a worker process."""
        if self._procs is not None:
            return self._procs.call(task.spec, data, scope, upstream)
        return task.program.call(data, scope, upstream)

    def uninstall(self, name: str) -> None:
        """Remove a task, or a model bundle by its name ``model:NAME`` (tasks already
        using that model keep it; new references to it fail)."""
        if name.startswith(MODEL_BUNDLE_PREFIX):
            with self._install_lock:
                self._models.remove(name)
            return
        with self._install_lock:
            self._registry.get(name)
            users = dependants(name, {t.info.name: self._links_of(t.info.name)
                                      for t in self._registry.all()})
            if users:
                raise TaskGraphError(f"cannot uninstall {name!r}: {', '.join(users)} link to it")
            task = self._registry.remove(name)
        task.release_models()

    def tasks(self) -> list[TaskInfo]:
        return self._registry.infos()

    # -- running ------------------------------------------------------------------

    def submit(self, name: str, inputs: Any = None, *, timeout: float | None = None,
               lane: str | None = None) -> CallFuture:
        """Queue a call; the future resolves to the result or raises a ``VmError``.

        Raises at once - nothing queued - for ``TaskNotFound``, ``InvalidInputs``,
        ``CircuitOpen`` and ``QueueFull``.
        """
        return self._submit_prepared(*self._prepare(name, inputs, timeout), lane)

    def invoke(self, name: str, inputs: Any = None, *, timeout: float | None = None,
               lane: str | None = None) -> Any:
        """Run a task and return its result, or raise its error."""
        task, data, scope = self._prepare(name, inputs, timeout)
        if task.info.requires or task.info.then:  # graph calls settle through futures
            return self._submit_prepared(task, data, scope, lane).result()
        slot = CallSlot(scope)  # a plain call: block on one lock, no Future
        self._start(task, data, scope, lane, slot)
        return slot.result()

    def _submit_prepared(self, task: InstalledTask, data: Any, scope: CallScope,
                         lane: str | None) -> CallFuture:
        if task.info.requires:
            fut: CallFuture = self._submit_graph(task, data, scope, lane)
            self._calls[scope.call_id] = fut
            fut.add_done_callback(lambda f: self._calls.pop(f.call_id, None))
            return fut
        fut = CallFuture(scope)
        self._start(task, data, scope, lane, fut)
        return fut

    def _prepare(self, name: str, inputs: Any, timeout: float | None) -> tuple[InstalledTask, Any, CallScope]:
        """What every call needs before it is queued: its task, its copied inputs, its scope."""
        if self._closed:
            raise RuntimeError("container is closed")
        task = self._registry.get(name)
        try:
            data = copy_plain(inputs)
        except (BoundaryError, TypeError) as exc:
            raise InvalidInputs(f"inputs for {name!r}: {exc}") from None
        if timeout is not None and not timeout > 0:
            raise ValueError("timeout must be positive")
        return task, data, self._scope(task, task.info.timeout if timeout is None
                                       else min(timeout, task.info.timeout))

    def _start(self, task: InstalledTask, data: Any, scope: CallScope, lane: str | None,
               outcome: Outcome) -> None:
        """Queue a single-task call, reachable by ``cancel(call_id)`` until it ends."""
        self._calls[scope.call_id] = scope
        try:
            self._submit_one(task, data, scope, lane, None, outcome)
        except BaseException:
            self._calls.pop(scope.call_id, None)
            raise

    async def ainvoke(self, name: str, inputs: Any = None, *, timeout: float | None = None,
                      lane: str | None = None) -> Any:
        """``invoke`` for asyncio hosts: awaits the call without blocking the loop."""
        return await asyncio.wrap_future(self.submit(name, inputs, timeout=timeout, lane=lane))

    def cancel(self, call_id: int) -> bool:
        """Cancel a queued or running call by id (``future.call_id``)."""
        call = self._calls.get(call_id)
        if call is None:
            return False
        if isinstance(call, CallScope):
            call.cancel()  # queued: skipped with TaskCancelled; running: stops at its next checkpoint
            return True
        return call.cancel()

    def _breaker(self, name: str) -> CircuitBreaker:
        breaker = self._breakers.get(name)
        if breaker is None:
            breaker = self._breakers.setdefault(name, CircuitBreaker(*self._breaker_args))
        return breaker

    def reset_breaker(self, name: str) -> None:
        self._breaker(name).reset()

    def _submit_one(self, task: InstalledTask, data: Any, scope: CallScope, lane: str | None,
                    upstream: dict[str, Any] | None, outcome: Outcome) -> None:
        name = task.info.name
        lane = lane or task.info.lane
        breaker = self._breaker(name)
        try:
            probe = breaker.admit(name)
        except VmError as exc:
            self._metrics.reject(name, lane, type(exc).__name__)
            raise

        calls, metrics = self._calls, self._metrics

        def record(error: BaseException | None) -> None:
            # Before the outcome settles: the caller is not woken twice.
            calls.pop(scope.call_id, None)
            metrics.record(name, lane, time.monotonic() - (scope.deadline - scope.timeout),
                           scope.model_time, error)

        def run() -> Any:
            # Newest release at start: a hot swap never touches a call in flight.
            current = self._registry.get(name)
            try:
                result, printed = self._execute(current, data, scope, upstream)
            except BaseException as exc:
                log.debug("%s failed: %s: %s", name, type(exc).__name__, exc, extra={
                    "task": name, "release": current.info.release, "call_id": scope.call_id})
                breaker.record(type(exc).__name__, probe)
                record(exc)
                raise
            if printed:
                log.info("%s printed:\n%s", name, printed.rstrip("\n"), extra={
                    "task": name, "release": current.info.release, "call_id": scope.call_id})
            breaker.record(None, probe)
            record(None)
            return result

        def skipped(error: BaseException) -> None:
            # Cancelled or timed out in the queue: counted, never run.
            record(error)
            if probe:  # the probe never ran: free the half-open slot
                breaker.record("TaskCancelled", probe)

        if task.info.then and isinstance(outcome, CallFuture):
            outcome.add_done_callback(lambda f: self._run_followups(task, f))
        if (type(outcome) is CallSlot and self._procs is not None
                and self._procs.has_idle_worker() and not self._lanes.queued(lane)):
            # Process mode, a worker free, nothing queued ahead: the blocking caller's
            # thread would only wait for the worker's reply, so it does that itself -
            # two thread wake-ups fewer than through a lane thread.  (Lane gates and
            # the lane's running count do not apply: the task runs in another process.)
            try:
                outcome.set_result(run())
            except BaseException as exc:  # already public (run translated it)
                outcome.set_exception(exc)
            return
        try:
            self._lanes.submit(lane, outcome, run, skipped)
        except VmError as exc:
            breaker.record("QueueFull", probe)
            self._metrics.reject(name, lane, type(exc).__name__)
            raise

    def _submit_graph(self, task: InstalledTask, data: Any, scope: CallScope,
                      lane: str | None) -> GraphFuture:
        """Run the prerequisites (each on its own lane, in parallel), then the task
        with their results; the whole call shares one deadline."""
        parent = GraphFuture(scope)
        parent.set_running_or_notify_cancel()
        requires = list(task.info.requires)
        results: dict[str, Any] = {}
        lock = threading.Lock()
        pending = [len(requires)]

        def link_done(link: str, fut: CallFuture) -> None:
            if parent.done():
                return
            try:
                value = fut.result()
            except BaseException as exc:
                for other in parent.children:
                    other.cancel()
                _resolve(parent, exc=UpstreamFailed(
                    f"prerequisite {link!r} of {task.info.name!r} failed: {type(exc).__name__}: {exc}",
                    task=link, cause=exc))
                return
            with lock:
                results[link] = value
                pending[0] -= 1
                ready = pending[0] == 0
            if ready:
                start_final()

        def start_final() -> None:
            if scope.cancelled:
                _resolve(parent, exc=UpstreamFailed("call cancelled", task=task.info.name))
                return
            try:
                child = self._link_future(task, data, self._child_scope(task, scope), lane, dict(results))
            except BaseException as exc:
                _resolve(parent, exc=exc)
                return
            parent.children.append(child)
            child.add_done_callback(lambda f: _resolve(parent, source=f))

        for link in requires:
            try:
                prereq = self._registry.get(link)
                child_scope = self._child_scope(prereq, scope)
                child = (self._submit_graph(prereq, data, child_scope, None)
                         if prereq.info.requires else
                         self._link_future(prereq, data, child_scope, None, None))
            except BaseException as exc:
                fut_err: CallFuture = CallFuture(scope)
                fut_err.set_exception(exc)
                link_done(link, fut_err)
                break
            parent.children.append(child)
            child.add_done_callback(lambda f, link=link: link_done(link, f))
        return parent

    def _link_future(self, task: InstalledTask, data: Any, scope: CallScope, lane: str | None,
                     upstream: dict[str, Any] | None) -> CallFuture:
        fut = CallFuture(scope)
        self._submit_one(task, data, scope, lane, upstream, fut)
        return fut

    def _child_scope(self, task: InstalledTask, parent: CallScope) -> CallScope:
        """A link of a graph call: its own scope, the whole call's deadline."""
        return self._scope(task, max(0.0, parent.deadline - time.monotonic()))

    def _run_followups(self, task: InstalledTask, fut: CallFuture) -> None:
        if fut.cancelled() or fut.exception() is not None:
            return
        for name in task.info.then:
            try:
                self.submit(name, fut.result())
            except VmError as exc:
                log.warning("follow-up %s of %s not started: %s", name, task.info.name, exc,
                            extra={"task": name, "call_id": fut.call_id})

    # -- updates ---------------------------------------------------------------------

    def sync(self, repo_url: str, **kwargs: Any) -> Any:
        """One over-the-air sync into this container from a TUF repository (restores
        the state directory first); see ``vmcontainer.updates`` and docs/ota.md.
        Needs the ``ota`` extra (python-tuf)."""
        from .updates import sync

        return sync(self, repo_url, **kwargs)

    def add_metrics_source(self, name: str, source: Callable[[], Any]) -> None:
        """Include ``source()`` under ``name`` in ``metrics()`` (e.g. the updater's
        status: crash rollbacks, bad releases)."""
        self._metric_sources[name] = source

    # -- observability -------------------------------------------------------------

    def metrics(self) -> dict[str, Any]:
        """Per task and per lane: calls, successes, failures by type, timeouts,
        latency p50/p90/p99, time in model vs script, breaker state, queue depth."""
        snap = self._metrics.snapshot()
        for name, breaker in list(self._breakers.items()):
            snap["tasks"].setdefault(name, {})["breaker"] = breaker.snapshot()
        depths, running = self._lanes.depths(), self._lanes.running()
        for lane in depths:
            entry = snap["lanes"].setdefault(lane, {})
            entry["queue_depth"] = depths[lane]
            entry["running"] = running[lane]
        snap["installed"] = {t.name: t.release for t in self.tasks()}
        for name, source in list(self._metric_sources.items()):
            snap[name] = source()
        snap["models_loaded"] = self._hub.loaded()
        return snap

    # -- lifecycle ----------------------------------------------------------------

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._lanes.close()
        if self._procs is not None:
            self._procs.close()
        self._models.close()
        self._hub.close()

    def __enter__(self) -> Container:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _resolve(fut: CallFuture, *, exc: BaseException | None = None,
             source: CallFuture | None = None) -> None:
    """Settle a graph future once, from an error or from its final link."""
    if fut.done():
        return
    try:
        if source is not None:
            if source.cancelled():
                fut.set_exception(TaskCancelled("call cancelled"))
            elif source.exception() is not None:
                fut.set_exception(source.exception())
            else:
                fut.set_result(source.result())
        else:
            fut.set_exception(exc if exc is not None else TaskError("graph call failed"))
    except Exception:  # already settled by a racing link (InvalidStateError)
        pass
