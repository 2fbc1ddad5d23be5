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
_I64_MIN, _I64_MAX = -(1 << 63), (1 << 63) - 1
_MAX_NDIM = 32

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
    writer = _Writer(limits)
    try:
        writer.value(value, 0)
    except (struct.error, OverflowError, MemoryError, RecursionError) as exc:
        raise CodecError(f"cannot encode: {type(exc).__name__}") from None
    return b"".join(writer.parts)


def decode(data: bytes | bytearray | memoryview, limits: CodecLimits = DEFAULT_LIMITS) -> Any:
    """Parse one message; raise ``CodecError`` on anything but a well-formed one."""
    if len(data) > limits.max_bytes:
        raise CodecError(f"message of {len(data)} bytes exceeds {limits.max_bytes}")
    view = memoryview(data).cast("B")
    if bytes(view[:3]) != MAGIC or len(view) < len(_HEADER):
        raise CodecError("not a codec message")
    if view[3] != VERSION:
        raise CodecError(f"unsupported codec version {view[3]}")
    reader = _Reader(view, limits)
    try:
        value = reader.value(0)
    except CodecError:
        raise
    except (ValueError, TypeError, OverflowError, MemoryError, RecursionError,
            struct.error, IndexError) as exc:
        raise CodecError(f"malformed message: {type(exc).__name__}") from None
    if reader.pos != len(view):
        raise CodecError("trailing bytes after the message")
    return value


class _Writer:
    __slots__ = ("parts", "size", "items", "limits")

    def __init__(self, limits: CodecLimits):
        self.parts: list[bytes] = [_HEADER]
        self.size = len(_HEADER)
        self.items = 0
        self.limits = limits

    def put(self, *chunks: bytes) -> None:
        for chunk in chunks:
            self.size += len(chunk)
            self.parts.append(chunk)
        if self.size > self.limits.max_bytes:
            raise CodecError(f"message exceeds {self.limits.max_bytes} bytes")

    def value(self, v: Any, depth: int) -> None:
        self.items += 1
        if self.items > self.limits.max_items:
            raise CodecError(f"message exceeds {self.limits.max_items} items")
        t = type(v)
        if v is None:
            self.put(b"N")
        elif t is bool:
            self.put(b"T" if v else b"F")
        elif t is int:
            self.integer(v)
        elif t is float:
            self.put(b"f", _F64.pack(v))
        elif t is str:
            raw = v.encode("utf-8", "surrogatepass")
            self.put(b"s", _U32.pack(len(raw)), raw)
        elif t is bytes:
            self.put(b"b", _U32.pack(len(v)), v)
        elif t is list or t is tuple or t is dict:
            if depth >= self.limits.max_depth:
                raise CodecError(f"nested deeper than {self.limits.max_depth}")
            tag = b"l" if t is list else b"t" if t is tuple else b"d"
            self.put(tag, _U32.pack(len(v)))
            if t is dict:
                for key, item in v.items():
                    self.value(key, depth + 1)
                    self.value(item, depth + 1)
            else:
                for item in v:
                    self.value(item, depth + 1)
        elif t is np.ndarray:
            self.array(v)
        else:
            raise CodecError(f"values of type {t.__name__} are not carried")

    def integer(self, v: int) -> None:
        if _I64_MIN <= v <= _I64_MAX:
            self.put(b"i", _I64.pack(v))
            return
        if v.bit_length() > self.limits.max_int_bits:
            raise CodecError("integer too large")
        raw = v.to_bytes(v.bit_length() // 8 + 1, "little", signed=True)
        self.put(b"I", _U32.pack(len(raw)), raw)

    def array(self, a: np.ndarray) -> None:
        dtype = _DTYPES.get(a.dtype.str)
        if dtype is None or a.dtype != dtype:
            raise CodecError(f"arrays of dtype {a.dtype} are not carried")
        if a.ndim > _MAX_NDIM:
            raise CodecError(f"arrays of more than {_MAX_NDIM} dimensions are not carried")
        name = dtype.str.encode("ascii")
        self.put(b"a", bytes([len(name)]), name, bytes([a.ndim]),
                 *(_U64.pack(n) for n in a.shape), _U64.pack(a.nbytes))
        if self.size + a.nbytes > self.limits.max_bytes:  # before copying the data out
            raise CodecError(f"message exceeds {self.limits.max_bytes} bytes")
        self.put(a.tobytes(order="C"))


class _Reader:
    __slots__ = ("view", "pos", "items", "limits")

    def __init__(self, view: memoryview, limits: CodecLimits):
        self.view = view
        self.pos = len(_HEADER)
        self.items = 0
        self.limits = limits

    def take(self, n: int) -> memoryview:
        """The next ``n`` bytes, refused before anything is allocated if they are not there."""
        end = self.pos + n
        if n < 0 or end > len(self.view):
            raise CodecError("truncated message or length past its end")
        chunk = self.view[self.pos:end]
        self.pos = end
        return chunk

    def count(self) -> int:
        """A container's declared element count; each element needs at least one byte."""
        (n,) = _U32.unpack(self.take(4))
        if n > len(self.view) - self.pos:
            raise CodecError("declared count exceeds the message")
        return n

    def value(self, depth: int) -> Any:
        self.items += 1
        if self.items > self.limits.max_items:
            raise CodecError(f"message exceeds {self.limits.max_items} items")
        tag = self.take(1)[0]
        if tag == 0x4E:  # N
            return None
        if tag == 0x54:  # T
            return True
        if tag == 0x46:  # F
            return False
        if tag == 0x69:  # i
            return _I64.unpack(self.take(8))[0]
        if tag == 0x49:  # I
            (n,) = _U32.unpack(self.take(4))
            if n * 8 > self.limits.max_int_bits + 8:
                raise CodecError("integer too large")
            return int.from_bytes(self.take(n), "little", signed=True)
        if tag == 0x66:  # f
            return _F64.unpack(self.take(8))[0]
        if tag == 0x73:  # s
            (n,) = _U32.unpack(self.take(4))
            return str(self.take(n), "utf-8", "surrogatepass")
        if tag == 0x62:  # b
            (n,) = _U32.unpack(self.take(4))
            return bytes(self.take(n))
        if tag == 0x61:  # a
            return self.array()
        if tag in (0x6C, 0x74, 0x64):  # l t d
            if depth >= self.limits.max_depth:
                raise CodecError(f"nested deeper than {self.limits.max_depth}")
            n = self.count()
            if tag == 0x64:
                return self.mapping(n, depth + 1)
            items = [self.value(depth + 1) for _ in range(n)]
            return items if tag == 0x6C else tuple(items)
        raise CodecError(f"unknown tag 0x{tag:02x}")

    def mapping(self, n: int, depth: int) -> dict[Any, Any]:
        out: dict[Any, Any] = {}
        for i in range(n):
            key = self.value(depth)
            item = self.value(depth)
            try:
                out[key] = item
            except TypeError:
                raise CodecError("unhashable dict key") from None
            if len(out) != i + 1:
                raise CodecError("duplicate dict key")
        return out

    def array(self) -> np.ndarray:
        name = str(self.take(self.take(1)[0]), "ascii")
        dtype = _DTYPES.get(name)
        if dtype is None:
            raise CodecError(f"array dtype {name!r} is not carried")
        ndim = self.take(1)[0]
        if ndim > _MAX_NDIM:
            raise CodecError("too many array dimensions")
        shape = tuple(_U64.unpack(self.take(8))[0] for _ in range(ndim))
        (nbytes,) = _U64.unpack(self.take(8))
        count = math.prod(shape)
        if count * dtype.itemsize != nbytes:
            raise CodecError("array shape does not match its byte length")
        raw = self.take(nbytes)
        if count == 0:
            return np.zeros(shape, dtype)
        return np.frombuffer(raw, dtype=dtype, count=count).reshape(shape).copy()
