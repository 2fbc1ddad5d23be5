"""A pool of long-lived worker processes that runs calls with thread mode's API.

``ProcessPool.call`` blocks the calling lane thread, as ``TaskProgram.call``
does in thread mode, and returns the same ``(result, printed)`` or raises the
same public errors.  What changes is what the host can do about a call that
misbehaves: every call waits for its reply in short slices, so cancellation is
noticed within a few milliseconds; at ``deadline + kill_grace_s`` a worker that
has not answered is SIGKILLed (``TaskTimeout``) - a C call nothing in-process
can interrupt stops there; a worker that dies mid-call (segfault, memory
limit, OOM killer) or answers nonsense costs that call a ``WorkerCrashed``.

Workers are recycled after ``max_calls_per_worker`` calls and after any failed
call.  Replacements are spawned by one background thread, which keeps
``spare_workers`` idle workers warm and also serves callers waiting for a
worker, so neither a retirement nor a spawn sits on a caller's latency path
unless every worker is busy.  Idle workers are reused most-recent-first: the
worker that just ran a task most likely has its program and models loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import struct
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from functools import cached_property
from types import CodeType
from typing import TYPE_CHECKING, Any, Self

from ..bundle.sealer import code_bytes
from ..errors import ResourceLimitExceeded, TaskCancelled, TaskTimeout
from ..inference.profile import DeviceProfile
from ..sandbox.limits import DEFAULT_LIMITS as DEFAULT_RESOURCE_LIMITS
from ..sandbox.limits import ResourceLimits
from ..scheduler.scope import CallScope
from . import codec, protocol
from .errors import WorkerCrashed
from .framing import SMALL_FRAME, FrameReceiver, write_frame
from .protocol import ProgramKey
from .zygote import Child, Zygote

if TYPE_CHECKING:
    from ..bundle.verifier import VerifiedBundle

POLL_S = 0.005  # how often a waiting call looks at its cancel flag and deadline
_RETRY_SPAWN_S = 1.0
_DELIVERY_ATTEMPTS = 3  # the idle worker, the spare, a fresh one
_SPAWN_ATTEMPTS = 3  # a worker dying with its zygote mid-spawn: retried from a new zygote



@dataclass(frozen=True)
class ProcessLimits:
    """Per-worker OS limits and recycling policy."""

    memory_bytes: int = 1 << 30  # RLIMIT_AS; the zygote's imports take ~180 MB of it
    max_calls_per_worker: int = 1000
    recursion_limit: int = 1000
    spawn_timeout: float = 10.0  # also bounds the zygote's start-up (imports)
    kill_grace_s: float = 0.05
    max_open_files: int = 32
    program_cache: int = 8  # loaded programs (and their model sessions) per worker
    spare_workers: int = 1


@dataclass(frozen=True, eq=False)
class ProgramSpec:
    """What a worker needs to run one task release: verified code as marshal
    bytes (never the bundle), the release's model blobs and its resource limits."""

    name: str
    release: int
    entry: str
    code: bytes = field(repr=False)
    code_digest: str
    models: Mapping[str, tuple[str, bytes]] = field(default_factory=dict, repr=False)
    limits: ResourceLimits = DEFAULT_RESOURCE_LIMITS

    @classmethod
    def from_code(cls, code: CodeType | bytes, *, name: str, release: int, entry: str = "main",
                  models: Mapping[str, tuple[str, bytes]] | None = None,
                  limits: ResourceLimits = DEFAULT_RESOURCE_LIMITS) -> ProgramSpec:
        """``models`` maps each name the script may pass to ``vm.model`` to (digest, blob)."""
        raw = code if isinstance(code, bytes) else code_bytes(code)
        return cls(name, release, entry, raw, hashlib.sha256(raw).hexdigest(),
                   dict(models or {}), limits)

    @classmethod
    def from_verified(cls, verified: VerifiedBundle, *,
                      limits: ResourceLimits = DEFAULT_RESOURCE_LIMITS,
                      models: Mapping[str, tuple[str, bytes]] | None = None) -> ProgramSpec:
        """From what the host verified: its code object, embedded models, plus
        ``models`` resolved elsewhere (``model_refs``), if any."""
        manifest = verified.manifest
        embedded = {n: (manifest["models"][n], blob) for n, blob in verified.models.items()}
        return cls.from_code(verified.code, name=verified.name, release=verified.release,
                             entry=manifest["entry"], models={**embedded, **(models or {})},
                             limits=limits)

    @cached_property
    def key(self) -> ProgramKey:
        """(name, release, digest of everything a worker builds the program from):
        a changed entry, model or limit is a different program in the worker."""
        summary = json.dumps([self.code_digest, self.entry, asdict(self.limits),
                              sorted((n, d) for n, (d, _) in self.models.items())],
                             sort_keys=True, default=str)
        return (self.name, self.release, hashlib.sha256(summary.encode()).hexdigest())

    @cached_property
    def reply_caps(self) -> codec.CodecLimits:
        return protocol.reply_limits(self.limits)

    def load_request(self) -> dict[str, Any]:
        return {"entry": self.entry, "code": self.code, "code_digest": self.code_digest,
                "limits": asdict(self.limits),
                "models": {n: (digest, blob) for n, (digest, blob) in self.models.items()}}


class _Worker:
    """The host's record of one worker: its process and which programs it holds."""

    __slots__ = ("calls", "child", "programs", "receiver", "slice")

    def __init__(self, child: Child):
        self.child = child
        self.calls = 0
        self.programs: OrderedDict[ProgramKey, None] = OrderedDict()
        self.receiver = FrameReceiver(protocol.REPLY_LIMITS.max_bytes)
        # A blocking socket whose reads give up after the poll slice (SO_RCVTIMEO): one
        # system call per read, where settimeout() polls first and reads second.
        child.sock.settimeout(None)
        self.slice = 0.0
        self.read_slice(POLL_S)

    def read_slice(self, seconds: float) -> None:
        if seconds != self.slice:
            _kernel_timeout(self.child.sock, socket.SO_RCVTIMEO, seconds)
            self.slice = seconds

    def needs_load(self, key: ProgramKey, capacity: int) -> bool:
        """Mirror of the worker's LRU (``worker.Programs``): True if the program
        must be sent.  Any failed call retires the worker, so the two never drift."""
        if key in self.programs:
            self.programs.move_to_end(key)
            return False
        self.programs[key] = None
        while len(self.programs) > max(1, capacity):
            self.programs.popitem(last=False)
        return True


class ProcessPool:
    """Worker processes for up to ``size`` concurrent calls (one per lane thread)."""

    def __init__(self, size: int, limits: ProcessLimits | None = None,
                 profile: DeviceProfile | None = None):
        if size < 1:
            raise ValueError("a process pool needs at least one slot")
        self.size = size
        self.limits = limits = limits or ProcessLimits()
        self._workdir = tempfile.mkdtemp(prefix="vm-worker-")
        os.chmod(self._workdir, 0o500)  # empty and not writable: the workers' cwd
        self._init = codec.encode(protocol.init_request(
            workdir=self._workdir, memory_bytes=limits.memory_bytes,
            max_open_files=limits.max_open_files, recursion_limit=limits.recursion_limit,
            program_cache=limits.program_cache, profile=profile or DeviceProfile(),
        ), protocol.REQUEST_LIMITS)
        self._cond = threading.Condition(threading.Lock())  # never re-entered: a plain lock is cheaper
        self._idle: list[_Worker] = []
        self._live: set[_Worker] = set()
        self._retiring: list[_Worker] = []
        self._busy = self._spawning = self._waiting = 0
        self._spawn_error: str | None = None
        self._closed = False
        self._zygote: Zygote | None = None
        self.spawned = 0
        self.last_spawn_s: float | None = None
        self._thread = threading.Thread(target=self._maintain, name="vm-process-pool", daemon=True)
        self._thread.start()

    # -- calls ------------------------------------------------------------------------

    def call(self, spec: ProgramSpec, data: Any, scope: CallScope,
             upstream: dict[str, Any] | None = None) -> tuple[Any, str]:
        """Run ``spec``'s entry point on ``data`` in a worker: (result, printed)."""
        return self._run(spec, scope, "call", data, upstream)

    def load_check(self, spec: ProgramSpec, scope: CallScope) -> None:
        """Execute the module body once in a worker (install-time check, as
        ``TaskProgram.load_check``; also loads the models there)."""
        self._run(spec, scope, "check", None, None)

    def _run(self, spec: ProgramSpec, scope: CallScope, op: str, data: Any,
             upstream: dict[str, Any] | None) -> tuple[Any, str]:
        _raise_if_over(scope)
        for attempt in range(_DELIVERY_ATTEMPTS):
            worker = self._acquire(scope)
            ok = False
            try:
                reply = self._exchange(worker, spec, scope, op, data, upstream)
                ok = True
                return reply
            except _NotDelivered:
                # An idle worker died (OOM killer, external kill, its zygote gone): the
                # call never reached it, so another worker - the spare, then a fresh
                # spawn - may take it.
                if attempt == _DELIVERY_ATTEMPTS - 1:
                    raise WorkerCrashed(f"no live worker took the call to {spec.name!r}") from None
            finally:
                self._release(worker, ok)
        raise AssertionError("unreachable")

    def _exchange(self, worker: _Worker, spec: ProgramSpec, scope: CallScope, op: str, data: Any,
                  upstream: dict[str, Any] | None) -> tuple[Any, str]:
        child = worker.child
        first_time = worker.needs_load(spec.key, self.limits.program_cache)
        load = spec.load_request() if first_time else None
        try:
            payload = protocol.encode_request(protocol.CallRequest(
                op, spec.key, load, data, upstream, protocol.scope_request(scope)))
        except codec.CodecError as exc:
            raise ResourceLimitExceeded(f"call cannot be sent to a worker: {exc}") from None
        kill_at = scope.deadline + self.limits.kill_grace_s
        try:
            self._send(child, payload, kill_at)
            frame = self._await_reply(worker, scope, kill_at, spec.reply_caps.max_bytes)
            reply = protocol.decode_reply(frame, spec.limits, spec.reply_caps)
        except BlockingIOError:  # the worker stopped reading: treat as hung
            child.kill()
            raise TaskTimeout(f"deadline of {scope.timeout:.3f}s passed") from None
        except (codec.CodecError, protocol.ProtocolError) as exc:
            child.kill()
            raise WorkerCrashed(f"worker for {spec.name!r} sent a malformed reply: {exc}") from None
        except (EOFError, OSError):
            how = _describe(child.reap())
            raise WorkerCrashed(f"worker for {spec.name!r} died ({how})") from None
        scope.model_time += reply.model_time
        scope.model_runs += reply.model_runs
        return reply.result, reply.printed

    @staticmethod
    def _send(child: Child, payload: list[bytes | memoryview], kill_at: float) -> None:
        """A small request fits the socket buffer, which is empty between calls, so it
        cannot block; a big one may wait for the worker to read it, until the kill time."""
        big = sum(len(c) for c in payload) > SMALL_FRAME
        if big:
            _kernel_timeout(child.sock, socket.SO_SNDTIMEO, max(kill_at - time.monotonic(), 0.001))
        try:
            write_frame(child.sock, payload)
        except (BrokenPipeError, ConnectionResetError):
            child.reap()
            raise _NotDelivered from None
        finally:
            if big:
                _kernel_timeout(child.sock, socket.SO_SNDTIMEO, 0.0)

    def _await_reply(self, worker: _Worker, scope: CallScope, kill_at: float,
                     max_bytes: int) -> memoryview:
        child, receiver = worker.child, worker.receiver
        receiver.reset()
        receiver.max_bytes = max_bytes
        while True:
            if scope.cancelled:
                child.kill()
                raise TaskCancelled("call cancelled")
            left = kill_at - time.monotonic()
            if left <= 0:
                child.kill()
                raise TaskTimeout(f"deadline of {scope.timeout:.3f}s passed")
            worker.read_slice(POLL_S if left > POLL_S else left)
            try:
                frame = receiver.step(child.sock)
            except BlockingIOError:  # the slice passed with nothing to read
                continue
            if frame is not None:
                return frame

    # -- handing out workers --------------------------------------------------------------

    def has_idle_worker(self) -> bool:
        """A worker is free and no caller is waiting for one (a hint: read unlocked)."""
        return bool(self._idle) and not self._waiting

    def _acquire(self, scope: CallScope) -> _Worker:
        with self._cond:
            while True:
                if self._closed:
                    raise WorkerCrashed("the process pool is closed")
                if self._idle:
                    worker = self._idle.pop()
                    self._busy += 1
                    if self._should_spawn():
                        self._cond.notify_all()
                    return worker
                if self._spawn_error is not None and not self._spawning:
                    raise WorkerCrashed(f"cannot start a worker process: {self._spawn_error}")
                _raise_if_over(scope)
                self._waiting += 1
                self._cond.notify_all()
                try:
                    self._cond.wait(POLL_S)
                finally:
                    self._waiting -= 1

    def _release(self, worker: _Worker, ok: bool) -> None:
        worker.calls += 1
        with self._cond:
            self._busy -= 1
            keep = ok and not self._closed and worker.calls < self.limits.max_calls_per_worker
            if keep:
                self._idle.append(worker)
            else:
                self._live.discard(worker)
                self._retiring.append(worker)
            if not keep or self._waiting or self._should_spawn():
                self._cond.notify_all()  # a steady stream of calls wakes no one
            closed = self._closed
        if closed:
            self._dispose_retiring()

    def _should_spawn(self) -> bool:
        """Keep ``spare_workers`` idle beyond the callers waiting, within capacity."""
        want = self._waiting + self.limits.spare_workers
        capacity = self.size + self.limits.spare_workers
        return (not self._closed and self._spawn_error is None
                and len(self._idle) + self._spawning < want
                and len(self._live) + self._spawning < capacity)

    # -- the maintenance thread: spawning and reaping off the callers' path -----------------

    def _maintain(self) -> None:
        while True:
            with self._cond:
                while not (self._closed or self._retiring or self._should_spawn()):
                    self._cond.wait()
                if self._closed:
                    return
                spawn = self._should_spawn()
                if spawn:
                    self._spawning += 1
            self._dispose_retiring()
            if spawn:
                self._spawn_one()

    def _spawn_one(self) -> None:
        try:
            worker: _Worker | None = self._start_worker()
            error = None
        except Exception as exc:
            worker, error = None, f"{type(exc).__name__}: {exc}"
        with self._cond:
            self._spawning -= 1
            self._spawn_error = error
            if worker is not None:
                if self._closed:
                    self._retiring.append(worker)
                else:
                    self._idle.append(worker)
                    self._live.add(worker)
            self._cond.notify_all()
            if error is not None and not self._closed:
                self._cond.wait(_RETRY_SPAWN_S)  # back off; callers fail fast meanwhile
                self._spawn_error = None
        self._dispose_retiring()

    def _start_worker(self) -> _Worker:
        start = time.perf_counter()
        for attempt in range(_SPAWN_ATTEMPTS):
            try:
                child = self._fork_ready()
                break
            except (WorkerCrashed, EOFError, OSError):
                # The zygote may have died during the fork or the handshake, taking its
                # new worker with it (PR_SET_PDEATHSIG); its death may not be visible yet,
                # and a fork from it then marks it broken: retry, the last time from a
                # new zygote.
                if attempt == _SPAWN_ATTEMPTS - 1:
                    raise
        self.spawned += 1
        self.last_spawn_s = time.perf_counter() - start
        return _Worker(child)

    def _fork_ready(self) -> Child:
        """Fork a worker (starting a zygote if there is no live one) and wait for it
        to report ready."""
        timeout = self.limits.spawn_timeout
        if self._zygote is None or not self._zygote.alive:
            if self._zygote is not None:
                self._zygote.close()
            self._zygote = Zygote(timeout)
        child = self._zygote.fork(timeout)
        try:
            child.sock.settimeout(timeout)
            write_frame(child.sock, self._init)
            ready = codec.decode(FrameReceiver(1024).read(child.sock), protocol.REPLY_LIMITS)
            if ready != {"ready": child.pid}:
                raise WorkerCrashed(f"unexpected start-up reply {ready!r:.100}")
        except BaseException:
            child.reap()
            raise
        return child

    def _dispose_retiring(self) -> None:
        with self._cond:
            retiring, self._retiring = self._retiring, []
        for worker in retiring:
            worker.child.reap()

    # -- introspection and shutdown ----------------------------------------------------------

    def worker_pids(self) -> list[int]:
        """Pids of the live workers (for diagnostics and tests)."""
        with self._cond:
            return sorted(w.child.pid for w in self._live)

    def stats(self) -> dict[str, Any]:
        with self._cond:
            return {"workers": len(self._live), "idle": len(self._idle), "busy": self._busy,
                    "spawned": self.spawned, "last_spawn_ms": None if self.last_spawn_s is None
                    else round(self.last_spawn_s * 1000, 2)}

    def close(self) -> None:
        """Kill every worker and the zygote; calls still running fail with ``WorkerCrashed``."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            busy = [w for w in self._live if w not in self._idle]
            self._retiring.extend(self._idle)
            self._idle.clear()
            self._live.clear()
            self._cond.notify_all()
        self._thread.join()
        for worker in busy:
            worker.child.kill()  # their lane threads see EOF, then dispose of them
        self._dispose_retiring()
        if self._zygote is not None:
            self._zygote.close()  # reaps whatever is left
        os.rmdir(self._workdir)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _NotDelivered(Exception):
    """The worker was dead before the request reached it."""


_TIMEVAL = struct.Struct("@ll")


def _kernel_timeout(sock: socket.socket, option: int, seconds: float) -> None:
    """SO_RCVTIMEO / SO_SNDTIMEO on a blocking socket (0: wait forever); a read or
    write that times out raises ``BlockingIOError``."""
    whole = int(seconds)
    micros = int((seconds - whole) * 1e6)
    if seconds > 0 and not whole and not micros:
        micros = 1  # a zero timeval would mean "forever"
    sock.setsockopt(socket.SOL_SOCKET, option, _TIMEVAL.pack(whole, micros))


def _raise_if_over(scope: CallScope) -> None:
    """Thread mode's checks and messages (``CallScope.check``) for a call not yet sent."""
    if scope.cancelled:
        raise TaskCancelled("call cancelled")
    if time.monotonic() > scope.deadline:
        raise TaskTimeout(f"deadline of {scope.timeout:.3f}s passed")


def _describe(status: int | None) -> str:
    if status is None:
        return "exit status unknown"
    code = os.waitstatus_to_exitcode(status)
    if code >= 0:
        return f"exit code {code}"
    name = signal.Signals(-code).name
    return f"{name}, out of memory?" if name == "SIGKILL" else name
