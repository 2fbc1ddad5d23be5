"""Read what the device must check in an ONNX file, without the ``onnx`` package.

Why by hand: the device does not ship ``onnx`` (a large extra that pulls in
protobuf), yet it must refuse models that point at external data files, use
an opset it does not support or ask for an absurd constant allocation -
*before* ONNX Runtime opens them.  An ONNX file is one protobuf ``ModelProto``,
and protobuf's wire format is small: every field is a varint key
(``number << 3 | wire type``) followed by a varint, a fixed 32/64-bit value or
a length-prefixed run of bytes; nested messages are length-prefixed runs.
This module walks only the fields it needs (numbers from ``onnx.proto``) and
skips everything else.  Every length is checked against the bytes that remain,
nesting depth and node count are capped, and no payload is copied, so a
hostile file costs time linear in its size and no extra memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import ModelError

MAX_DEPTH = 32  # nested graphs (If/Loop/Scan bodies inside each other)
MAX_NODES = 200_000
MAX_SMALL_INTS = 16  # constant int64 tensors up to this many values are remembered (shapes)

# TensorProto.DataType -> bytes per element (0: unknown or variable width).
ELEMENT_BYTES = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 8: 0, 9: 1, 10: 2, 11: 8, 12: 4,
                 13: 8, 14: 8, 15: 16, 16: 2, 17: 1, 18: 1, 19: 1, 20: 1, 21: 1, 22: 1,
                 23: 1, 24: 1}
_INT64 = 7
_EXTERNAL = 1

# Ops whose output size can be read off constant inputs/attributes: op -> how.
_ALLOCATING_OPS = frozenset({"ConstantOfShape", "Expand", "RandomNormal", "RandomUniform"})


@dataclass
class Allocation:
    """A node whose output size is fixed by constants: checked against a cap at load."""

    op: str
    shape_input: str | None  # name of the tensor holding the shape, if it comes from an input
    shape: tuple[int, ...] | None  # the shape itself, if it is an attribute
    element_bytes: int


@dataclass
class ModelFacts:
    """What the scan found; ``validate`` turns it into accept or refuse."""

    ir_version: int = 0
    opsets: dict[str, int] = field(default_factory=dict)
    function_domains: set[str] = field(default_factory=set)
    inputs: list[str] = field(default_factory=list)  # top graph, initializers removed
    outputs: list[str] = field(default_factory=list)
    initializers: set[str] = field(default_factory=set)
    domains: set[str] = field(default_factory=set)  # domains used by nodes
    node_count: int = 0
    max_depth: int = 0
    external_tensors: list[str] = field(default_factory=list)
    small_ints: dict[str, tuple[int, ...]] = field(default_factory=dict)
    allocations: list[Allocation] = field(default_factory=list)
    training: bool = False


class WireError(ModelError):
    """The bytes are not a well-formed protobuf message."""


def _varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= end or shift > 63:
            raise WireError("truncated or overlong varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result & 0xFFFFFFFFFFFFFFFF, pos
        shift += 7


def _signed(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _fields(buf: bytes, start: int, end: int):  # type: ignore[no-untyped-def]
    """Yield ``(number, wire_type, value)``; value is an int, or ``(start, end)`` of a
    length-delimited field."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos, end)
        number, wt = key >> 3, key & 7
        if number == 0:
            raise WireError("field number 0")
        if wt == 0:
            value, pos = _varint(buf, pos, end)
            yield number, 0, value
        elif wt == 2:
            length, pos = _varint(buf, pos, end)
            if length > end - pos:
                raise WireError("length-delimited field runs past its message")
            yield number, 2, (pos, pos + length)
            pos += length
        elif wt == 1:
            if pos + 8 > end:
                raise WireError("truncated fixed64")
            yield number, 1, int.from_bytes(buf[pos:pos + 8], "little")
            pos += 8
        elif wt == 5:
            if pos + 4 > end:
                raise WireError("truncated fixed32")
            yield number, 5, int.from_bytes(buf[pos:pos + 4], "little")
            pos += 4
        else:  # 3/4: deprecated groups, 6/7: invalid
            raise WireError(f"unsupported wire type {wt}")


def _string(buf: bytes, span: tuple[int, int]) -> str:
    return bytes(buf[span[0]:span[1]]).decode("utf-8", "replace")


def _ints(buf: bytes, wt: int, value: object, out: list[int]) -> None:
    """A repeated int64 field: one varint, or a packed run of them."""
    if wt == 0:
        out.append(_signed(value))  # type: ignore[arg-type]
    elif wt == 2:
        start, end = value  # type: ignore[misc]
        pos = start
        while pos < end:
            v, pos = _varint(buf, pos, end)
            out.append(_signed(v))
            if len(out) > MAX_SMALL_INTS * 4:
                return


class _Scanner:
    def __init__(self, buf: bytes):
        self.buf = buf
        self.facts = ModelFacts()

    # -- messages -----------------------------------------------------------------------

    def model(self) -> ModelFacts:
        buf, f = self.buf, self.facts
        graph_span = None
        for number, wt, value in _fields(buf, 0, len(buf)):
            if number == 1 and wt == 0:
                f.ir_version = _signed(value)  # type: ignore[arg-type]
            elif number == 8 and wt == 2:
                domain, version = self.opset(value)  # type: ignore[arg-type]
                f.opsets[domain] = version
            elif number == 7 and wt == 2:
                graph_span = value
            elif number == 20 and wt == 2:
                f.training = True
                for n, w, v in _fields(buf, *value):  # type: ignore[misc]
                    if n in (1, 2) and w == 2:
                        self.graph(v, depth=1, top=False)  # type: ignore[arg-type]
            elif number == 25 and wt == 2:
                self.function(value)  # type: ignore[arg-type]
        if graph_span is None:
            raise WireError("the model has no graph")
        self.graph(graph_span, depth=1, top=True)
        return f

    def opset(self, span: tuple[int, int]) -> tuple[str, int]:
        domain, version = "", 0
        for number, wt, value in _fields(self.buf, *span):
            if number == 1 and wt == 2:
                domain = _string(self.buf, value)  # type: ignore[arg-type]
            elif number == 2 and wt == 0:
                version = _signed(value)  # type: ignore[arg-type]
        return domain, version

    def function(self, span: tuple[int, int]) -> None:
        for number, wt, value in _fields(self.buf, *span):
            if number == 10 and wt == 2:
                self.facts.function_domains.add(_string(self.buf, value))  # type: ignore[arg-type]
            elif number == 7 and wt == 2:
                self.node(value, depth=1)  # type: ignore[arg-type]

    def graph(self, span: tuple[int, int], *, depth: int, top: bool) -> None:
        f = self.facts
        if depth > MAX_DEPTH:
            raise ModelError(f"graphs nest deeper than {MAX_DEPTH} levels")
        f.max_depth = max(f.max_depth, depth)
        inputs: list[str] = []
        for number, wt, value in _fields(self.buf, *span):
            if wt != 2:
                continue
            if number == 1:
                self.node(value, depth)  # type: ignore[arg-type]
            elif number == 5:
                name = self.tensor(value)  # type: ignore[arg-type]
                if top:
                    f.initializers.add(name)
            elif number == 15:
                self.sparse_tensor(value)  # type: ignore[arg-type]
            elif top and number == 11:
                inputs.append(self.value_info_name(value))  # type: ignore[arg-type]
            elif top and number == 12:
                f.outputs.append(self.value_info_name(value))  # type: ignore[arg-type]
        if top:
            f.inputs = [n for n in inputs if n not in f.initializers]

    def value_info_name(self, span: tuple[int, int]) -> str:
        for number, wt, value in _fields(self.buf, *span):
            if number == 1 and wt == 2:
                return _string(self.buf, value)  # type: ignore[arg-type]
        return ""

    def node(self, span: tuple[int, int], depth: int) -> None:
        f = self.facts
        f.node_count += 1
        if f.node_count > MAX_NODES:
            raise ModelError(f"the model has more than {MAX_NODES} nodes")
        inputs: list[str] = []
        outputs: list[str] = []
        op, domain = "", ""
        attrs: list[tuple[int, int]] = []
        for number, wt, value in _fields(self.buf, *span):
            if wt != 2:
                continue
            if number == 1:
                inputs.append(_string(self.buf, value))  # type: ignore[arg-type]
            elif number == 2:
                outputs.append(_string(self.buf, value))  # type: ignore[arg-type]
            elif number == 4:
                op = _string(self.buf, value)  # type: ignore[arg-type]
            elif number == 7:
                domain = _string(self.buf, value)  # type: ignore[arg-type]
            elif number == 5:
                attrs.append(value)  # type: ignore[arg-type]
        f.domains.add(domain)
        named: dict[str, tuple[str, object]] = {}
        for attr in attrs:
            name, kind, payload = self.attribute(attr, depth)
            named[name] = (kind, payload)
        if domain in ("", "ai.onnx"):
            self._constants(op, inputs, outputs, named)

    def attribute(self, span: tuple[int, int], depth: int) -> tuple[str, str, object]:
        """Scan an attribute (recursing into tensors and graphs); return its name and,
        for the kinds the constant tracking needs, its value."""
        name, kind, payload = "", "", None
        ints: list[int] = []
        for number, wt, value in _fields(self.buf, *span):
            if number == 1 and wt == 2:
                name = _string(self.buf, value)  # type: ignore[arg-type]
            elif number == 3 and wt == 0:
                kind, payload = "i", _signed(value)  # type: ignore[arg-type]
            elif number == 8:
                kind = "ints"
                _ints(self.buf, wt, value, ints)
            elif wt != 2:
                continue
            elif number in (5, 10):
                tensor = self.tensor(value, keep=True)  # type: ignore[arg-type]
                if number == 5:
                    kind, payload = "t", tensor
            elif number in (22, 23):
                self.sparse_tensor(value)  # type: ignore[arg-type]
            elif number in (6, 11):
                self.graph(value, depth=depth + 1, top=False)  # type: ignore[arg-type]
        if kind == "ints":
            payload = tuple(ints)
        return name, kind, payload

    def sparse_tensor(self, span: tuple[int, int]) -> None:
        for number, wt, value in _fields(self.buf, *span):
            if number in (1, 2) and wt == 2:
                self.tensor(value)  # type: ignore[arg-type]

    def tensor(self, span: tuple[int, int], keep: bool = False) -> object:
        """Note external data; remember small int64 constants.  Returns the name, or
        with ``keep`` a ``(name, data_type, values or None)`` triple."""
        name, data_type, location, external = "", 1, 0, False
        dims: list[int] = []
        ints: list[int] = []
        raw: tuple[int, int] | None = None
        for number, wt, value in _fields(self.buf, *span):
            if number == 1:
                _ints(self.buf, wt, value, dims)
            elif number == 2 and wt == 0:
                data_type = value  # type: ignore[assignment]
            elif number == 8 and wt == 2:
                name = _string(self.buf, value)  # type: ignore[arg-type]
            elif number == 9 and wt == 2:
                raw = value  # type: ignore[assignment]
            elif number == 7:
                _ints(self.buf, wt, value, ints)
            elif number == 13 and wt == 2:
                external = True
            elif number == 14 and wt == 0:
                location = value  # type: ignore[assignment]
        f = self.facts
        if external or location == _EXTERNAL:
            f.external_tensors.append(name or "<unnamed>")
        values: tuple[int, ...] | None = None
        if data_type == _INT64 and len(dims) <= 1:
            size = -1 if raw is None else raw[1] - raw[0]
            if raw is not None and size % 8 == 0 and size <= 8 * MAX_SMALL_INTS:
                data = self.buf[raw[0]:raw[1]]
                values = tuple(int.from_bytes(data[i:i + 8], "little", signed=True)
                               for i in range(0, len(data), 8))
            elif raw is None and len(ints) <= MAX_SMALL_INTS:
                values = tuple(ints)
            if values is not None and name:
                f.small_ints[name] = values
        if keep:
            return (name, data_type, values)
        return name

    # -- constant-size allocations ---------------------------------------------------------

    def _constants(self, op: str, inputs: list[str], outputs: list[str],
                   attrs: dict[str, tuple[str, object]]) -> None:
        f = self.facts
        if op == "Constant" and outputs:
            kind, payload = attrs.get("value", ("", None))
            if kind == "t" and payload[2] is not None:  # type: ignore[index]
                f.small_ints[outputs[0]] = payload[2]  # type: ignore[index]
            kind, payload = attrs.get("value_ints", ("", None))
            if kind == "ints" and len(payload) <= MAX_SMALL_INTS:  # type: ignore[arg-type]
                f.small_ints[outputs[0]] = payload  # type: ignore[assignment]
            return
        if op not in _ALLOCATING_OPS:
            return
        if op == "ConstantOfShape" and inputs:
            kind, payload = attrs.get("value", ("", None))
            dtype = payload[1] if kind == "t" else 1  # type: ignore[index]
            f.allocations.append(Allocation(op, inputs[0], None, ELEMENT_BYTES.get(dtype, 1) or 1))
        elif op == "Expand" and len(inputs) > 1:
            f.allocations.append(Allocation(op, inputs[1], None, 1))
        elif op in ("RandomNormal", "RandomUniform"):
            kind, payload = attrs.get("shape", ("", None))
            if kind == "ints":
                dkind, dtype = attrs.get("dtype", ("i", 1))
                size = ELEMENT_BYTES.get(dtype if dkind == "i" else 1, 4) or 4  # type: ignore[arg-type]
                f.allocations.append(Allocation(op, None, payload, size))  # type: ignore[arg-type]


def scan_model(blob: bytes) -> ModelFacts:
    """Walk ``blob`` as a ``ModelProto``; raise ``ModelError`` if it is not one."""
    return _Scanner(blob).model()


def allocation_bytes(facts: ModelFacts, alloc: Allocation) -> int | None:
    """Bytes ``alloc`` will allocate, when its shape is a known constant."""
    shape = alloc.shape
    if shape is None and alloc.shape_input is not None:
        shape = facts.small_ints.get(alloc.shape_input)
    if shape is None:
        return None
    total = alloc.element_bytes
    for dim in shape:
        if dim < 0:
            return None
        total *= dim
    return total
