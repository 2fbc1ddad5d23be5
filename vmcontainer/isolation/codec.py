"""The wire codec between the host and its worker processes: plain data, never code.

Why not pickle: a worker runs untrusted task code, so the host must treat every
byte a worker sends as hostile.  Unpickling (or ``marshal.loads``) crafted
bytes executes code or builds arbitrary objects in the host; this codec can
only ever produce ``None``, ``bool``, ``int``, ``float``, ``str``, ``bytes``,
``list``, ``tuple``, ``dict`` and numeric numpy arrays - the same closed set the
data boundary (``sandbox.boundary.copy_plain``) lets out of a task.  The same
codec carries requests to the worker; code travels there as plain ``bytes``
(already verified by the host) and only the worker unmarshals it.

Format (version 1)::

    message := b"VMC" version:u8 value          (nothing may follow the value)
    value   := "N" | "T" | "F"                   None, True, False
             | "i" i64 | "I" n:u32 n*u8         int (two's complement, little endian)
             | "f" f64                          float
             | "s" n:u32 utf8 | "b" n:u32 raw   str (surrogatepass), bytes
             | "l" n:u32 value* | "t" ...        list, tuple
             | "d" n:u32 (value value)*         dict (keys unique and hashable)
             | "a" n:u8 dtype ndim:u8 ndim*u64 nbytes:u64 raw   C-order ndarray

Decoding is strict and bounded before it allocates: a declared length or count
larger than what is left of the message is refused, as are depth, item, int
size and total size over ``CodecLimits``; every failure is one ``CodecError``.
Arrays are rebuilt with ``np.frombuffer(...).reshape(...).copy()`` so the
receiver owns a writable array that shares nothing with the message buffer.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..sandbox.boundary import DEFAULT_LIMITS as BOUNDARY_LIMITS

MAGIC = b"VMC"
VERSION = 1
_HEADER = MAGIC + bytes([VERSION])

_I64 = struct.Struct("<q")
_F64 = struct.Struct("<d")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_U8 = struct.Struct("<B")
_u8, _u32, _u64, _i64, _f64 = (s.unpack_from for s in (_U8, _U32, _U64, _I64, _F64))
_I64_MIN, _I64_MAX = -(1 << 63), (1 << 63) - 1
_MAX_NDIM = 32
_STANDALONE = 64 * 1024  # encode_chunks: parts at least this big are not merged

_ARRAY_TYPES = (np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16,
                np.uint32, np.uint64, np.float16, np.float32, np.float64, np.longdouble,
                np.complex64, np.complex128, np.clongdouble)
# Exact dtype strings, both byte orders: never hand an arbitrary string to np.dtype().
_DTYPES: dict[str, np.dtype] = {
    d.str: d
    for t in _ARRAY_TYPES
    for d in (np.dtype(t).newbyteorder("<"), np.dtype(t).newbyteorder(">"))
}


class CodecError(ValueError):
    """A message that is malformed, over a limit, of an unsupported version, or
    holds a value the codec does not carry.  The only error decoding raises."""


@dataclass(frozen=True)
class CodecLimits:
    """Caps enforced on both encode and decode.

    ``max_depth`` counts nested containers.  Task data is at most
    ``boundary.max_depth`` (64) deep; a message wraps it in an envelope dict
    and, for a graph call, the ``upstream`` dict, hence the default of 64 + 2.
    """

    max_bytes: int = 256 << 20
    max_depth: int = BOUNDARY_LIMITS.max_depth + 2
    max_items: int = 4 * BOUNDARY_LIMITS.max_items
    max_int_bits: int = BOUNDARY_LIMITS.max_int_bits


DEFAULT_LIMITS = CodecLimits()


def encode(value: Any, limits: CodecLimits = DEFAULT_LIMITS) -> bytes:
    """Serialise ``value``; raise ``CodecError`` for unsupported types or exceeded caps."""
    return b"".join(encode_chunks(value, limits))


def encode_chunks(value: Any, limits: CodecLimits = DEFAULT_LIMITS) -> list[bytes | memoryview]:
    """``encode`` as a few buffers that concatenate to the message: large ones
    (array data, long strings) stand alone - an array's is a view of the array
    itself - so a sender can write them out without copying them again."""
    try:
        parts = _serialise(value, limits)
    except (struct.error, OverflowError, MemoryError, RecursionError) as exc:
        raise CodecError(f"cannot encode: {type(exc).__name__}") from None
    chunks: list[bytes | memoryview] = []
    run: list[bytes | memoryview] = []
    for part in parts:
        if len(part) >= _STANDALONE:
            if run:
                chunks.append(b"".join(run))
                run = []
            chunks.append(part)
        else:
            run.append(part)
    if run:
        chunks.append(b"".join(run))
    return chunks


def decode(data: bytes | bytearray | memoryview, limits: CodecLimits = DEFAULT_LIMITS) -> Any:
    """Parse one message; raise ``CodecError`` on anything but a well-formed one."""
    if len(data) > limits.max_bytes:
        raise CodecError(f"message of {len(data)} bytes exceeds {limits.max_bytes}")
    view = memoryview(data).cast("B")
    if len(view) < len(_HEADER) or bytes(view[:3]) != MAGIC:
        raise CodecError("not a codec message")
    if view[3] != VERSION:
        raise CodecError(f"unsupported codec version {view[3]}")
    try:
        return _parse(view, limits)
    except CodecError:
        raise
    except (ValueError, TypeError, OverflowError, MemoryError, RecursionError,
            struct.error, IndexError) as exc:
        raise CodecError(f"malformed message: {type(exc).__name__}") from None


def _serialise(root: Any, limits: CodecLimits) -> list[bytes | memoryview]:
    """The encoder, a closure over locals for the same reason as ``_parse``.

    Sizes are checked where they can be large (strings, bytes, arrays - before
    an array's data is copied out) and once more at the end."""
    parts: list[bytes | memoryview] = [_HEADER]
    put = parts.append
    size = len(_HEADER)
    items = 0
    max_bytes, max_items, max_depth = limits.max_bytes, limits.max_items, limits.max_depth

    def grow(n: int) -> None:
        nonlocal size
        size += n
        if size > max_bytes:
            raise CodecError(f"message exceeds {max_bytes} bytes")

    def emit(v: Any, depth: int) -> None:
        nonlocal size, items
        items += 1
        if items > max_items:
            raise CodecError(f"message exceeds {max_items} items")
        t = type(v)
        if t is str:
            raw = v.encode("utf-8", "surrogatepass")
            grow(5 + len(raw))
            put(b"s" + _U32.pack(len(raw)))
            put(raw)
        elif t is int:
            if _I64_MIN <= v <= _I64_MAX:
                size += 9
                put(b"i" + _I64.pack(v))
            else:
                put(_big_int(v, limits.max_int_bits))
                grow(len(parts[-1]))
        elif t is float:
            size += 9
            put(b"f" + _F64.pack(v))
        elif t is dict or t is list or t is tuple:
            if depth >= max_depth:
                raise CodecError(f"nested deeper than {max_depth}")
            size += 5
            put((b"d" if t is dict else b"l" if t is list else b"t") + _U32.pack(len(v)))
            depth += 1
            if t is dict:
                for key, item in v.items():
                    emit(key, depth)
                    emit(item, depth)
            else:
                for item in v:
                    emit(item, depth)
        elif v is None or t is bool:
            size += 1
            put(b"N" if v is None else b"T" if v else b"F")
        elif t is bytes:
            grow(5 + len(v))
            put(b"b" + _U32.pack(len(v)))
            put(v)
        elif t is np.ndarray:
            head = _array_head(v)
            grow(len(head) + v.nbytes)
            put(head)
            data = v if v.flags.c_contiguous else v.copy(order="C")
            put(memoryview(data.reshape(-1).view(np.uint8)))  # len() is its byte count
        else:
            raise CodecError(f"values of type {t.__name__} are not carried")

    try:
        emit(root, 0)
    finally:
        emit = None  # type: ignore[assignment]  # it refers to itself: break the cycle
    grow(0)
    return parts


def _big_int(v: int, max_bits: int) -> bytes:
    if v.bit_length() > max_bits:
        raise CodecError("integer too large")
    raw = v.to_bytes(v.bit_length() // 8 + 1, "little", signed=True)
    return b"I" + _U32.pack(len(raw)) + raw


def _array_head(a: np.ndarray) -> bytes:
    dtype = _DTYPES.get(a.dtype.str)
    if dtype is None or a.dtype != dtype:
        raise CodecError(f"arrays of dtype {a.dtype} are not carried")
    if a.ndim > _MAX_NDIM:
        raise CodecError(f"arrays of more than {_MAX_NDIM} dimensions are not carried")
    name = dtype.str.encode("ascii")
    return (b"a" + bytes([len(name)]) + name + bytes([a.ndim])
            + b"".join(_U64.pack(n) for n in a.shape) + _U64.pack(a.nbytes))


def _parse(view: memoryview, limits: CodecLimits) -> Any:
    """Walk the message once, recursively.

    A closure over locals rather than a class: this runs for every call in both
    directions, and local/cell access is about 1.5x faster than attributes.
    Fixed-size fields use ``unpack_from``, whose ``struct.error`` on a short
    buffer ``decode`` turns into ``CodecError``; variable lengths are checked
    against what is left before anything is sliced or allocated.
    """
    size = len(view)
    pos = len(_HEADER)
    items = 0
    max_items, max_depth = limits.max_items, limits.max_depth
    max_int_bytes = limits.max_int_bits // 8 + 1

    def span(n: int) -> memoryview:
        nonlocal pos
        start, pos = pos, pos + n
        if pos > size:
            raise CodecError("truncated message or length past its end")
        return view[start:pos]

    def fixed(unpack: Any, width: int) -> Any:
        nonlocal pos
        got = unpack(view, pos)[0]
        pos += width
        return got

    def value(depth: int) -> Any:
        nonlocal pos, items
        items += 1
        if items > max_items:
            raise CodecError(f"message exceeds {max_items} items")
        tag = view[pos]
        pos += 1
        if tag == 0x73:  # s
            start = pos + 4
            pos = start + _u32(view, pos)[0]
            if pos > size:
                raise CodecError("truncated message or length past its end")
            return str(view[start:pos], "utf-8", "surrogatepass")
        if tag == 0x69:  # i
            pos += 8
            return _i64(view, pos - 8)[0]
        if tag == 0x66:  # f
            pos += 8
            return _f64(view, pos - 8)[0]
        if tag == 0x4E:  # N
            return None
        if tag == 0x54:  # T
            return True
        if tag == 0x46:  # F
            return False
        if tag == 0x64 or tag == 0x6C or tag == 0x74:  # d l t
            if depth >= max_depth:
                raise CodecError(f"nested deeper than {max_depth}")
            n = _u32(view, pos)[0]
            pos += 4
            if n > size - pos:  # each element takes at least one byte
                raise CodecError("declared count exceeds the message")
            depth += 1
            if tag != 0x64:
                got = [value(depth) for _ in range(n)]
                return got if tag == 0x6C else tuple(got)
            out: dict[Any, Any] = {}
            for i in range(n):
                key = value(depth)
                try:
                    out[key] = value(depth)
                except TypeError:
                    raise CodecError("unhashable dict key") from None
                if len(out) != i + 1:
                    raise CodecError("duplicate dict key")
            return out
        if tag == 0x62:  # b
            return bytes(span(fixed(_u32, 4)))
        if tag == 0x49:  # I
            n = fixed(_u32, 4)
            if n > max_int_bytes:
                raise CodecError("integer too large")
            return int.from_bytes(span(n), "little", signed=True)
        if tag == 0x61:  # a
            return array()
        raise CodecError(f"unknown tag 0x{tag:02x}")

    def array() -> np.ndarray:
        dtype = _DTYPES.get(str(span(fixed(_u8, 1)), "ascii"))
        if dtype is None:
            raise CodecError("array dtype is not carried")
        ndim = fixed(_u8, 1)
        if ndim > _MAX_NDIM:
            raise CodecError("too many array dimensions")
        shape = tuple(fixed(_u64, 8) for _ in range(ndim))
        nbytes = fixed(_u64, 8)
        count = math.prod(shape)
        if count * dtype.itemsize != nbytes:
            raise CodecError("array shape does not match its byte length")
        raw = span(nbytes)
        if count == 0:
            return np.zeros(shape, dtype)
        return np.frombuffer(raw, dtype=dtype, count=count).reshape(shape).copy()

    try:
        result = value(0)
    finally:
        value = None  # type: ignore[assignment]  # it refers to itself: break the cycle
    if pos != size:
        raise CodecError("trailing bytes after the message")
    return result
