"""Length-prefixed frames over a stream socket, readable under a deadline.

Each frame is a 4-byte big-endian length and that many bytes (the layout of
``multiprocessing.Connection.send_bytes``, without ever touching its pickling
``send``/``recv``).  The host cannot use a blocking ``recv_bytes``: a worker
that sends half a frame and stops would hold the calling lane thread past its
deadline.  ``FrameReceiver`` is incremental instead - one ``recv`` per
``step`` under the socket's timeout - so the caller can look at its deadline
and cancel flag between steps.  The declared length is checked against the cap
before the body buffer is allocated.  The worker reads with the same class on a
blocking socket.
"""

from __future__ import annotations

import socket
import struct

from .codec import CodecError

_LEN = struct.Struct("!I")
_SMALL = 64 * 1024


class FrameError(CodecError):
    """A frame header declares more bytes than the receiver accepts."""


class FrameReceiver:
    """Assembles one frame from as many ``recv`` calls as it takes."""

    __slots__ = ("max_bytes", "_head", "_body", "_got")

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._head = bytearray()
        self._body: bytearray | None = None
        self._got = 0

    def step(self, sock: socket.socket) -> bytearray | None:
        """One ``recv``: the complete frame, or None if more is needed.

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
            self._body = bytearray(n)
            if n == 0:
                return self._finish()
        view = memoryview(self._body)[self._got:]
        got = sock.recv_into(view)
        view.release()
        if not got:
            raise EOFError("peer closed the connection mid-frame")
        self._got += got
        return self._finish() if self._got == len(self._body) else None

    def _finish(self) -> bytearray:
        body = self._body
        assert body is not None
        self._head.clear()
        self._body = None
        self._got = 0
        return body


def read_frame(sock: socket.socket, max_bytes: int) -> bytearray:
    """Blocking read of one frame (``EOFError`` if the peer closed)."""
    receiver = FrameReceiver(max_bytes)
    while True:
        frame = receiver.step(sock)
        if frame is not None:
            return frame


def write_frame(sock: socket.socket, payload: bytes) -> None:
    """Send one frame under the socket's timeout (``TimeoutError`` if the peer stalls)."""
    if len(payload) <= _SMALL:
        sock.sendall(_LEN.pack(len(payload)) + payload)
    else:
        sock.sendall(_LEN.pack(len(payload)))
        sock.sendall(payload)
