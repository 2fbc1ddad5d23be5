"""The wire codec: exact round trips, and hostile bytes never get past ``CodecError``."""

from __future__ import annotations

import random
import struct
import tracemalloc

import numpy as np
import pytest

from vmcontainer.isolation import CodecError
from vmcontainer.isolation.codec import CodecLimits, decode, encode
from vmcontainer.isolation.framing import FrameError, FrameReceiver

HEADER = b"VMC\x01"

RICH = {
    "none": None, "flags": [True, False], "ints": [0, -1, 2**63 - 1, -(2**63), 2**200, -(3**150)],
    "floats": (0.5, float("inf"), -0.0), "text": "héllo \u2603 \ud800", "raw": b"\x00\xff",
    (1, "k"): {"nested": [[[]]], 7: ()},
    "array": np.arange(12, dtype=np.float32).reshape(3, 4),
}


def _same(a, b) -> bool:
    if type(a) is not type(b):
        return False
    if type(a) is np.ndarray:
        return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b, equal_nan=True)
    if type(a) in (list, tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if type(a) is dict:
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b or (isinstance(a, float) and np.isnan(a) and np.isnan(b))


@pytest.mark.parametrize("value", [
    None, True, False, 0, -5, 2**64, [-(2**65535)], 1.5, float("nan"), "", "x" * 1000, b"",
    [], (), {}, [1, (2, [3, {"a": None}])], {1: 2, "1": 3, (1, 2): [b"z"]}, RICH,
])
def test_round_trip(value):
    assert _same(decode(encode(value)), value)


@pytest.mark.parametrize("array", [
    np.zeros((2, 3), np.float64), np.array(3.5, np.float32), np.zeros((0, 4), np.int64),
    np.arange(6, dtype=">i4").reshape(2, 3), np.array([True, False]), np.arange(10, dtype=np.uint8)[::2],
    np.asfortranarray(np.arange(6, dtype=np.int16).reshape(2, 3)), np.array([1 + 2j], np.complex64),
    np.ones(3, np.float16),
])
def test_arrays_round_trip_as_fresh_writable_arrays(array):
    out = decode(encode(array))
    assert _same(out, array)
    assert out.flags.writeable and out.flags.c_contiguous and out.flags.owndata


@pytest.mark.parametrize("value", [
    np.array([object()]), np.zeros(2, dtype=[("a", "i4")]), np.array(["s"]),
    np.array(["2020-01-01"], dtype="datetime64[D]"), np.float64(1.0), {1, 2},
    type("S", (str,), {})("sub"), type("D", (dict,), {})(), pytest.param(2 ** (1 << 16), id="int-too-large"),
    bytearray(b"x"),
])
def test_refuses_what_the_boundary_refuses(value):
    with pytest.raises(CodecError):
        encode(value)


def test_depth_and_size_caps_apply_on_both_sides():
    limits = CodecLimits(max_depth=3, max_items=10, max_bytes=200)
    encode([[[1]]], limits)
    deep = HEADER + b"l\x01\x00\x00\x00" * 4 + b"N"
    with pytest.raises(CodecError, match="deeper"):
        encode([[[[1]]]], limits)
    with pytest.raises(CodecError, match="deeper"):
        decode(deep, limits)
    with pytest.raises(CodecError, match="items"):
        encode(list(range(20)), limits)
    with pytest.raises(CodecError, match="bytes"):
        encode("x" * 300, limits)
    with pytest.raises(CodecError):
        decode(encode("x" * 300), limits)


def test_deep_nesting_is_refused_without_recursion_error():
    bomb = HEADER + b"l\x01\x00\x00\x00" * 100_000 + b"N"
    with pytest.raises(CodecError):
        decode(bomb)


@pytest.mark.parametrize("crafted", [
    b"VMC\x02N",                                    # unknown version
    b"XYZ\x01N", b"VMC", b"",                       # not a message
    HEADER + b"NN",                                 # trailing bytes
    HEADER + b"Q",                                  # unknown tag
    HEADER + b"s\x02\x00\x00\x00\xff\xfe",          # not UTF-8
    HEADER + b"d\x02\x00\x00\x00i" + bytes(8) + b"Ni" + bytes(8) + b"N",   # duplicate key
    HEADER + b"d\x01\x00\x00\x00l\x00\x00\x00\x00N",                       # unhashable key
    HEADER + b"a\x03|O8\x01" + struct.pack("<QQ", 1, 8) + bytes(8),        # object dtype
    HEADER + b"a\x03<f4\x01" + struct.pack("<QQ", 3, 8) + bytes(8),        # shape != bytes
    HEADER + b"a\x03<f4\x02" + struct.pack("<QQQ", 2**40, 2**40, 0),       # overflowing shape
    HEADER + b"I\x00\x30\x00\x00" + bytes(12288),                           # int too large
])
def test_malformed_messages_raise_codec_error(crafted):
    with pytest.raises(CodecError):
        decode(crafted)


@pytest.mark.parametrize("crafted", [
    HEADER + b"s\xff\xff\xff\xff",
    HEADER + b"b\xff\xff\xff\xff" + b"x" * 100,
    HEADER + b"l\xff\xff\xff\xff",
    HEADER + b"d\xff\xff\xff\xff",
    HEADER + b"I\xff\xff\xff\xff",
    HEADER + b"a\x03<f8\x01" + struct.pack("<QQ", 2**59, 2**62),
])
def test_huge_declared_lengths_are_refused_before_allocation(crafted):
    tracemalloc.start()
    try:
        with pytest.raises(CodecError):
            decode(crafted)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def test_huge_frame_header_is_refused_before_allocation():
    import socket

    a, b = socket.socketpair()
    with a, b:
        a.sendall(struct.pack("!I", 0xFFFFFFF0) + b"xx")
        tracemalloc.start()
        try:
            with pytest.raises(FrameError):
                FrameReceiver(1 << 20).step(b)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert peak < 1 << 16


def _decodes_or_codec_error(data: bytes) -> None:
    try:
        decode(data)
    except CodecError:
        pass


def test_fuzz_random_bytes():
    rng = random.Random(1234)
    for _ in range(3000):
        body = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 64)))
        _decodes_or_codec_error(HEADER + body)
        _decodes_or_codec_error(body)


def test_fuzz_truncated_and_tampered_messages():
    good = encode(RICH)
    for cut in range(len(good)):
        with pytest.raises(CodecError):
            decode(good[:cut])
    rng = random.Random(99)
    for _ in range(3000):
        data = bytearray(good)
        for _ in range(rng.randrange(1, 4)):
            data[rng.randrange(len(data))] = rng.getrandbits(8)
        _decodes_or_codec_error(bytes(data))
