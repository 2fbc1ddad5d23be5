"""The one timing helper every benchmark uses, and the statistics over its samples.

Why interleave: on a shared, noisy 2-core VM the machine's speed drifts by tens
of percent over seconds.  Timing a variant and its baseline side by side in
every round, and taking the median of the per-round ratios, cancels most of
that drift; two figures taken a minute apart would not.
"""

from __future__ import annotations

import gc
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Case:
    """One thing to time.  ``prepare`` runs untimed before every timed call of ``fn``
    (e.g. uninstalling, so that each install is a cold one)."""

    name: str
    fn: Callable[[], object]
    prepare: Callable[[], object] | None = None


@dataclass
class Series:
    """Samples of one case: every call, and the median call of each round."""

    calls: list[float] = field(default_factory=list)  # seconds, one per call
    rounds: list[float] = field(default_factory=list)  # median seconds per call, one per round

    def pct(self, q: float) -> float:
        return percentile(self.calls, q)

    @property
    def median(self) -> float:
        """Median of the per-round medians: the figure reported as "the" time."""
        return statistics.median(self.rounds)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (no interpolation: p99 of 50 samples is a real sample)."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[rank - 1]


def interleave(cases: Sequence[Case], *, rounds: int, inner: int = 1, warmup: int = 1) -> dict[str, Series]:
    """Time ``cases`` round by round: each case runs ``inner`` timed calls per round.

    The order rotates every round so no case always runs first (right after
    another case has warmed or cooled the caches).  ``warmup`` untimed calls per
    case come first: first calls pay for lazy imports and allocator growth.  A
    round's figure is the median of its calls, not the mean: the VM sometimes
    stalls a thread for milliseconds, and one stall must not decide a round.
    """
    cases = list(cases)
    for case in cases:
        for _ in range(warmup):
            _call(case)
    gc.collect()
    out = {case.name: Series() for case in cases}
    clock = time.perf_counter
    n = len(cases)
    for r in range(rounds):
        for case in cases[r % n:] + cases[: r % n]:
            series = out[case.name]
            times = []
            for _ in range(inner):
                if case.prepare is not None:
                    case.prepare()
                t0 = clock()
                case.fn()
                times.append(clock() - t0)
            series.calls += times
            series.rounds.append(statistics.median(times))
    return out


def _call(case: Case) -> None:
    if case.prepare is not None:
        case.prepare()
    case.fn()


def paired_ratios(variant: Sequence[float], baseline: Sequence[float]) -> list[float]:
    """Per-round ratios variant / baseline (the drift-cancelling comparison)."""
    return [v / b for v, b in zip(variant, baseline) if b > 0]


@dataclass(frozen=True)
class RatioStats:
    median: float
    p25: float
    p75: float

    @classmethod
    def of(cls, ratios: Sequence[float]) -> RatioStats:
        return cls(statistics.median(ratios), percentile(ratios, 25), percentile(ratios, 75))
