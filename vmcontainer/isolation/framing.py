"""Length-prefixed frames over a stream socket, readable under a deadline.

Each frame is a 4-byte big-endian length and that many bytes (the layout of
``multiprocessing.Connection.send_bytes``, without ever touching its pickling
``send``/``recv``).  The host cannot use a blocking ``recv_bytes``: a worker
that sends half a frame and stops would hold the calling lane thread past its
deadline.  ``FrameReceiver`` is incremental instead - one ``recv`` per
``step`` under the socket's timeout, header and body of a small frame in one -
so the caller can look at its deadline and cancel flag between steps.  The declared length is checked against the cap
before the body buffer is allocated.

Large frames cost page faults more than copies: a receiver keeps one buffer
for frames up to ``keep_bytes`` and reuses it (the decoder copies everything
out), and ``write_frame`` sends the codec's chunks as they are instead of
joining them first.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Sequence

from .codec import CodecError

_LEN = struct.Struct("!I")
SMALL_FRAME = 64 * 1024  # frames up to this size are sent with one sendall
_FIRST = 8 * 1024  # what the first recv of a frame asks for

Chunks = Sequence[bytes | memoryview]


class FrameError(CodecError):
    """A frame header declares more bytes than the receiver accepts."""


class FrameReceiver:
    """Assembles frames from as many ``recv`` calls as they take, into a reused buffer.

    The first ``recv`` of a frame asks for up to ``_FIRST`` bytes, so a small frame
    - most replies and requests - costs one system call, header and body
    together.  Both sides speak strictly in turn (one request, one reply), so
    bytes beyond the declared frame are a protocol violation (``FrameError``),
    never the start of the next frame.
    """

    __slots__ = ("_buf", "_got", "_need", "keep_bytes", "max_bytes")

    def __init__(self, max_bytes: int, keep_bytes: int = 16 << 20):
        self.max_bytes = max_bytes
        self.keep_bytes = keep_bytes
        self._buf = memoryview(bytearray(_FIRST))
        self._got = 0
        self._need = 0  # header + body bytes of the frame in progress; 0: header not read

    def reset(self) -> None:
        """Forget a partly received frame."""
        self._got = self._need = 0

    def step(self, sock: socket.socket) -> memoryview | None:
        """One ``recv``: the complete frame (valid until the next ``step``), or None.

        Raises ``TimeoutError`` (``BlockingIOError`` under SO_RCVTIMEO) if nothing
        arrived within the socket's timeout,
        ``EOFError`` if the peer closed, ``FrameError`` for an oversized header
        or bytes past the frame.
        """
        need = self._need
        if not need and not self._got and len(self._buf) > self.keep_bytes:
            self._buf = memoryview(bytearray(_FIRST))  # drop the last one-off big buffer
        got = sock.recv_into(self._buf[self._got:need or _FIRST])
        if not got:
            raise EOFError("peer closed the connection" + (" mid-frame" if self._got else ""))
        self._got += got
        if not need:
            if self._got < _LEN.size:
                return None
            (n,) = _LEN.unpack_from(self._buf)
            if n > self.max_bytes:
                raise FrameError(f"frame of {n} bytes exceeds {self.max_bytes}")
            need = self._need = _LEN.size + n
            if self._got > need:
                raise FrameError("bytes after the frame")
            if need > len(self._buf):
                # Kept for the next frames up to keep_bytes; a bigger one is a one-off.
                grown = memoryview(bytearray(need if need > self.keep_bytes else max(need, 2 * len(self._buf))))
                grown[:self._got] = self._buf[:self._got]
                self._buf = grown
        if self._got < need:
            return None
        self._got = self._need = 0
        return self._buf[_LEN.size:need]

    def read(self, sock: socket.socket) -> memoryview:
        """Blocking read of one frame (``EOFError`` if the peer closed)."""
        while True:
            frame = self.step(sock)
            if frame is not None:
                return frame


def write_frame(sock: socket.socket, payload: bytes | Chunks) -> None:
    """Send one frame under the socket's timeout (``TimeoutError`` if the peer stalls).

    ``payload`` is bytes or the chunks of ``codec.encode_chunks``."""
    chunks: Chunks = (payload,) if isinstance(payload, bytes) else payload
    total = sum(len(c) for c in chunks)
    if total <= SMALL_FRAME:
        sock.sendall(b"".join((_LEN.pack(total), *chunks)))
        return
    sock.sendall(_LEN.pack(total))
    for chunk in chunks:
        sock.sendall(chunk)
