"""Process mode: thread mode's results and errors, plus what only a process can survive."""

from __future__ import annotations

import os
import signal
import socket
import struct
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from tests.isolation.conftest import make_spec
from tests.onnx_models import linear_model, slow_loop_model
from vmcontainer import (
    ModelInputError,
    ResourceLimitExceeded,
    SandboxViolation,
    TaskCancelled,
    TaskError,
    TaskTimeout,
)
from vmcontainer.isolation import ProcessLimits, ProcessPool, WorkerCrashed, codec
from vmcontainer.isolation.framing import FrameReceiver, write_frame
from vmcontainer.isolation.pool import _Worker
from vmcontainer.isolation.protocol import ProtocolError
from vmcontainer.isolation.zygote import ZYGOTE_ENV
from vmcontainer.sandbox.limits import ResourceLimits
from vmcontainer.scheduler.scope import CallScope

SPIN = "def main(x):\n    while True:\n        pass\n"

PARITY = {
    "plain": ("""
def main(inputs):
    out = {k: v * 2 for k, v in inputs.items()}
    print("doubled", sorted(out))
    return {"out": out, "t": (1, 2.5, None, True), "b": b"\\x00"}
""", {"a": 1, "b": 2.5}),
    "numpy": ("""
import numpy as np
def main(inputs):
    x = np.asarray(inputs["x"], dtype=np.float64)
    return {"mean": float(x.mean()), "cum": np.cumsum(x), "mat": np.outer(x, x).astype(np.float32)}
""", {"x": [1.0, 2.0, 4.0]}),
    "onnx": ("""
import vm
import numpy as np
def main(inputs):
    m = vm.model("lin")
    return {"y": m.run({"x": inputs["x"]})["y"], "inputs": m.inputs, "task": vm.task}
""", {"x": np.arange(8, dtype=np.float32).reshape(2, 4)}),
}


def _same(a, b) -> None:
    assert type(a) is type(b)
    if type(a) is np.ndarray:
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    elif type(a) in (list, tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _same(x, y)
    elif type(a) is dict:
        assert a.keys() == b.keys()
        for k in a:
            _same(a[k], b[k])
    else:
        assert a == b


@pytest.mark.parametrize("case", sorted(PARITY))
def test_results_match_thread_mode(pool, container, deploy, case):
    source, inputs = PARITY[case]
    blob, _, _ = linear_model()
    name = deploy(source, models={"lin": blob})
    expected = container.invoke(name, inputs)
    result, printed = pool.call(make_spec(source, models={"lin": blob}, name=name), inputs,
                                CallScope(5))
    _same(result, expected)
    if case == "plain":
        assert printed == "doubled ['a', 'b']\n"


def test_upstream_results_reach_the_entry_point(pool):
    spec = make_spec("def main(inputs, upstream):\n    return [inputs, upstream['prev']]\n")
    assert pool.call(spec, 1, CallScope(5), {"prev": {"k": [2]}})[0] == [1, {"k": [2]}]


@pytest.mark.parametrize("source,inputs,error", [
    ("def main(x):\n    y = 1\n    raise ValueError('bad input ' + str(x))\n", 3, TaskError),
    ("import vm\ndef main(x):\n    return vm.model('other')\n", None, SandboxViolation),
    (("import vm\nimport numpy as np\ndef main(x):\n"
      "    return vm.model('lin').run({'x': np.zeros((1, 4))})\n"), None, ModelInputError),
])
def test_errors_match_thread_mode(pool, container, deploy, source, inputs, error):
    blob, _, _ = linear_model()
    name = deploy(source, models={"lin": blob})
    with pytest.raises(error) as got:
        pool.call(make_spec(source, models={"lin": blob}, name=name), inputs, CallScope(5))
    with pytest.raises(error) as want:
        container.invoke(name, inputs)
    assert str(got.value) == str(want.value)
    if error is TaskError:
        assert got.value.exc_type == want.value.exc_type == "ValueError"
        assert got.value.script_traceback == want.value.script_traceback
        assert 'File "script.py", line 3, in main' in got.value.script_traceback


def test_per_task_resource_limits_travel_with_the_program(pool):
    source = "def main(n):\n    return len('x' * n)\n"
    tight = make_spec(source, limits=ResourceLimits(max_sequence=100))
    assert pool.call(tight, 100, CallScope(5))[0] == 100
    with pytest.raises(ResourceLimitExceeded):
        pool.call(tight, 1000, CallScope(5))
    assert pool.call(make_spec(source), 1000, CallScope(5))[0] == 1000
    nest = "def main(n):\n    x = 0\n    for _ in range(n):\n        x = [x]\n    return x\n"
    deep = pool.call(make_spec(nest, limits=ResourceLimits(max_result_depth=100)), 90,
                     CallScope(5))[0]
    for _ in range(90):
        deep = deep[0]
    assert deep == 0
    with pytest.raises(TaskError, match="nested deeper"):
        pool.call(make_spec(nest), 90, CallScope(5))


def test_the_call_scopes_cpu_budget_applies_in_the_worker(pool):
    exc, took = _timed(lambda: pool.call(make_spec(SPIN), None, CallScope(5, cpu_budget=0.2)))
    assert isinstance(exc, ResourceLimitExceeded) and took < 2


def test_load_check_runs_the_module_body_in_a_worker(pool):
    pool.load_check(make_spec("X = 1\ndef main(x):\n    return X\n"), CallScope(5))
    with pytest.raises(TaskError, match="ZeroDivisionError"):
        pool.load_check(make_spec("X = 1 / 0\ndef main(x):\n    return X\n"), CallScope(5))


def _timed(fn):
    start = time.monotonic()
    try:
        fn()
    except Exception as exc:
        return exc, time.monotonic() - start
    raise AssertionError("expected an error")


def test_busy_loop_times_out_near_the_deadline_and_the_pool_recovers(pool):
    exc, took = _timed(lambda: pool.call(make_spec(SPIN), None, CallScope(0.3)))
    assert isinstance(exc, TaskTimeout) and str(exc) == "deadline of 0.300s passed"
    assert 0.29 <= took < 0.3 + 0.25
    assert pool.call(make_spec("def main(x):\n    return x + 1\n"), 1, CallScope(5))[0] == 2


def test_c_level_hang_is_killed_at_the_deadline(pool):
    spec = make_spec("def main(x):\n    return sum(range(10**13))\n")
    exc, took = _timed(lambda: pool.call(spec, None, CallScope(0.3)))
    assert isinstance(exc, TaskTimeout)
    assert 0.3 + pool.limits.kill_grace_s - 0.01 <= took < 0.3 + 0.3
    assert pool.call(make_spec("def main(x):\n    return 'ok'\n"), None, CallScope(5))[0] == "ok"


def test_endless_onnx_loop_stops_at_the_deadline(pool):
    spec = make_spec("import vm\nimport numpy as np\ndef main(x):\n"
                     "    return vm.model('loop').run({'x': np.ones((1, 256), np.float32)})\n",
                     models={"loop": slow_loop_model()})
    exc, took = _timed(lambda: pool.call(spec, None, CallScope(0.5)))
    assert isinstance(exc, TaskTimeout) and took < 0.5 + 0.3


def test_nested_tuple_segfault_is_contained(pool):
    spec = make_spec("""
def main(x):
    t = ()
    for _ in range(10**6):
        t = (t,)
    return hash(t)
""")
    with pytest.raises((WorkerCrashed, TaskError, ResourceLimitExceeded)) as info:
        pool.call(spec, None, CallScope(10))
    if isinstance(info.value, WorkerCrashed):
        assert "SIGSEGV" in str(info.value)
    assert pool.call(make_spec("def main(x):\n    return 5\n"), None, CallScope(5))[0] == 5


def test_memory_bomb_hits_the_address_space_limit(pool):
    # Broadcasting is bounded only by the worker's memory limit (sandbox/modules.py):
    # 20000 x 20000 float64 is 3.2 GB, over the pool's 1 GiB RLIMIT_AS.
    spec = make_spec("import numpy as np\ndef main(x):\n"
                     "    return float((np.ones((20000, 1)) + np.ones((1, 20000))).sum())\n")
    with pytest.raises((ResourceLimitExceeded, WorkerCrashed)):
        pool.call(spec, None, CallScope(10))
    assert pool.call(make_spec("def main(x):\n    return 6\n"), None, CallScope(5))[0] == 6


def test_cancel_stops_a_running_call_fast(pool):
    scope = CallScope(10)
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            pool.call(make_spec(SPIN), None, scope)
        except Exception as exc:
            outcome["error"], outcome["at"] = exc, time.monotonic()

    thread = threading.Thread(target=run)
    thread.start()
    time.sleep(0.3)
    cancelled_at = time.monotonic()
    scope.cancel()
    thread.join(5)
    assert isinstance(outcome["error"], TaskCancelled)
    assert outcome["at"] - cancelled_at < 0.1


def _live_worker(pool: ProcessPool) -> int:
    pool.call(make_spec("def main(x):\n    return 0\n"), None, CallScope(5))
    return pool.worker_pids()[-1]


def test_workers_are_hardened(pool):
    pid = _live_worker(pool)
    limits = Path(f"/proc/{pid}/limits").read_text()
    rows = {line[:26].strip(): line[26:].split() for line in limits.splitlines()[1:]}
    assert rows["Max address space"][:2] == [str(1 << 30)] * 2
    assert rows["Max file size"][:2] == ["0", "0"]
    assert rows["Max core file size"][:2] == ["0", "0"]
    assert rows["Max open files"][:2] == ["32", "32"]
    cwd = os.readlink(f"/proc/{pid}/cwd")
    assert os.listdir(cwd) == [] and os.stat(cwd).st_mode & 0o222 == 0
    # /proc shows the block the zygote was exec'd with (its fixed minimal environment),
    # never the host's; the worker's own os.environ is cleared on top of that.
    exec_env = set(Path(f"/proc/{pid}/environ").read_text().split("\0")) - {""}
    assert exec_env <= {f"{k}={v}" for k, v in ZYGOTE_ENV.items()}
    fds = {fd: os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
    assert {fds[s] for s in ("0", "1", "2")} == {"/dev/null"}
    others = [target for fd, target in fds.items() if fd not in ("0", "1", "2")]
    assert len(others) == 1 and others[0].startswith("socket:")
    # No thread pools (BLAS, OpenMP, ORT) until a model runs: the main thread and,
    # once a call has run, the deadline watch.
    assert len(os.listdir(f"/proc/{pid}/task")) <= 2


def test_workers_recycle_after_max_calls_and_after_failures():
    ok, bad = make_spec("def main(x):\n    return x\n"), make_spec("def main(x):\n    raise KeyError(x)\n")
    with ProcessPool(1, ProcessLimits(max_calls_per_worker=3, spare_workers=0)) as pool:
        def spawned_after(spec) -> int:
            try:
                pool.call(spec, 1, CallScope(5))
            except TaskError:
                pass
            return pool.stats()["spawned"]

        assert [spawned_after(ok) for _ in range(3)] == [1, 1, 1]  # the third was its last
        assert spawned_after(ok) == 2
        assert spawned_after(bad) == 2                             # fails, and retires it
        assert spawned_after(ok) == 3


def test_program_and_models_are_sent_once_per_worker(pool, monkeypatch):
    spec = make_spec("def main(x):\n    return x\n")
    sent = []
    real = type(spec).load_request
    monkeypatch.setattr(type(spec), "load_request", lambda self: sent.append(1) or real(self))
    for _ in range(5):
        pool.call(spec, 1, CallScope(5))
    assert 1 <= len(sent) <= 2  # at most once per worker of the pool


def test_concurrent_callers_get_their_own_results(pool):
    spec = make_spec("def main(x):\n    return [x, x * x]\n")
    errors: list[BaseException] = []

    def caller(base: int) -> None:
        try:
            for i in range(base, base + 15):
                assert pool.call(spec, i, CallScope(10))[0] == [i, i * i]
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=caller, args=(k * 100,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors


def test_a_call_to_a_worker_that_died_idle_goes_to_another(pool):
    spec = make_spec("def main(x):\n    return x\n")
    pool.call(spec, 0, CallScope(5))
    deadline = time.monotonic() + 10
    while True:  # let the spare's spawn land first: it would become the next call's worker
        with pool._cond:
            if not pool._spawning and not pool._should_spawn():
                victim = pool._idle[-1].child.pid  # the next call's worker
                break
        assert time.monotonic() < deadline
        time.sleep(0.005)
    os.kill(victim, signal.SIGKILL)
    while not _dead(victim):
        time.sleep(0.005)
    assert pool.call(spec, 7, CallScope(5))[0] == 7
    assert victim not in pool.worker_pids()


def test_workers_die_with_their_zygote_and_the_pool_recovers():
    """No orphan outlives a dead zygote (PR_SET_PDEATHSIG), and the next call gets a
    worker forked by a new zygote."""
    ok = make_spec("def main(x):\n    return x\n")
    with ProcessPool(1) as pool:
        assert pool.call(ok, 1, CallScope(5))[0] == 1
        workers = pool.worker_pids()
        assert workers
        first = pool._zygote
        first._proc.kill()
        first._proc.wait()
        deadline = time.monotonic() + 5
        while not all(_dead(pid) for pid in workers):
            assert time.monotonic() < deadline, "workers outlived their zygote"
            time.sleep(0.01)
        assert pool.call(ok, 2, CallScope(10))[0] == 2   # a new zygote forks a successor
        assert pool._zygote is not first and pool._zygote.alive


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def _dead(pid: int) -> bool:
    """Gone, or a zombie whose other threads (the deadline watch) have exited too:
    only then are its file descriptors - its end of the socket - closed."""
    state = _state(pid)
    if state == "gone":
        return True
    try:
        return state == "Z" and len(os.listdir(f"/proc/{pid}/task")) <= 1
    except OSError:
        return True


class _FakeChild:
    """Stands in for a worker whose replies the test writes itself."""

    def __init__(self) -> None:
        self.sock, self.peer = socket.socketpair()
        self.pid = -1
        self.killed = False

    def kill(self) -> None:
        self.killed = True

    def reap(self) -> None:
        self.kill()
        self.sock.close()
        self.peer.close()


_OK_HEAD = struct.Struct("<cdII")


@pytest.mark.parametrize("reply", [
    b"garbage",
    codec.encode({"ok": 1}),                                      # wrong shape
    codec.encode({"error": {"type": "TaskTimeout", "message": 5}}),
    b"K" + bytes(8),                                              # truncated ok header
    _OK_HEAD.pack(b"K", 0.0, 0, 1 << 20) + codec.encode(1),       # printed text past the frame
    _OK_HEAD.pack(b"K", float("nan"), 0, 0) + codec.encode(1),    # poisoned model accounting
    _OK_HEAD.pack(b"K", 0.0, 0, 2) + b"\xff\xfe" + codec.encode(1),  # printed text not UTF-8
    _OK_HEAD.pack(b"K", 0.0, 0, 0) + codec.encode(1) + b"N",      # trailing bytes
    _OK_HEAD.pack(b"K", 0.0, 0, 0) + b"\x80\x03" + bytes(20),     # result not a codec message
    _OK_HEAD.pack(b"J", 0.0, 0, 0) + b"[1] [2]",                  # JSON with data after it
    _OK_HEAD.pack(b"J", 0.0, 0, 0) + b"[" * 100 + b"]" * 100,     # JSON deeper than the caps
    _OK_HEAD.pack(b"J", 0.0, 0, 0) + b'["\xc3\xa9"]',              # JSON that is not ASCII
    _OK_HEAD.pack(b"J", 0.0, 0, 0) + b"[" * 100_000,              # JSON deeper than the C stack
    _OK_HEAD.pack(b"J", 0.0, 0, 0) + b"[" + b"0," * (1 << 20) + b"0]",  # JSON over its size cap
])
def test_malformed_replies_are_worker_crashed(pool, monkeypatch, reply):
    fake = _FakeChild()
    worker = _Worker(fake)  # type: ignore[arg-type]

    def acquire(scope: CallScope) -> _Worker:
        with pool._cond:
            pool._busy += 1
        return worker

    monkeypatch.setattr(pool, "_acquire", acquire)

    def answer() -> None:
        FrameReceiver(1 << 20).read(fake.peer)
        write_frame(fake.peer, reply)

    threading.Thread(target=answer).start()
    with pytest.raises(WorkerCrashed, match="malformed"):
        pool.call(make_spec("def main(x):\n    return x\n"), 1, CallScope(5))
    assert fake.killed


def test_error_replies_map_through_an_allowlist():
    from vmcontainer.isolation.protocol import decode_reply

    with pytest.raises(TaskTimeout, match="late"):
        decode_reply(codec.encode({"error": {"type": "TaskTimeout", "message": "late"}}))
    with pytest.raises(TaskError) as info:
        decode_reply(codec.encode({"error": {"type": "SystemExit", "message": "m", "exc_type": "x"}}))
    assert info.value.exc_type == "SystemExit"


def test_a_reply_is_never_unmarshalled():
    """The marshal fast path is for requests only: a worker that answers in the
    request format is refused, not decoded."""
    import marshal

    from vmcontainer.isolation.protocol import decode_reply

    with pytest.raises((codec.CodecError, ProtocolError)):
        decode_reply(b"M" + marshal.dumps({"ok": 1}))


def test_requests_round_trip_with_and_without_arrays():
    from vmcontainer.isolation.protocol import CallRequest, decode_request, encode_request

    scope = (5.0, 4.5, None, 0.01, None, None)
    plain = CallRequest("call", ("t", 1, "d"), None, {"k": (1, [2.5, "x"]), 3: b"raw", "big": 1 << 100},
                        None, scope)
    chunks = encode_request(plain)
    assert bytes(chunks[0]) == b"M"                      # the marshal fast path
    assert decode_request(b"".join(chunks)) == plain
    with_array = CallRequest("call", ("t", 1, "d"), None, {"a": np.arange(6.0).reshape(2, 3)}, None, scope)
    frame = b"".join(bytes(c) for c in encode_request(with_array))
    assert frame[:3] == codec.MAGIC                      # arrays go through the codec
    got = decode_request(frame).inputs["a"]
    assert got.dtype == np.float64 and got.shape == (2, 3) and got[1, 2] == 5.0


def _children() -> set[int]:
    me = str(os.getpid())
    out = set()
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                continue
            if stat.rsplit(")", 1)[1].split()[1] == me:
                out.add(int(pid))
    return out


def _quiesce(pool: ProcessPool) -> None:
    """Wait until the shared pool's background thread has nothing to do, so it
    opens no descriptors while another test counts them."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        with pool._cond:
            if not (pool._spawning or pool._retiring or pool._should_spawn()):
                return
        time.sleep(0.01)


def test_close_leaves_no_processes_fds_or_threads(pool):
    _quiesce(pool)
    fds_before = set(os.listdir("/proc/self/fd"))
    threads_before = set(threading.enumerate())
    children_before = _children()
    pool = ProcessPool(2)
    pids = {_live_worker(pool)}
    outcome: list[BaseException] = []

    def run_until_closed() -> None:
        try:
            pool.call(make_spec(SPIN), None, CallScope(10))
        except Exception as exc:
            outcome.append(exc)

    busy = threading.Thread(target=run_until_closed)
    busy.start()
    time.sleep(0.3)
    pids.update(pool.worker_pids())
    pool.close()
    busy.join(5)
    assert not busy.is_alive() and isinstance(outcome[0], WorkerCrashed)
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert _children() == children_before
    assert set(threading.enumerate()) == threads_before
    assert set(os.listdir("/proc/self/fd")) <= fds_before
