"""The deadline watch: one thread per process that tells running calls when to look
at the clock.

A script's injected checkpoints read one flag in the call's globals
(``_vm_stop_``) instead of calling the clock: a global load is a tenth of the
cost of ``time.monotonic()`` and a checkpoint runs on every loop iteration and
function entry.  Something else must then raise the flag when time matters;
that is this watch.  It looks at each running call (``CallScope.look``), which
raises the flag and says when to look again:

* exactly at the deadline minus a lead of two GIL switch intervals: the flag
  goes up *before* the deadline, and from then on every checkpoint of the call
  takes the slow path and reads the clock itself, so the deadline is met to
  within one checkpoint however late this thread gets the GIL;
* for CPU / memory audits (every ``audit_interval``): exactly, once a call has
  been audited; a call's *first* audit waits for the next tick instead, so a
  short call never costs a wake-up (unless the task asked for audits more often
  than the default, ``EXACT_AUDITS_BELOW``).

Wake-ups are what this costs (about 0.1 ms of CPU each on a small VM), so there
are few: registering a call is a set insertion and wakes the thread only if the
call's deadline lead comes before the thread's next look (a short timeout, or
the first call after a quiet spell).  While calls are running or arriving the
thread ticks every ``TICK``; otherwise it sleeps until poked.  It never runs
script code and takes no lock a call holds: raising the flag is one dict store.
What the slow path then does - raise, audit, park - is the scope's business
(``CallScope.checkpoint``).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from typing import Any, Protocol

log = logging.getLogger("vmcontainer.watch")
_INF = float("inf")
_NEG_INF = float("-inf")
TICK = 0.05  # between looks while calls run or arrive: first audits are this late at most
# A task asking for audits more often than the default 10 ms (a tight budget) gets
# them timed exactly from the start, at the price of a wake-up per call.
EXACT_AUDITS_BELOW = 0.01
LEAD_MARGIN = 0.008  # the watch has been seen to get the GIL 4 ms late on a loaded 2-core VM
RETRY = 0.002  # after a look failed: well inside the lead margin


class Watched(Protocol):
    next_look: float  # when the watch must first look at the call

    def look(self, now: float) -> float:
        """Raise the call's flag if it is time; return when to look again."""


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
        if scope.next_look < self.wake_at:
            self._poke()

    def discard(self, scope: Watched) -> None:
        self.running.discard(scope)

    def _poke(self) -> None:
        # A look is now due: calls added before it are in it, so none need poke again
        # (one scanning already, it set wake_at to inf first, pokes anyway).
        self.wake_at = _NEG_INF
        with self._cond:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="vm-deadline-watch",
                                                daemon=True)
                self._thread.start()
            self._cond.notify()

    def _run(self) -> None:
        cond = self._cond
        seen = -1
        with cond:
            while True:
                # While scanning, wake_at is inf: a call added meanwhile pokes, and the
                # poke waits for this lock, so it lands once the scan has settled.
                self.wake_at = _INF
                self.lead = _lead()  # the host may change the switch interval at any time
                now = time.monotonic()
                soonest = _INF
                running = list(self.running)
                for scope in running:
                    try:
                        wake = scope.look(now)
                    except Exception:  # MemoryError under a memory bomb: look again soon
                        log.exception("deadline watch: look failed")
                        wake = now + RETRY
                    if wake < soonest:
                        soonest = wake
                if running or self.added != seen:  # calls running or arriving: keep ticking
                    seen = self.added
                    soonest = min(soonest, now + TICK)
                self.wake_at = soonest
                cond.wait(None if soonest == _INF else soonest - now)


WATCH = DeadlineWatch()
