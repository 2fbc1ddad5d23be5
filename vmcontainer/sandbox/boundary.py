"""The data boundary: what crosses between host and task, copied and bounded.

Inputs are copied in (a script never writes a host buffer, and no view ever
exposes a parent) and results are rebuilt out, inside the worker while the
deadline still runs.  Only exact plain types pass - ``type(x) is dict``, not
``isinstance`` - so no task-defined ``__eq__``/``__hash__`` or subclass ever
runs in host code after the call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

_SCALARS = (type(None), bool, int, float, str, bytes)
_FIXED = frozenset({type(None), bool, float})  # fixed-size: nothing to check or count
_ARRAY_KINDS = frozenset("biufc")


@dataclass(frozen=True)
class Limits:
    max_depth: int = 64
    max_items: int = 1_000_000
    max_bytes: int = 64 << 20
    max_int_bits: int = 1 << 16


DEFAULT_LIMITS = Limits()


class BoundaryError(ValueError):
    """A value that may not cross the boundary (the caller maps it to its public error)."""


def copy_plain(value: Any, limits: Limits = DEFAULT_LIMITS) -> Any:
    """Deep-copy JSON-like data and numeric arrays; refuse everything else."""
    t = type(value)
    if t in _FIXED or (t is int and value.bit_length() <= limits.max_int_bits):
        return value
    budget = [limits.max_items, limits.max_bytes]
    return _copy(value, limits, budget, 0)


def _spend(budget: list[int], items: int, nbytes: int) -> None:
    budget[0] -= items
    budget[1] -= nbytes
    if budget[0] < 0:
        raise BoundaryError("too many items")
    if budget[1] < 0:
        raise BoundaryError("too many bytes")


def _copy(value: Any, limits: Limits, budget: list[int], depth: int) -> Any:
    t = type(value)
    if t in _SCALARS:
        if t is int and value.bit_length() > limits.max_int_bits:
            raise BoundaryError("integer too large")
        if t is str or t is bytes:
            _spend(budget, 1, len(value))
        return value
    if depth >= limits.max_depth:
        raise BoundaryError(f"nested deeper than {limits.max_depth}")
    depth += 1
    if t is list or t is tuple:
        _spend(budget, len(value), 8 * len(value))
        out = [v if type(v) in _FIXED else _copy(v, limits, budget, depth) for v in value]
        return out if t is list else tuple(out)
    if t is dict:
        _spend(budget, len(value), 16 * len(value))
        # The common case inlined (JSON-like records of str keys and fixed-size
        # scalars): about 3x faster than recursing for every value.
        copied = {}
        for k, v in value.items():
            if type(k) is str:
                budget[1] -= len(k)
            else:
                k = _copy(k, limits, budget, depth)
            copied[k] = v if type(v) in _FIXED else _copy(v, limits, budget, depth)
        if budget[1] < 0:
            raise BoundaryError("too many bytes")
        return copied
    if t is np.ndarray:
        if value.dtype.kind not in _ARRAY_KINDS or value.dtype.fields is not None:
            raise BoundaryError(f"arrays of dtype {value.dtype} cannot cross the boundary")
        _spend(budget, 1, value.nbytes)
        return np.array(value, copy=True, order="C")
    if isinstance(value, np.generic) and t.__module__ == "numpy":
        if value.dtype.kind not in _ARRAY_KINDS:
            raise BoundaryError(f"numpy scalars of dtype {value.dtype} cannot cross the boundary")
        return value.item()
    raise BoundaryError(f"values of type {t.__name__} cannot cross the boundary")
