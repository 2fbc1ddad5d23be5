"""Model signatures: input and output names, dtypes and shapes - and when a newer
model may stand in for an older one.

A task that accepts "a compatible newer model" (``policy: "compatible"``)
records at build time the signature of the model it was written against.  A
model is compatible with that record when every call the script could make
still works and every result it reads still has the same form:

* the same set of input names; each with the same dtype and rank; each
  dimension the record fixed to a size either keeps that size or becomes
  dynamic (accepting more); a dimension the record left dynamic stays dynamic;
* every recorded output still exists with the same dtype, rank and fixed
  sizes (dynamic stays dynamic); extra outputs are allowed (callers index by
  name).

Dynamic dimension *names* ("N" vs "batch") do not matter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ModelError

ORT_DTYPES = {
    "tensor(float)": np.dtype(np.float32),
    "tensor(double)": np.dtype(np.float64),
    "tensor(float16)": np.dtype(np.float16),
    "tensor(int64)": np.dtype(np.int64),
    "tensor(int32)": np.dtype(np.int32),
    "tensor(int16)": np.dtype(np.int16),
    "tensor(int8)": np.dtype(np.int8),
    "tensor(uint8)": np.dtype(np.uint8),
    "tensor(uint16)": np.dtype(np.uint16),
    "tensor(uint32)": np.dtype(np.uint32),
    "tensor(uint64)": np.dtype(np.uint64),
    "tensor(bool)": np.dtype(np.bool_),
}
_BY_NAME = {d.name: d for d in ORT_DTYPES.values()}

Dim = int | str | None


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: np.dtype
    shape: tuple[Dim, ...]

    def describe(self) -> dict[str, Any]:
        """The script-visible (and manifest) form: plain data only."""
        return {"name": self.name, "dtype": self.dtype.name, "shape": list(self.shape)}

    @classmethod
    def from_ort(cls, node: Any) -> TensorSpec:
        dtype = ORT_DTYPES.get(node.type)
        if dtype is None:
            raise ModelError(f"tensor {node.name!r} has unsupported type {node.type}")
        return cls(node.name, dtype, tuple(_dim(d) for d in node.shape))

    @classmethod
    def from_dict(cls, data: Any) -> TensorSpec:
        if not isinstance(data, dict) or set(data) != {"name", "dtype", "shape"}:
            raise ModelError("a tensor spec is {name, dtype, shape}")
        dtype = _BY_NAME.get(data["dtype"])
        shape = data["shape"]
        if not isinstance(data["name"], str) or dtype is None or not isinstance(shape, list):
            raise ModelError(f"bad tensor spec {data!r}")
        if not all(d is None or (type(d) is int and d >= 0) or isinstance(d, str) for d in shape):
            raise ModelError(f"bad dimension in tensor spec {data!r}")
        return cls(data["name"], dtype, tuple(shape))

    @property
    def fixed_dims(self) -> tuple[tuple[int, int], ...]:
        """(axis, size) of every dimension fixed to a size: what a feed must match."""
        return tuple((i, d) for i, d in enumerate(self.shape) if type(d) is int)


def _dim(d: Any) -> Dim:
    if type(d) is int:
        return d if d >= 0 else None
    return d if isinstance(d, str) and d else None


@dataclass(frozen=True)
class Signature:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def describe(self) -> dict[str, Any]:
        return {"inputs": [s.describe() for s in self.inputs],
                "outputs": [s.describe() for s in self.outputs]}

    @classmethod
    def from_dict(cls, data: Any) -> Signature:
        if not isinstance(data, dict) or set(data) != {"inputs", "outputs"}:
            raise ModelError("a signature is {inputs: [...], outputs: [...]}")
        if not isinstance(data["inputs"], list) or not isinstance(data["outputs"], list):
            raise ModelError("signature inputs and outputs must be lists")
        return cls(tuple(TensorSpec.from_dict(s) for s in data["inputs"]),
                   tuple(TensorSpec.from_dict(s) for s in data["outputs"]))

    @classmethod
    def of_session(cls, session: Any) -> Signature:
        return cls(tuple(TensorSpec.from_ort(i) for i in session.get_inputs()),
                   tuple(TensorSpec.from_ort(o) for o in session.get_outputs()))


def incompatibilities(expected: Signature, actual: Signature) -> list[str]:
    """Why ``actual`` cannot stand in for ``expected`` (empty list: it can)."""
    problems: list[str] = []
    have_in = {s.name: s for s in actual.inputs}
    want_in = {s.name for s in expected.inputs}
    extra = sorted(set(have_in) - want_in)
    if extra:
        problems.append(f"new required inputs {extra}")
    for want in expected.inputs:
        have = have_in.get(want.name)
        if have is None:
            problems.append(f"input {want.name!r} is gone")
            continue
        problems += _spec_problems("input", want, have, widen_ok=True)
    have_out = {s.name: s for s in actual.outputs}
    for want in expected.outputs:
        have = have_out.get(want.name)
        if have is None:
            problems.append(f"output {want.name!r} is gone")
            continue
        problems += _spec_problems("output", want, have, widen_ok=False)
    return problems


def _spec_problems(kind: str, want: TensorSpec, have: TensorSpec, *, widen_ok: bool) -> list[str]:
    if want.dtype != have.dtype:
        return [f"{kind} {want.name!r} dtype {want.dtype.name} -> {have.dtype.name}"]
    if len(want.shape) != len(have.shape):
        return [f"{kind} {want.name!r} rank {len(want.shape)} -> {len(have.shape)}"]
    for axis, (w, h) in enumerate(zip(want.shape, have.shape)):
        w_fixed, h_fixed = type(w) is int, type(h) is int
        if w_fixed and h_fixed and w != h:
            return [f"{kind} {want.name!r} axis {axis} size {w} -> {h}"]
        if not w_fixed and h_fixed:
            return [f"{kind} {want.name!r} axis {axis} was dynamic, now fixed to {h}"]
        if w_fixed and not h_fixed and not widen_ok:
            return [f"{kind} {want.name!r} axis {axis} was {w}, now dynamic"]
    return []
