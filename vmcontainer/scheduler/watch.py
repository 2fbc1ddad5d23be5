"""The deadline watch: one thread per process that tells running calls when to look
at the clock.

A script's injected checkpoints read one flag in the call's globals
(``_vm_stop_``) instead of calling the clock: a global load is a tenth of the
cost of ``time.monotonic()`` and a checkpoint runs on every loop iteration and
function entry.  Something else must then raise the flag when time matters;
that is this watch.  For each running call it keeps one wake time, the sooner
of

* the deadline minus a lead of two GIL switch intervals: the flag is raised
  *before* the deadline, and from then on every checkpoint of the call takes
  the slow path and reads the clock itself, so the deadline is met to within
  one checkpoint however late this thread gets the GIL;
* the next CPU / memory audit (every ``audit_interval``), if the call has
  budgets.

Registering a call is a set insertion.  While calls come and go the thread
ticks (``TICK``), so a new call's first wake time is never sooner than the
tick it sleeps towards; it is woken early only by a call with a very short
timeout, or by the first call after an idle second.  It never runs script code and takes no lock a
call holds: raising the flag is one dict store.  What the slow path then does -
raise, audit, park - is the scope's business (``CallScope.checkpoint``).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any, Protocol

_INF = float("inf")
TICK = 0.01  # while calls come and go: at most this long between looks (= default audit_interval)
LINGER = 1.0  # ...for this long after the last running call; then sleep until poked
LEAD_MARGIN = 0.002


class Watched(Protocol):
    wake_at: float

    def wake(self, now: float) -> float:
        """Raise the call's flag; return its next wake time (``inf``: none)."""


def _lead() -> float:
    """How long before a deadline the flag goes up: two switch intervals (the
    longest a running script keeps the GIL from this thread) and a margin for
    the timer's own lateness."""
    return 2 * sys.getswitchinterval() + LEAD_MARGIN


class DeadlineWatch:
    def __init__(self) -> None:
        self._reset()
        if hasattr(os, "register_at_fork"):
            # A forked child (a process-mode worker) has no watch thread and may have
            # inherited the condition's lock held: start again from nothing.
            os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self.running: set[Any] = set()
        self.added = 0
        self.lead = _lead()  # read by every call: refreshed at each look, not per call
        self.wake_at = _INF  # when the thread next looks; inf while idle or scanning
        self._cond = threading.Condition(threading.Lock())
        self._thread: threading.Thread | None = None

    def add(self, scope: Watched) -> None:
        self.running.add(scope)
        self.added += 1  # racy under threads, and only ever compared for change
        if scope.wake_at < self.wake_at:
            self._poke()

    def discard(self, scope: Watched) -> None:
        self.running.discard(scope)

    def _poke(self) -> None:
        with self._cond:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="vm-deadline-watch",
                                                daemon=True)
                self._thread.start()
            self._cond.notify()

    def _run(self) -> None:
        cond = self._cond
        busy_until = 0.0
        seen = -1
        with cond:
            while True:
                # While scanning, wake_at is inf: a call added meanwhile pokes, and the
                # poke waits for this lock, so it lands once the scan has settled.
                self.wake_at = _INF
                self.lead = _lead()  # the host may change the switch interval at any time
                now = time.monotonic()
                soonest = _INF
                for scope in list(self.running):
                    wake = scope.wake_at
                    if wake <= now:
                        wake = scope.wake_at = scope.wake(now)
                    if wake < soonest:
                        soonest = wake
                if self.added != seen:  # calls came since the last look
                    seen = self.added
                    busy_until = now + LINGER
                if now < busy_until:
                    # Calls ran lately: keep a tick no later than a new call's first
                    # audit, so a stream of short calls never pokes this thread.
                    soonest = min(soonest, now + TICK)
                self.wake_at = soonest
                cond.wait(None if soonest == _INF else soonest - now)


WATCH = DeadlineWatch()
