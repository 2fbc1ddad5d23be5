"""Call scopes: one deadline, one cancel switch and one yield gate per call.

A ``CallScope`` is the only object that decides whether a call may go on -
like a trio cancel scope, but checked cooperatively.  The task's injected
checkpoints read one flag, ``_vm_stop_``, in the call's own globals; the slow
path is ``checkpoint()``.  Four things raise the flag so the very next
checkpoint takes the slow path:

* ``cancel()``          -> the checkpoint raises ``TaskCancelled``;
* the deadline nearing  -> the deadline watch (``watch.py``) raises it a little
  early; from then on every checkpoint reads the clock, and the first one past
  the deadline raises ``TaskTimeout``;
* an audit falling due  -> the slow path checks the CPU and memory budgets;
* ``request_yield()``   -> the call parks on its lane's gate, releasing the
  GIL, until higher-priority work is done (or its deadline passes).

Bundles built before the flag existed check ``_vm_clock_() > _vm_deadline_``
instead; the scope keeps ``_vm_deadline_`` up to date for them.

Host code (model runs, result validation) calls ``check()``.  ONNX Runtime
runs registered with the scope are terminated on cancel and, through the
inference watchdog, at the deadline.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from typing import Any

from ..sandbox import policy
from .watch import EXACT_AUDITS_BELOW, TICK, WATCH

_ids = itertools.count(1)
_local = threading.local()


def current_scope() -> CallScope | None:
    """The scope of the call running on this thread (for facades that must bound a
    single C call by the call's deadline, e.g. regex matching)."""
    return getattr(_local, "scope", None)


def set_current_scope(scope: CallScope | None) -> None:
    _local.scope = scope


def refuse(kind: str, message: str) -> BaseException:
    """The error a facade raises to refuse something: inside a call, an
    uncatchable interrupt (so the script can neither swallow it nor take its class
    to forge errors); outside a call (host code, tests), the public error."""
    if getattr(_local, "scope", None) is not None:
        return fault(kind, message)
    from ..errors import ResourceLimitExceeded, SandboxViolation

    return ResourceLimitExceeded(message) if kind == "limit" else SandboxViolation(message)


def fault(kind: str, message: str) -> Interrupt:
    """An interrupt for a policy violation or a resource limit, remembered on the
    running call so that swallowing it does not make the call succeed."""
    intr = Interrupt(kind, message)
    scope = getattr(_local, "scope", None)
    if scope is not None and scope.fault is None:
        scope.fault = intr
    return intr
_NEG_INF = float("-inf")
_INF = float("inf")
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def resident_bytes() -> int | None:
    """This process's resident memory now (Linux and Android ``/proc``); None elsewhere."""
    try:
        with open("/proc/self/statm", "rb") as fh:
            return int(fh.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None
_RUNS_LOCK = threading.Lock()
_PARK_POLL = 0.005


class Interrupt(BaseException):
    """Raised inside a task to stop it.  A ``BaseException`` so ``except Exception``
    in a script cannot swallow it; translated to a public error at the boundary."""

    def __init__(self, kind: str, message: str = ""):
        super().__init__(kind, message)
        self.kind = kind  # "timeout" | "cancelled" | "violation" | "limit"
        self.message = message


class Gate(threading.Event):
    """A lane's run permission: open (set) = its calls may run; ``resume_at`` = a
    grace time after reopening during which parked calls stay parked.  ``open``
    mirrors the flag as a plain attribute: every call reads it, and ``is_set()``
    is a Python-level method call."""

    def __init__(self) -> None:
        super().__init__()
        self.resume_at = 0.0
        self.open = False

    def set(self) -> None:
        self.open = True
        super().set()

    def clear(self) -> None:
        self.open = False
        super().clear()


class CallScope:
    __slots__ = (
        "_audit_at",
        "_budgeted",
        "_cpu_start",
        "_exact_audits",
        "_globals",
        "_rss_start",
        "_runs",
        "_started",
        "_watched",
        "audit_interval",
        "call_id",
        "cancelled",
        "closed",
        "cpu_budget",
        "deadline",
        "fault",
        "gate",
        "max_model_runs",
        "memory_budget",
        "model_runs",
        "model_time",
        "next_look",
        "timeout",
    )

    def __init__(self, timeout: float, *, start: float | None = None, call_id: int | None = None,
                 cpu_budget: float | None = None, audit_interval: float = 0.01,
                 max_model_runs: int | None = None, memory_budget: int | None = None):
        self.call_id = next(_ids) if call_id is None else call_id
        self.timeout = timeout
        self.deadline = (time.monotonic() if start is None else start) + timeout
        self.cancelled = False
        self.gate: Gate | None = None  # set by the lane: open = may run
        self.model_time = 0.0
        self.model_runs = 0
        self.cpu_budget = cpu_budget
        self.memory_budget = memory_budget
        self.audit_interval = audit_interval
        self._budgeted = cpu_budget is not None or memory_budget is not None  # audits to make
        self.max_model_runs = max_model_runs
        self.fault: Interrupt | None = None  # a violation or limit hit, even if swallowed
        self.closed = False  # the call is over: no more task code may run under it
        self._cpu_start = 0.0
        self._rss_start = -1
        self._globals: dict[str, Any] | None = None
        self._runs: list[Any] = []
        self._watched = False
        self._audit_at = _INF  # the next CPU / memory audit
        self._exact_audits = False  # the watch times this call's audits exactly (see look)
        self.next_look = _INF  # when the deadline watch must first look at this call

    # -- wiring to the running task --------------------------------------------

    def bind(self, task_globals: dict[str, Any]) -> None:
        """Attach the call's fresh globals and start watching the deadline, so the
        watch, cancel() and yields can reach the checkpoints."""
        self._globals = task_globals
        self._cpu_start = -1.0  # read lazily at the first audit: no syscall for short calls
        gate = self.gate
        now = time.monotonic()
        self._started = now
        self._audit_at = audit_at = now + self.audit_interval if self._budgeted else _INF
        self._exact_audits = self.audit_interval < EXACT_AUDITS_BELOW
        self.next_look = self._next_look(self.deadline - WATCH.lead, audit_at)
        if self.cancelled or (gate is not None and (not gate.open or now < gate.resume_at)):
            task_globals[policy.STOP] = True  # the first checkpoint parks or raises
            task_globals[policy.DEADLINE] = _NEG_INF
        else:
            self._arm(task_globals, now)
        WATCH.add(self)

    def _arm(self, g: dict[str, Any], now: float) -> None:
        """Lower the flag, unless the deadline is within the watch's lead: from there
        on every checkpoint reads the clock (``checkpoint`` raises when it passes)."""
        g[policy.STOP] = self.deadline - now <= WATCH.lead
        g[policy.DEADLINE] = min(self.deadline, self._audit_at)

    def _audit_due(self, now: float) -> bool:
        """Half an interval of slack on both sides: the watch's look and the slow path
        read the clock at slightly different times."""
        return now >= self._audit_at - self.audit_interval / 2

    def look(self, now: float) -> float:
        """The deadline watch's look at this running call: raise the flag when the
        deadline's lead has come or an audit is due; return when to look again.

        A first audit waits for the watch's next tick, so a short call never costs a
        wake-up; once audited, a long call is looked at on its audit times (from the
        start, if the task asks for audits more often than the default).  Within
        the lead the checkpoints read the clock themselves, but the watch never lets
        go of a running call: a slow path that read the clock before the lead may
        lower the flag just after the watch raised it, so the watch raises it again
        a lead past the deadline, and every tick after."""
        g = self._globals
        if g is None:
            return _INF
        deadline = self.deadline
        lead_at = deadline - WATCH.lead
        audit_at = self._audit_at
        if self._audit_due(now):
            g[policy.STOP] = True
            self._exact_audits = True
            audit_at = now + self.audit_interval
        if now >= lead_at:
            g[policy.STOP] = True
            # Again a lead past the deadline (not at it: that is when the call's own
            # thread and its caller want the GIL), then every tick.
            again = deadline + WATCH.lead
            return again if now < again else now + TICK
        return self._next_look(lead_at, audit_at)

    def _next_look(self, lead_at: float, audit_at: float) -> float:
        return min(lead_at, audit_at) if self._exact_audits else lead_at

    def checkpoint(self) -> None:
        """Slow path of the injected checkpoints: raise, or park and resume."""
        if self.closed:
            raise Interrupt("cancelled", "the call is over")
        if self.cancelled:
            raise Interrupt("cancelled", "call cancelled")
        now = time.monotonic()
        if now > self.deadline:
            raise Interrupt("timeout", f"deadline of {self.timeout:.3f}s passed")
        gate = self.gate
        while gate is not None and (not gate.open or time.monotonic() < gate.resume_at):
            # Parked: the GIL is free for higher lanes.  After the gate reopens, stay
            # parked a little longer (``resume_at``) so back-to-back high-priority
            # calls do not each pay a GIL hand-back.  Poll so cancel and the deadline
            # are noticed within a few milliseconds.
            if gate.open:
                time.sleep(min(_PARK_POLL, max(0.0, gate.resume_at - time.monotonic())))
            else:
                gate.wait(min(_PARK_POLL, max(0.0, self.deadline - time.monotonic())))
            if self.cancelled:
                raise Interrupt("cancelled", "call cancelled")
            if time.monotonic() > self.deadline:
                raise Interrupt("timeout", f"deadline of {self.timeout:.3f}s passed")
            now = time.monotonic()
        if self._audit_due(now):  # however often the slow path runs
            self._audit_at = now + self.audit_interval
            if self.cpu_budget is not None and self._cpu_exhausted():
                raise Interrupt("limit", f"CPU budget of {self.cpu_budget:.3f}s exhausted")
            if self.memory_budget is not None and self._memory_exceeded():
                raise Interrupt("limit", f"memory grew by more than {self.memory_budget >> 20} MiB during the call")
        g = self._globals
        if g is not None and not self.cancelled:
            self._arm(g, now)

    def check(self) -> None:
        """Host-side checkpoint (no parking: host code is short).  Also re-raises a
        policy violation or limit the script swallowed (``return`` in ``finally``)."""
        if self.fault is not None:
            raise self.fault
        if self.cancelled:
            raise Interrupt("cancelled", "call cancelled")
        if time.monotonic() > self.deadline:
            raise Interrupt("timeout", f"deadline of {self.timeout:.3f}s passed")

    def remaining(self) -> float:
        return 0.0 if self.cancelled else max(0.0, self.deadline - time.monotonic())

    # -- cancellation and yielding ---------------------------------------------

    def request_yield(self) -> None:
        """Make the next checkpoint take the slow path (and park if the gate is shut)."""
        g = self._globals
        if g is not None:
            g[policy.STOP] = True
            g[policy.DEADLINE] = _NEG_INF

    def cancel(self) -> None:
        self.cancelled = True
        self.request_yield()
        self.terminate_runs()

    def _cpu_exhausted(self) -> bool:
        """The first audit comes an interval or more into the call; count all the
        call's wall time so far as spent (an upper bound of its CPU time) instead of
        reading the thread's CPU clock on every call."""
        now = time.thread_time()
        if self._cpu_start < 0:
            self._cpu_start = now - (time.monotonic() - self._started)
        return now - self._cpu_start > self.cpu_budget  # type: ignore[operator]

    def _memory_exceeded(self) -> bool:
        """The first audit (an interval or more into the call: see ``look``) takes the
        baseline: a short call never pays for reading the resident size."""
        rss = resident_bytes()
        if rss is None:
            return False
        if self._rss_start < 0:
            self._rss_start = rss
            return False
        return rss - self._rss_start > self.memory_budget  # type: ignore[operator]

    def close(self) -> None:
        """The call is over: any task code still resumed later (by the garbage
        collector finalising a generator) stops at its first checkpoint."""
        self.closed = True
        WATCH.discard(self)
        self.request_yield()
        self._globals = None

    def should_watch(self) -> bool:
        """True once per scope: the first model run registers it with the watchdog."""
        if self._watched:
            return False
        self._watched = True
        return True

    def attach_run(self, run_options: Any) -> None:
        with _RUNS_LOCK:  # one lock for all scopes' run lists: attach/detach are rare
            self._runs.append(run_options)
            if self.cancelled:
                run_options.terminate = True

    def detach_run(self, run_options: Any) -> None:
        with _RUNS_LOCK:
            self._runs.remove(run_options)

    def terminate_runs(self) -> None:
        with _RUNS_LOCK:
            for ro in self._runs:
                ro.terminate = True
