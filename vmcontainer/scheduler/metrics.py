"""Per-task and per-lane counters and latency histograms, cheap enough for every call.

Latencies go into log-spaced buckets (10 % wide), so recording is one
``math.log`` and one list increment and percentiles are read off the
cumulative counts - bounded memory however many calls are made.
"""

from __future__ import annotations

import math
import threading
from collections import Counter
from typing import Any

_BASE_S = 1e-6
_GROWTH = math.log(1.1)
_NBUCKETS = 220  # 1 us * 1.1**220 ~ 1.3e3 s


def bucket_of(seconds: float) -> int:
    if seconds <= _BASE_S:
        return 0
    return min(_NBUCKETS - 1, int(math.log(seconds / _BASE_S) / _GROWTH) + 1)


class Histogram:
    __slots__ = ("counts", "n", "total")

    def __init__(self) -> None:
        self.counts = [0] * _NBUCKETS
        self.n = 0
        self.total = 0.0

    def add(self, seconds: float, bucket: int | None = None) -> None:
        i = bucket_of(seconds) if bucket is None else bucket
        self.counts[i] += 1
        self.n += 1
        self.total += seconds

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
        "calls",
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
        self.calls = 0
        self.ok = 0
        self.errors: Counter[str] = Counter()
        self.timeouts = 0
        self.cancelled = 0
        self.rejected: Counter[str] = Counter()
        self.latency = Histogram()
        self.model_s = 0.0
        self.script_s = 0.0

    def snapshot(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
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
    """Thread-safe recorder; ``snapshot()`` is the plain dict ``Container.metrics()`` returns."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tasks: dict[str, TaskStats] = {}
        self._lanes: dict[str, TaskStats] = {}

    def _stats(self, table: dict[str, TaskStats], key: str) -> TaskStats:
        s = table.get(key)
        if s is None:
            s = table[key] = TaskStats()
        return s

    def record(self, task: str, lane: str, elapsed: float, model_s: float, error: BaseException | None) -> None:
        kind = None if error is None else type(error).__name__
        bucket = bucket_of(elapsed)  # once, outside the lock
        with self._lock:
            for s in (self._stats(self._tasks, task), self._stats(self._lanes, lane)):
                s.calls += 1
                s.latency.add(elapsed, bucket)
                s.model_s += model_s
                s.script_s += max(0.0, elapsed - model_s)
                if kind is None:
                    s.ok += 1
                else:
                    s.errors[kind] += 1
                    if kind == "TaskTimeout":
                        s.timeouts += 1
                    elif kind == "TaskCancelled":
                        s.cancelled += 1

    def reject(self, task: str, lane: str, reason: str) -> None:
        with self._lock:
            self._stats(self._tasks, task).rejected[reason] += 1
            self._stats(self._lanes, lane).rejected[reason] += 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "tasks": {k: v.snapshot() for k, v in sorted(self._tasks.items())},
                "lanes": {k: v.snapshot() for k, v in sorted(self._lanes.items())},
            }
