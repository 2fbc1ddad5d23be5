"""Crash rollback: a new release is on probation until its first calls go well.

A release installed by a sync starts on **probation**.  The ``ReleaseGuard``
reads the container's per-task counters (``container.metrics()``) and, from
the moment of install, counts the release's calls and failures - a failure
being a call that raised, timed out, broke a resource limit, or was refused
because the task's circuit breaker opened (calls cancelled by the caller do
not count).  Verdicts, checked on every ``check()``:

* **bad**, before K calls (``GuardPolicy.calls``), as soon as failures exceed
  ``max_error_rate x K`` - the first K calls can no longer pass, so a
  crash-looping release is caught within its first few calls;
* **bad** if, once at least K calls were seen, the failure rate over the
  calls seen is above ``max_error_rate`` (checks are periodic, so this window
  may be longer than K);
* otherwise, after K calls, **good**: probation ends and the release becomes
  the task's known-good fallback for the next update.

A bad release is recorded in the state database (never installed again on
this device) and the ``Installer`` reinstalls the fallback bundle with
``allow_rollback=True`` - this device's own, previously verified bundle, so
no attacker-supplied data is involved.  The rollback is reported in
``status()`` and in the next sync report.

Counts so far are saved in the database on every check, so probation
continues across restarts.  The guard never acts by itself: the app calls
``check()`` (cheap) when it likes, and the ``Poller`` calls it every few
seconds.  A hard crash that kills the process is covered by the optional
boot counter (``GuardPolicy.max_boots``, applied at ``restore``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .installer import ContainerLike, Outcome
from .state import DeviceState


@dataclass(frozen=True)
class GuardPolicy:
    """Probation rules.  ``calls`` is K, the length of probation in calls."""

    calls: int = 10
    max_error_rate: float = 0.3
    max_boots: int | None = None  # restarts while on probation before it counts as a crash
    ignore: frozenset[str] = field(default_factory=lambda: frozenset({"TaskCancelled"}))

    def __post_init__(self) -> None:
        if self.calls < 1:
            raise ValueError("probation needs at least one call")
        if not 0.0 <= self.max_error_rate < 1.0:
            raise ValueError("max_error_rate must be in [0, 1)")


@dataclass
class _Watch:
    release: int
    base_calls: int
    base_failures: int
    saved_calls: int  # counted in earlier processes (from the database)
    saved_failures: int


def _counters(task_metrics: dict[str, Any], ignore: frozenset[str]) -> tuple[int, int]:
    """(calls, failures) of one task from ``container.metrics()["tasks"][task]``."""
    failures_by_type: dict[str, int] = task_metrics.get("failures", {}) or {}
    ignored = sum(n for kind, n in failures_by_type.items() if kind in ignore)
    refused = (task_metrics.get("rejected", {}) or {}).get("CircuitOpen", 0)
    calls = task_metrics.get("calls", 0) - ignored + refused
    failures = sum(n for kind, n in failures_by_type.items() if kind not in ignore) + refused
    return calls, failures


class ReleaseGuard:
    """Watches releases on probation and asks for a rollback when one goes bad."""

    def __init__(self, container: ContainerLike, state: DeviceState, policy: GuardPolicy,
                 roll_back: Callable[[str, int, str], Outcome]):
        self._container = container
        self._state = state
        self.policy = policy
        self._roll_back = roll_back
        self._watched: dict[str, _Watch] = {}
        self._lock = threading.Lock()
        self._last: list[dict[str, Any]] = []

    def watch(self, task: str, release: int, *, calls: int = 0, failures: int = 0) -> None:
        """Start (or resume, with the saved counts) probation of ``release`` from now."""
        base_calls, base_failures = self._now(task)
        with self._lock:
            self._watched[task] = _Watch(release, base_calls, base_failures, calls, failures)

    def watching(self) -> dict[str, int]:
        with self._lock:
            return {task: w.release for task, w in self._watched.items()}

    def _now(self, task: str) -> tuple[int, int]:
        tasks = self._container.metrics().get("tasks", {})
        return _counters(tasks.get(task, {}), self.policy.ignore)

    def check(self) -> list[Outcome]:
        """Evaluate every release on probation; roll back the bad ones.  Returns the
        rollbacks made (also recorded as events for the next sync report)."""
        with self._lock:
            watched = dict(self._watched)
        if not watched:
            return []
        running = {getattr(t, "name", None): getattr(t, "release", None)
                   for t in self._container.tasks()}
        tasks = self._container.metrics().get("tasks", {})
        rolled: list[Outcome] = []
        for task, w in watched.items():
            if running.get(task) != w.release:  # replaced or removed meanwhile
                self._drop(task, w)
                continue
            now_calls, now_failures = _counters(tasks.get(task, {}), self.policy.ignore)
            calls = w.saved_calls + max(0, now_calls - w.base_calls)
            failures = w.saved_failures + max(0, now_failures - w.base_failures)
            verdict = self._verdict(calls, failures)
            if verdict is None:
                self._state.save_probation(task, w.release, calls, failures)
            elif verdict == "good":
                self._state.confirm(task, w.release)
                self._drop(task, w)
            else:
                self._drop(task, w)
                rolled.append(self._roll_back(task, w.release, verdict))
        if rolled:
            with self._lock:
                self._last = [o.to_dict() for o in rolled] + self._last[:20]
        return rolled

    def _verdict(self, calls: int, failures: int) -> str | None:
        """``None`` (keep watching), ``"good"``, or the reason the release is bad."""
        k, rate = self.policy.calls, self.policy.max_error_rate
        if calls < k:
            # already more failures than the first K calls may have: bad whatever follows
            return f"{failures} of its first {calls} calls failed" if failures > rate * k else None
        if failures / calls > rate:
            return f"error rate {failures / calls:.0%} over {calls} calls"
        return "good"

    def _drop(self, task: str, w: _Watch) -> None:
        with self._lock:
            if self._watched.get(task) is w:
                del self._watched[task]

    def status(self) -> dict[str, Any]:
        """Releases on probation (with counts so far) and the latest rollbacks."""
        rows = self._state.installed()
        with self._lock:
            probation = {task: {"release": w.release,
                                "calls": rows[task].probe_calls if task in rows else 0,
                                "failures": rows[task].probe_failures if task in rows else 0}
                         for task, w in self._watched.items()}
            return {"policy": {"calls": self.policy.calls,
                               "max_error_rate": self.policy.max_error_rate},
                    "probation": probation, "recent_rollbacks": list(self._last)}
