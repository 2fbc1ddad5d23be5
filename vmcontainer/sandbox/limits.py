"""Per-task resource limits: one dataclass, safe defaults, each enforced in one place.

==========================  ======================================  =========================
limit                       enforced by                             error
==========================  ======================================  =========================
``cpu_seconds``             checkpoint audit (thread CPU time)      ResourceLimitExceeded
``max_int_bits``            arithmetic guard before ``* ** <<``     ResourceLimitExceeded
``max_sequence``            arithmetic guard, str padding guards    ResourceLimitExceeded
``max_print_bytes``         the captured ``print``                  (output truncated)
``max_model_runs``          ``vm.model(...).run``                   ResourceLimitExceeded
``max_memory_growth``       checkpoint audit (process RSS growth)   ResourceLimitExceeded
``max_result_items/bytes``  the result boundary                     TaskError
``max_result_depth``        the result boundary                     TaskError
==========================  ======================================  =========================

Wall-clock deadlines are the call's own (``CallScope``).  Memory that one C call
allocates without going through one of these guards (``bytes(n)``, a broadcast
numpy product) is bounded only by the process - the memory audit runs between
iterations, not inside a call: use ``Container(isolation="process")``, whose
workers run under RLIMIT_AS.  The audit reads the whole process's resident size,
so in thread mode another thread's allocations during the call count too: the
default budget is generous.
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
    # Growth of the process's resident memory while the call runs, checked at the same
    # audits as the CPU budget: bounds growth built up over loop iterations
    # (s = s + s, a list of big chunks), which no guard before an operation sees.
    max_memory_growth: int | None = 256 << 20
    audit_interval: float = 0.01  # seconds between CPU/memory audits of a running task

    def boundary(self) -> BoundaryLimits:
        return _boundary_of(self)


@functools.lru_cache(maxsize=64)  # one per distinct ResourceLimits: made on every install
def _boundary_of(limits: ResourceLimits) -> BoundaryLimits:
    return BoundaryLimits(max_depth=limits.max_result_depth, max_items=limits.max_result_items,
                          max_bytes=limits.max_result_bytes)


DEFAULT_LIMITS = ResourceLimits()
