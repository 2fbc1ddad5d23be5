"""Length-prefixed frames over a stream socket, readable under a deadline.

Each frame is a 4-byte big-endian length and that many bytes (the layout of
``multiprocessing.Connection.send_bytes``, without ever touching its pickling
``send``/``recv``).  The host cannot use a blocking ``recv_bytes``: a worker
that sends half a frame and stops would hold the calling lane thread past its
deadline.  ``FrameReceiver`` is incremental instead - one ``recv`` per
``step`` under the socket's timeout - so the caller can look at its deadline
and cancel flag between steps.  The declared length is checked against the cap
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
_SMALL = 64 * 1024

Chunks = Sequence[bytes | memoryview]


class FrameError(CodecError):
    """A frame header declares more bytes than the receiver accepts."""


class FrameReceiver:
    """Assembles frames from as many ``recv`` calls as they take, into a reused buffer."""

    __slots__ = ("_body", "_buf", "_got", "_head", "keep_bytes", "max_bytes")

    def __init__(self, max_bytes: int, keep_bytes: int = 16 << 20):
        self.max_bytes = max_bytes
        self.keep_bytes = keep_bytes
        self._buf = bytearray()
        self._head = bytearray()
        self._body: memoryview | None = None
        self._got = 0

    def reset(self) -> None:
        """Forget a partly received frame."""
        self._head.clear()
        self._body = None
        self._got = 0

    def step(self, sock: socket.socket) -> memoryview | None:
        """One ``recv``: the complete frame (valid until the next ``step``), or None.

        Raises ``TimeoutError`` if nothing arrived within the socket's timeout,
        ``EOFError`` if the peer closed, ``FrameError`` for an oversized header.
        """
        if self._body is None:
            chunk = sock.recv(_LEN.size - len(self._head))
            if not chunk:
                raise EOFError("peer closed the connection")
            self._head += chunk
            if len(self._head) < _LEN.size:
                return None
            (n,) = _LEN.unpack(self._head)
            if n > self.max_bytes:
                raise FrameError(f"frame of {n} bytes exceeds {self.max_bytes}")
            if n > len(self._buf):
                if n > self.keep_bytes:
                    self._body = memoryview(bytearray(n))  # one-off: not kept afterwards
                else:
                    self._buf = bytearray(max(n, 2 * len(self._buf)))
            if self._body is None:
                self._body = memoryview(self._buf)[:n]
            if n == 0:
                return self._finish()
        got = sock.recv_into(self._body[self._got:])
        if not got:
            raise EOFError("peer closed the connection mid-frame")
        self._got += got
        return self._finish() if self._got == len(self._body) else None

    def read(self, sock: socket.socket) -> memoryview:
        """Blocking read of one frame (``EOFError`` if the peer closed)."""
        while True:
            frame = self.step(sock)
            if frame is not None:
                return frame

    def _finish(self) -> memoryview:
        body = self._body
        assert body is not None
        self.reset()
        return body


def write_frame(sock: socket.socket, payload: bytes | Chunks) -> None:
    """Send one frame under the socket's timeout (``TimeoutError`` if the peer stalls).

    ``payload`` is bytes or the chunks of ``codec.encode_chunks``."""
    chunks: Chunks = (payload,) if isinstance(payload, bytes) else payload
    total = sum(len(c) for c in chunks)
    if total <= _SMALL:
        sock.sendall(b"".join((_LEN.pack(total), *chunks)))
        return
    sock.sendall(_LEN.pack(total))
    for chunk in chunks:
        sock.sendall(chunk)
