"""Per-task resource limits: one dataclass, safe defaults, each enforced in one place.

==========================  ======================================  =========================
limit                       enforced by                             error
==========================  ======================================  =========================
``cpu_seconds``             checkpoint audit (thread CPU time)      ResourceLimitExceeded
``max_int_bits``            arithmetic guard before ``* ** <<``     ResourceLimitExceeded
``max_sequence``            arithmetic guard, str padding guards    ResourceLimitExceeded
``max_print_bytes``         the captured ``print``                  (output truncated)
``max_model_runs``          ``vm.model(...).run``                   ResourceLimitExceeded
``max_result_items/bytes``  the result boundary                     TaskError
``max_result_depth``        the result boundary                     TaskError
==========================  ======================================  =========================

Wall-clock deadlines are the call's own (``CallScope``).  Memory a single C
call allocates without going through one of these guards (a broadcast numpy
reduction, ``s + s`` in a loop) is bounded only by the process: use
``Container(isolation="process")``, whose workers run under RLIMIT_AS.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from .boundary import Limits as BoundaryLimits


@dataclass(frozen=True)
class ResourceLimits:
    cpu_seconds: float | None = 30.0
    max_int_bits: int = 1 << 20  # ~315k decimal digits
    max_sequence: int = 50_000_000  # items or characters built by one operation
    max_print_bytes: int = 64 * 1024
    max_model_runs: int = 10_000
    max_result_items: int = 1_000_000
    max_result_bytes: int = 64 << 20
    max_result_depth: int = 64
    audit_interval: float = 0.01  # seconds between CPU-budget audits of a running task

    def boundary(self) -> BoundaryLimits:
        return _boundary_of(self)


@functools.lru_cache(maxsize=64)  # one per distinct ResourceLimits: made on every install
def _boundary_of(limits: ResourceLimits) -> BoundaryLimits:
    return BoundaryLimits(max_depth=limits.max_result_depth, max_items=limits.max_result_items,
                          max_bytes=limits.max_result_bytes)


DEFAULT_LIMITS = ResourceLimits()
