"""The worker process: runs verified task code for the host, under OS limits.

Why a process: some task code cannot be stopped or survived in-process - a
segfault (a deeply nested tuple hashed), one C call that never checks a clock
(``10**10**8``, regex backtracking, an ONNX ``Loop``), a memory bomb.  In a
worker the host can SIGKILL it at the deadline and the kernel enforces the
memory cap; a crash costs one call, not the container.

A worker is a fork of the zygote (``zygote.py``), which has already imported
numpy, ONNX Runtime and the sandbox and built the facades, so starting one
costs a fork plus ``_harden`` - not the imports.  It then:

* hardens itself before running anything: only its socket and ``/dev/null``
  on 0-2 stay open (``faulthandler`` off, so nothing writes to inherited
  fds), an empty environment, an empty unwritable working directory, and
  rlimits - address space (memory cap), no file writes, no core dumps, a few
  descriptors - plus the recursion limit;
* keeps a small LRU of loaded programs keyed by (task, release, digest of
  code, entry, limits and models).  The host sends a program's marshalled
  code - bytes of the code object the host already verified, never the
  bundle - its resource limits and model blobs the first time this worker
  sees it; models get sessions in the worker's own
  ``ModelHub``, and ``vm.model`` is the host's very ``VmModule``;
* runs each call as thread mode does (``TaskProgram.call`` with a
  ``CallScope`` for the time left) and replies with the result or the public
  error.

If the host dies, the zygote sees its control socket close and SIGKILLs every
worker; on Linux (and Android) a worker also asks the kernel to SIGKILL it when
the zygote dies (``PR_SET_PDEATHSIG``), so no runaway call outlives them.
Where that is not available, a backstop ``ITIMER_REAL`` armed for each call
kills the worker shortly after the call's deadline instead (two system calls
per call that the kernel's guarantee makes unnecessary).
"""

from __future__ import annotations

import faulthandler
import hashlib
import marshal
import os
import resource
import signal
import socket
import sys
from collections import OrderedDict
from functools import partial
from types import CodeType
from typing import Any, NamedTuple

from ..errors import TaskError, VmError
from ..inference.profile import DeviceProfile
from ..inference.sessions import LoadedModel, ModelHub
from ..registry import TaskView, VmModule
from ..sandbox.limits import ResourceLimits
from ..sandbox.modules import get_facades
from ..sandbox.runtime import TaskProgram
from . import codec
from .errors import WorkerCrashed
from .framing import FrameReceiver, write_frame
from .protocol import (
    REPLY_LIMITS,
    REQUEST_LIMITS,
    CallRequest,
    ProgramKey,
    decode_request,
    encode_error,
    encode_ok,
    reply_limits,
    scope_from_request,
)

# SIGALRM (default action: terminate) this long after a call's deadline, in case
# the host died and nobody is left to kill a runaway call.
BACKSTOP_S = 2.0



def preload() -> None:
    """Everything a worker needs that can be done once in the zygote."""
    get_facades()
    _libc()


def _libc() -> Any:
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True)
    except (ImportError, OSError):
        return None


_PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> bool:
    """Have the kernel SIGKILL this process when ``parent`` (the zygote) dies; False
    where ``prctl`` is unavailable.  Exits at once if the parent is already gone."""
    libc = _libc() if sys.platform.startswith("linux") else None
    prctl = getattr(libc, "prctl", None)
    if prctl is None or prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        return False
    if os.getppid() != parent:  # died between our fork and the prctl
        os._exit(0)
    return True


class _Loaded(NamedTuple):
    program: TaskProgram
    task: TaskView
    reply_caps: codec.CodecLimits


class Programs:
    """Loaded programs by key, least recently used evicted (with its models)."""

    def __init__(self, hub: ModelHub, capacity: int):
        self.hub = hub
        self.capacity = max(1, capacity)
        self._cache: OrderedDict[ProgramKey, _Loaded] = OrderedDict()

    def get(self, key: ProgramKey, load: dict[str, Any] | None) -> _Loaded:
        entry = self._cache.get(key)
        if entry is not None:
            self._cache.move_to_end(key)
            return entry
        if load is None:
            raise WorkerCrashed(f"program {key[0]!r} release {key[1]} is not loaded in this worker")
        entry = self._load(key, load)
        self._cache[key] = entry
        while len(self._cache) > self.capacity:
            self._release(self._cache.popitem(last=False)[1].task.models)
        return entry

    def _load(self, key: ProgramKey, load: dict[str, Any]) -> _Loaded:
        name, release, _ = key
        raw = load["code"]
        if hashlib.sha256(raw).hexdigest() != load["code_digest"]:
            raise WorkerCrashed("program code does not match its digest")
        code = marshal.loads(raw)
        if type(code) is not CodeType:
            raise WorkerCrashed("program is not a code object")
        models: dict[str, LoadedModel] = {}
        try:
            for model_name, (model_digest, blob) in load["models"].items():
                models[model_name] = self.hub.acquire(model_name, model_digest, blob)
        except BaseException:
            self._release(models)
            raise
        task = TaskView(name, release, models, self.hub)
        limits = ResourceLimits(**load["limits"])
        program = TaskProgram(code, name=name, release=release, entry=load["entry"],
                              vm_factory=partial(VmModule, task),
                              limits=limits)
        return _Loaded(program, task, reply_limits(limits))

    def _release(self, models: dict[str, LoadedModel]) -> None:
        for model in models.values():
            self.hub.release(model)


def serve(fd: int, parent: int | None = None) -> None:
    """The worker's whole life: returns when the host closes the connection
    (the caller then ``os._exit``s) or exits the process on a broken pipe.
    ``parent`` is the zygote's pid (None: no parent-death guard, use the backstop)."""
    backstop = parent is None or not die_with_parent(parent)
    _isolate_fds(fd)
    sock = socket.socket(fileno=fd)
    receiver = FrameReceiver(REQUEST_LIMITS.max_bytes)
    init = codec.decode(receiver.read(sock), REQUEST_LIMITS)
    hub = ModelHub(DeviceProfile(**init["profile"]))
    _harden(init)
    programs = Programs(hub, init["program_cache"])
    _send(sock, {"ready": os.getpid()})
    while True:
        try:
            frame = receiver.read(sock)
        except EOFError:
            return
        write_frame(sock, handle(programs, decode_request(frame), backstop))


def handle(programs: Programs, req: CallRequest, backstop: bool = True) -> list[bytes | memoryview]:
    """Run one request: its reply's frame chunks (errors included)."""
    if backstop:
        signal.setitimer(signal.ITIMER_REAL, req.scope[1] + BACKSTOP_S)  # remaining + backstop
    try:
        scope = scope_from_request(req.scope)
        program, _, caps = programs.get(tuple(req.program), req.load)  # type: ignore[arg-type]
        if req.op == "check":
            program.load_check(scope)
            result, printed = None, ""
        else:
            result, printed = program.call(req.inputs, scope, req.upstream)
        try:
            return encode_ok(result, printed, scope, caps)
        except (codec.CodecError, MemoryError) as exc:
            return encode_error(TaskError(f"task returned a result that cannot be sent back: {exc}",
                                          exc_type="ResultError"))
    except VmError as exc:
        return encode_error(exc)
    except Exception as exc:
        return encode_error(WorkerCrashed(f"worker failed: {type(exc).__name__}: {exc}"))
    finally:
        if backstop:
            signal.setitimer(signal.ITIMER_REAL, 0)


def _send(sock: socket.socket, reply: dict[str, Any]) -> None:
    write_frame(sock, codec.encode_chunks(reply, REPLY_LIMITS))


def _isolate_fds(keep: int) -> None:
    """Only ``keep`` and ``/dev/null`` on 0, 1 and 2 stay open."""
    if keep <= 2:
        raise RuntimeError("the worker socket must not be a standard descriptor")
    faulthandler.disable()
    null = os.open(os.devnull, os.O_RDWR)
    for std in (0, 1, 2):
        if null != std:
            os.dup2(null, std)
    top = max(resource.getrlimit(resource.RLIMIT_NOFILE)[0], keep + 1, null + 1)
    os.closerange(3, keep)
    os.closerange(keep + 1, top)


def _harden(init: dict[str, Any]) -> None:
    """Everything that can be taken away before task code runs."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.chdir(init["workdir"])
    os.environ.clear()
    sys.setrecursionlimit(init["recursion_limit"])
    for limit, value in (
        (resource.RLIMIT_CORE, 0),
        (resource.RLIMIT_FSIZE, 0),
        (resource.RLIMIT_NOFILE, init["max_open_files"]),
        (resource.RLIMIT_AS, init["memory_bytes"]),
    ):
        resource.setrlimit(limit, (value, value))

