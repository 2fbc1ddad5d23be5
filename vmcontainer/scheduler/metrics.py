"""Per-task and per-lane counters and latency histograms, cheap enough for every call.

Latencies go into log-spaced buckets (10 % wide), so recording is one
bisection and one list increment and percentiles are read off the
cumulative counts - bounded memory however many calls are made.
"""

from __future__ import annotations

import math
import threading
from bisect import bisect_left
from collections import Counter
from typing import Any

_BASE_S = 1e-6
_GROWTH = math.log(1.1)
_NBUCKETS = 220  # 1 us * 1.1**220 ~ 1.3e3 s
# Bucket i > 0 holds (_BASE_S * 1.1**(i-1), _BASE_S * 1.1**i]; the last one, everything above.
_BOUNDS = [_BASE_S * math.exp(_GROWTH * i) for i in range(_NBUCKETS - 1)]


class Histogram:
    __slots__ = ("counts", "n", "total")

    def __init__(self) -> None:
        self.counts = [0] * _NBUCKETS
        self.n = 0
        self.total = 0.0

    def percentile(self, p: float) -> float:
        """Upper bound of the bucket holding the p-th percentile, in seconds."""
        if self.n == 0:
            return 0.0
        rank = p / 100.0 * self.n
        seen = 0
        for i, c in enumerate(self.counts):
            seen += c
            if seen >= rank and c:
                return _BASE_S * math.exp(_GROWTH * i)
        return _BASE_S * math.exp(_GROWTH * (_NBUCKETS - 1))

    def summary(self) -> dict[str, float]:
        return {
            "count": self.n,
            "mean_ms": round(self.total / self.n * 1000, 4) if self.n else 0.0,
            "p50_ms": round(self.percentile(50) * 1000, 4),
            "p90_ms": round(self.percentile(90) * 1000, 4),
            "p99_ms": round(self.percentile(99) * 1000, 4),
        }


class TaskStats:
    __slots__ = (
        "cancelled",
        "errors",
        "latency",
        "model_s",
        "ok",
        "rejected",
        "script_s",
        "timeouts",
    )

    def __init__(self) -> None:
        self.ok = 0
        self.errors: Counter[str] = Counter()
        self.timeouts = 0
        self.cancelled = 0
        self.rejected: Counter[str] = Counter()
        self.latency = Histogram()
        self.model_s = 0.0
        self.script_s = 0.0

    def add(self, other: TaskStats) -> None:
        """Fold ``other`` into these totals (snapshots sum (task, lane) pairs)."""
        self.ok += other.ok
        self.errors.update(other.errors)
        self.timeouts += other.timeouts
        self.cancelled += other.cancelled
        self.rejected.update(other.rejected)
        mine, theirs = self.latency, other.latency
        mine.counts = [a + b for a, b in zip(mine.counts, theirs.counts)]
        mine.n += theirs.n
        mine.total += theirs.total
        self.model_s += other.model_s
        self.script_s += other.script_s

    def snapshot(self) -> dict[str, Any]:
        return {
            "calls": self.latency.n,
            "successes": self.ok,
            "failures": dict(self.errors),
            "timeouts": self.timeouts,
            "cancelled": self.cancelled,
            "rejected": dict(self.rejected),
            "latency": self.latency.summary(),
            "time_in_model_s": round(self.model_s, 6),
            "time_in_script_s": round(self.script_s, 6),
        }


class Metrics:
    """Thread-safe recorder; ``snapshot()`` is the plain dict ``Container.metrics()`` returns.

    Each call updates one ``TaskStats``, its (task, lane) pair's - a task can run on
    more than one lane - and snapshots sum the pairs per task and per lane."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pairs: dict[tuple[str, str], TaskStats] = {}

    def _pair(self, task: str, lane: str) -> TaskStats:
        s = self._pairs.get((task, lane))
        if s is None:
            s = self._pairs[task, lane] = TaskStats()
        return s

    def record(self, task: str, lane: str, elapsed: float, model_s: float, error: BaseException | None) -> None:
        """One finished call.  On every call's path: the bucket is a C bisection
        (a third of a log()), computed once outside the lock; one pair is updated."""
        bucket = bisect_left(_BOUNDS, elapsed)
        script_s = elapsed - model_s if elapsed > model_s else 0.0
        with self._lock:
            s = self._pairs.get((task, lane)) or self._pair(task, lane)
            latency = s.latency
            latency.counts[bucket] += 1
            latency.n += 1
            latency.total += elapsed
            s.model_s += model_s
            s.script_s += script_s
            if error is None:
                s.ok += 1
                return
            kind = type(error).__name__
            s.errors[kind] += 1
            if kind == "TaskTimeout":
                s.timeouts += 1
            elif kind == "TaskCancelled":
                s.cancelled += 1

    def reject(self, task: str, lane: str, reason: str) -> None:
        with self._lock:
            self._pair(task, lane).rejected[reason] += 1

    def snapshot(self) -> dict[str, Any]:
        tasks: dict[str, TaskStats] = {}
        lanes: dict[str, TaskStats] = {}
        with self._lock:
            for (task, lane), s in self._pairs.items():
                tasks.setdefault(task, TaskStats()).add(s)
                lanes.setdefault(lane, TaskStats()).add(s)
        return {
            "tasks": {k: v.snapshot() for k, v in sorted(tasks.items())},
            "lanes": {k: v.snapshot() for k, v in sorted(lanes.items())},
        }
