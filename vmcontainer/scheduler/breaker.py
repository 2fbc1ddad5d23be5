"""Circuit breakers: a task that keeps failing stops costing anything.

Closed -> (N consecutive failures or timeouts) -> open for ``cooldown``
seconds, every call failing fast with ``CircuitOpen`` -> half-open: exactly one
probe call is let through; its success closes the breaker, its failure opens
it again.  Installing a new release or ``reset()`` closes it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from ..errors import CircuitOpen

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
# Errors that say nothing about the task's health.
NEUTRAL = frozenset({"TaskCancelled", "QueueFull", "CircuitOpen", "InvalidInputs", "TaskNotFound"})


class CircuitBreaker:
    def __init__(self, threshold: int = 5, cooldown: float = 30.0,
                 clock: Callable[[], float] = time.monotonic):
        self.threshold = threshold
        self.cooldown = cooldown
        self._clock = clock
        self._lock = threading.Lock()
        self.state = CLOSED
        self.failures = 0
        self.opened_at = 0.0
        self.trips = 0
        self._probe_out = False

    def admit(self, name: str) -> bool:
        """Raise ``CircuitOpen`` or admit the call; True if it is the half-open probe."""
        if self.state == CLOSED:
            return False
        with self._lock:
            if self.state == OPEN and self._clock() - self.opened_at >= self.cooldown:
                self.state = HALF_OPEN
                self._probe_out = False
            if self.state == HALF_OPEN and not self._probe_out:
                self._probe_out = True
                return True
            if self.state == CLOSED:
                return False
            left = max(0.0, self.cooldown - (self._clock() - self.opened_at))
            raise CircuitOpen(f"task {name!r} failed {self.failures} times in a row; "
                              f"circuit open ({left:.1f}s of cooldown left)")

    def record(self, error_kind: str | None, probe: bool) -> None:
        if error_kind is None and not probe and self.state == CLOSED and not self.failures:
            return  # the common case: a healthy task stays healthy, no lock
        if error_kind in NEUTRAL:
            if probe:
                with self._lock:
                    self._probe_out = False
            return
        with self._lock:
            if error_kind is None:
                self.failures = 0
                self.state = CLOSED
                self._probe_out = False
                return
            self.failures += 1
            if probe or (self.state == CLOSED and self.failures >= self.threshold):
                self.state = OPEN
                self.opened_at = self._clock()
                self.trips += 1
                self._probe_out = False

    def reset(self) -> None:
        with self._lock:
            self.state = CLOSED
            self.failures = 0
            self._probe_out = False

    def snapshot(self) -> dict[str, object]:
        return {"state": self.state, "consecutive_failures": self.failures, "trips": self.trips}
