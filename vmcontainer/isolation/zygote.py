"""The zygote: one pre-imported interpreter that forks worker processes on request.

Why not ``multiprocessing``'s forkserver: it pickles a ``Process`` object into
every child, re-runs the host application's ``__main__`` file in each child,
listens on a filesystem socket any same-user process may connect to (3.11 has
no authentication) and inherits the host's environment.  A zygote started
here with ``python -I``, a minimal environment (ONNX Runtime telemetry and
BLAS/OpenMP thread pools off, so it stays single-threaded and safe to fork) and
a private socketpair does the same job with no pickle anywhere; a spawn is a
fork of a process that already imported numpy, ONNX Runtime and the sandbox.

Control protocol (fixed 9-byte requests, strictly one at a time under the
host's lock, each answered with one big-endian i64)::

    b"F" + 8 zero bytes, one fd attached (SCM_RIGHTS)  -> pid of a worker serving that socket
    b"W" + pid                                         -> SIGKILL and reap it: its wait status

The zygote reaps a worker only when asked, so a worker's pid cannot be
recycled while the host may still signal it.  When the host closes the control
socket (or dies), the zygote kills and reaps every worker and exits.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
from typing import Any

from .errors import WorkerCrashed

_I64 = struct.Struct("!q")
_REQUEST = 9
_BOOT = (
    "import sys, json; sys.path[:] = json.loads(sys.argv[1]); "
    f"from {__name__} import main; main(int(sys.argv[2]))"
)
ZYGOTE_ENV = {
    "ORT_DISABLE_TELEMETRY": "1",  # else ORT starts a thread and opens a SQLite file in ~/.cache
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    # glibc: serve allocations up to 32 MB from the heap and keep up to 64 MB of freed
    # heap for reuse.  Every call copies its data in and out; without this, each
    # large copy lands in fresh pages and page faults cost more than the copy
    # (800 KB round trip: 2.3 ms -> 0.85 ms here).  Bounded by RLIMIT_AS; other
    # libcs ignore these variables.
    "MALLOC_MMAP_THRESHOLD_": str(32 << 20),
    "MALLOC_TRIM_THRESHOLD_": str(64 << 20),
}


# -- the zygote process ------------------------------------------------------------


def main(ctl_fd: int) -> None:
    """Entry point of the zygote process."""
    ctl = socket.socket(fileno=ctl_fd)
    try:
        from . import worker

        worker.preload()
    except BaseException as exc:
        ctl.sendall(b"E" + f"{type(exc).__name__}: {exc}".encode()[:1000])
        return
    ctl.sendall(b"R")
    children: set[int] = set()
    try:
        while True:
            request, fds = _recv_request(ctl)
            if request is None:
                break
            op, arg = request[:1], _I64.unpack(request[1:])[0]
            if op == b"F" and len(fds) == 1:
                reply = _fork(ctl, fds[0], worker.serve)
                os.close(fds[0])
                if reply > 0:
                    children.add(reply)
            elif op == b"W" and arg in children:
                children.discard(arg)
                reply = _kill_and_reap(arg)
            else:
                for fd in fds:
                    os.close(fd)
                reply = -1
            ctl.sendall(_I64.pack(reply))
    finally:
        for pid in children:
            _kill_and_reap(pid)


def _recv_request(ctl: socket.socket) -> tuple[bytes | None, list[int]]:
    data, fds, _, _ = socket.recv_fds(ctl, _REQUEST, 1)
    while data and len(data) < _REQUEST:
        more = ctl.recv(_REQUEST - len(data))
        if not more:
            break
        data += more
    if len(data) < _REQUEST:
        for fd in fds:
            os.close(fd)
        return None, []
    return data, fds


def _fork(ctl: socket.socket, fd: int, serve: Any) -> int:
    parent = os.getpid()
    try:
        pid = os.fork()
    except OSError:
        return -1
    if pid:
        return pid
    code = 0
    try:
        ctl.close()
        serve(fd, parent)
    except BaseException:
        code = 70
    finally:
        os._exit(code)


def _kill_and_reap(pid: int) -> int:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        return os.waitpid(pid, 0)[1]
    except ChildProcessError:
        return -1


# -- the host's handle ---------------------------------------------------------------


class Child:
    """A forked worker as the host sees it: pid, socket, and a safe way to kill it.

    The kill goes through a pidfd when the platform has one (Linux 5.3+), which
    names this process and no other even if the zygote is gone and the pid was
    recycled; otherwise through the pid, which the zygote keeps reserved.
    """

    __slots__ = ("_lock", "_pidfd", "_status", "_zygote", "pid", "sock")

    def __init__(self, pid: int, sock: socket.socket, zygote: Zygote):
        self.pid = pid
        self.sock = sock
        self._zygote = zygote
        self._status: int | None = None
        self._lock = threading.Lock()
        try:
            self._pidfd: int | None = os.pidfd_open(pid)
        except (AttributeError, OSError):
            self._pidfd = None

    def kill(self) -> None:
        with self._lock:
            try:
                if self._pidfd is not None:
                    signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
                elif self._status is None:
                    os.kill(self.pid, signal.SIGKILL)
            except (ProcessLookupError, OSError):
                pass

    def reap(self) -> int | None:
        """Kill, reap through the zygote and release everything; the wait status
        if known.  Idempotent."""
        self.kill()
        with self._lock:
            if self._status is None:
                self._status = self._zygote.reap(self.pid)
                self.sock.close()
                if self._pidfd is not None:
                    os.close(self._pidfd)
                    self._pidfd = None
            return self._status if self._status >= 0 else None


class Zygote:
    """Starts the zygote process and talks to it; thread-safe."""

    def __init__(self, start_timeout: float):
        ours, theirs = socket.socketpair()
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-I", "-c", _BOOT, json.dumps(_host_path()), str(theirs.fileno())],
                pass_fds=(theirs.fileno(),), env=ZYGOTE_ENV, start_new_session=True,
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self._ctl = ours
        self._lock = threading.Lock()
        self._broken = False
        try:
            ours.settimeout(start_timeout)
            status = ours.recv(1001)
        except OSError as exc:
            status = f"E{type(exc).__name__}".encode()
        if status != b"R":
            self.close()
            why = status[1:].decode(errors="replace")
            raise WorkerCrashed(f"the worker zygote did not start: {why}")

    @property
    def alive(self) -> bool:
        return not self._broken and self._proc.poll() is None

    def fork(self, timeout: float) -> Child:
        """A new worker serving one end of a fresh socketpair; the host keeps the other."""
        ours, theirs = socket.socketpair()
        try:
            pid = self._request(b"F", 0, timeout, fd=theirs.fileno())
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        if pid <= 0:
            ours.close()
            raise WorkerCrashed("the worker zygote could not fork")
        return Child(pid, ours, self)

    def reap(self, pid: int) -> int:
        """SIGKILL and reap ``pid``; its wait status, or -1 if unknown."""
        try:
            return self._request(b"W", pid, 5.0)
        except WorkerCrashed:
            return -1

    def close(self) -> None:
        """Closing the control socket makes the zygote kill and reap its workers and exit."""
        self._broken = True
        self._ctl.close()
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()

    def _request(self, op: bytes, arg: int, timeout: float, fd: int | None = None) -> int:
        with self._lock:
            if self._broken:
                raise WorkerCrashed("the worker zygote is gone")
            try:
                self._ctl.settimeout(timeout)
                message = op + _I64.pack(arg)
                if fd is None:
                    self._ctl.sendall(message)
                else:
                    socket.send_fds(self._ctl, [message], [fd])
                reply = b""
                while len(reply) < _I64.size:
                    chunk = self._ctl.recv(_I64.size - len(reply))
                    if not chunk:
                        raise EOFError
                    reply += chunk
            except (OSError, EOFError) as exc:
                self._broken = True  # out of step or dead: never reuse this channel
                raise WorkerCrashed(f"the worker zygote failed: {type(exc).__name__}") from None
            return _I64.unpack(reply)[0]


def _host_path() -> list[str]:
    return [os.path.abspath(p) for p in sys.path]
