"""Lanes, deadlines, cancellation, circuit breaker, task graphs, async, warm-up, metrics."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time

import numpy as np
import pytest

from tests.onnx_models import slow_loop_model
from vmcontainer import (
    CircuitOpen,
    QueueFull,
    TaskCancelled,
    TaskError,
    TaskGraphError,
    TaskTimeout,
    UpstreamFailed,
)
from vmcontainer.testing import build_test_bundle, test_container

SPIN = "def main(i):\n    while True:\n        pass\n"
ECHO = "import vm\ndef main(i):\n    return [vm.task, i]\n"


@pytest.fixture
def box():
    with test_container(workers=1, max_queue=4, breaker_threshold=3, breaker_cooldown=0.3) as c:
        yield c


def install(c, source, name, **kw):
    return c.install(build_test_bundle(source, name=name, **kw))


def test_manifest_lane_and_caller_override(box):
    info = install(box, ECHO, "echo")
    assert info.lane == "regular"
    assert box.invoke("echo", 1) == ["echo", 1]
    assert box.invoke("echo", 2, lane="low") == ["echo", 2]
    assert box.metrics()["lanes"]["low"]["calls"] == 1
    with pytest.raises(ValueError, match="unknown lane"):
        box.submit("echo", 1, lane="turbo")


def test_bounded_queue_fails_fast(box):
    install(box, SPIN, "spin", timeout=0.5)
    futures = [box.submit("spin", None)]
    time.sleep(0.05)  # the single regular worker is now busy
    futures += [box.submit("spin", None) for _ in range(4)]
    with pytest.raises(QueueFull):
        box.submit("spin", None)
    assert box.metrics()["tasks"]["spin"]["rejected"] == {"QueueFull": 1}
    for f in futures:
        with pytest.raises(TaskTimeout):
            f.result()


def test_deadline_is_the_smallest_of_caller_manifest_and_container(box):
    install(box, SPIN, "short", timeout=0.1)
    start = time.monotonic()
    with pytest.raises(TaskTimeout):
        box.invoke("short", None, timeout=5.0)  # the caller cannot extend the manifest's 0.1 s
    assert time.monotonic() - start < 1.0


def test_cancel_before_start_and_while_running(box):
    install(box, SPIN, "spin", timeout=5)
    running = box.submit("spin", None)
    queued = box.submit("spin", None)
    time.sleep(0.05)
    assert queued.cancel() and queued.cancelled()
    start = time.monotonic()
    assert running.cancel()
    with pytest.raises(TaskCancelled):
        running.result(timeout=2)
    assert time.monotonic() - start < 0.5
    assert isinstance(TaskCancelled("x"), concurrent.futures.CancelledError)
    # the single regular worker is free again: the next call runs (and times out normally)
    with pytest.raises(TaskTimeout):
        box.invoke("spin", None, timeout=0.05)


def test_container_cancel_by_call_id_stops_inference(box):
    name = "slowmodel"
    install(box, "import vm\nimport numpy as np\ndef main(i):\n"
                 "    return vm.model('slow').run({'x': np.ones((1, 256), dtype=np.float32)})\n",
            name, timeout=10, models={"slow": slow_loop_model()})
    fut = box.submit(name, None)
    time.sleep(0.2)
    start = time.monotonic()
    assert box.cancel(fut.call_id)
    with pytest.raises(TaskCancelled):
        fut.result(timeout=5)
    assert time.monotonic() - start < 1.0
    assert not box.cancel(123456789)


def test_circuit_breaker_opens_probes_and_closes(box):
    flaky = "def main(i):\n    if i:\n        raise ValueError('bad')\n    return 'ok'\n"
    install(box, flaky, "flaky")
    for _ in range(3):
        with pytest.raises(TaskError):
            box.invoke("flaky", 1)
    with pytest.raises(CircuitOpen):
        box.invoke("flaky", 0)
    assert box.metrics()["tasks"]["flaky"]["breaker"]["state"] == "open"
    time.sleep(0.35)
    with pytest.raises(TaskError):  # half-open probe fails -> open again
        box.invoke("flaky", 1)
    with pytest.raises(CircuitOpen):
        box.invoke("flaky", 0)
    time.sleep(0.35)
    assert box.invoke("flaky", 0) == "ok"  # probe succeeds -> closed
    assert box.invoke("flaky", 0) == "ok"
    assert box.metrics()["tasks"]["flaky"]["breaker"]["state"] == "closed"


def test_breaker_reset_by_new_release_and_by_hand(box):
    install(box, "def main(i):\n    raise ValueError()\n", "bad", release=1)
    for _ in range(3):
        with pytest.raises(TaskError):
            box.invoke("bad")
    with pytest.raises(CircuitOpen):
        box.invoke("bad")
    box.reset_breaker("bad")
    with pytest.raises(TaskError):
        box.invoke("bad")
    install(box, "def main(i):\n    return 'fixed'\n", "bad", release=2)
    assert box.invoke("bad") == "fixed"


def test_timeouts_trip_the_breaker_but_cancellations_do_not(box):
    install(box, SPIN, "spin", timeout=0.05)
    for _ in range(3):
        with pytest.raises(TaskTimeout):
            box.invoke("spin")
    with pytest.raises(CircuitOpen):
        box.invoke("spin")


def test_task_graph_passes_results_and_names_the_failing_link(box):
    install(box, "def main(i):\n    return {'n': i * 2}\n", "double")
    install(box, "def main(i):\n    return {'n': i + 1}\n", "inc")
    install(box, "def main(i, upstream):\n    return upstream['double']['n'] + upstream['inc']['n']\n",
            "combine", requires=["double", "inc"])
    assert box.invoke("combine", 10) == 20 + 11
    install(box, "def main(i):\n    raise KeyError('no feature')\n", "broken")
    install(box, "def main(i, upstream):\n    return 1\n", "needs_broken", requires=["double", "broken"])
    with pytest.raises(UpstreamFailed) as info:
        box.invoke("needs_broken", 1)
    assert info.value.task == "broken"
    assert "broken" in str(info.value)


def test_task_graph_nested_and_then(box):
    install(box, "def main(i):\n    return i + 1\n", "a")
    install(box, "def main(i, up):\n    return up['a'] * 10\n", "b", requires=["a"])
    install(box, "def main(i, up):\n    return up['b'] + 1\n", "c", requires=["b"])
    assert box.invoke("c", 1) == 21
    install(box, "import vm\ndef main(i):\n    return i\n", "sink")
    install(box, "def main(i):\n    return {'v': i}\n", "source", then=["sink"])
    assert box.invoke("source", 5) == {"v": 5}
    deadline = time.monotonic() + 2
    while box.metrics()["tasks"].get("sink", {}).get("calls", 0) < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert box.metrics()["tasks"]["sink"]["successes"] == 1


def test_graph_refused_at_install_when_missing_or_cyclic(box):
    with pytest.raises(TaskGraphError, match="not installed"):
        install(box, "def main(i, u):\n    return 1\n", "orphan", requires=["nowhere"])
    install(box, "def main(i):\n    return 1\n", "x", release=1)
    install(box, "def main(i, u):\n    return 1\n", "y", requires=["x"])
    with pytest.raises(TaskGraphError, match="cycle"):
        install(box, "def main(i, u):\n    return 1\n", "x", release=2, requires=["y"])
    with pytest.raises(TaskGraphError, match="link to it"):
        box.uninstall("x")
    assert box.invoke("y", 0) == 1  # the refused install changed nothing


def test_ainvoke_and_done_callbacks(box):
    install(box, ECHO, "echo")

    async def go():
        return await asyncio.gather(*(box.ainvoke("echo", i) for i in range(4)))

    assert asyncio.run(go()) == [["echo", i] for i in range(4)]
    fired = threading.Event()
    box.submit("echo", 1).add_done_callback(lambda f: fired.set())
    assert fired.wait(2)


def test_warmup_dry_run_and_load_time_errors(box):
    info = install(box, "def main(i):\n    return sum(i)\n", "warm", warmup=[1, 2, 3])
    assert info.warmup_ms is not None and info.warmup_ms > 0
    with pytest.raises(TaskError, match="ZeroDivisionError"):
        install(box, "X = 1 / 0\ndef main(i):\n    return 1\n", "broken_top")
    assert "broken_top" not in {t.name for t in box.tasks()}
    with pytest.raises(TaskTimeout):
        install(box, "while True:\n    pass\ndef main(i):\n    return 1\n", "hang_top", timeout=0.1)


def test_core_lane_is_not_starved_by_a_flooded_low_lane():
    with test_container(workers=1, lanes={"low": 2}) as c:
        c.install(build_test_bundle(SPIN, name="hog", timeout=3))
        c.install(build_test_bundle("import vm\ndef main(i):\n    n = 0\n    for k in range(20000):\n"
                                    "        n += k\n    return n\n", name="rank", timeout=3))
        hogs = [c.submit("hog", None, lane="low") for _ in range(4)]
        time.sleep(0.05)
        start = time.monotonic()
        for _ in range(20):
            assert c.invoke("rank", None, lane="core") == sum(range(20000))
        assert time.monotonic() - start < 2.0
        for h in hogs:
            h.cancel()


def test_metrics_agree_with_what_was_sent(box):
    install(box, "def main(i):\n    if i == 'boom':\n        raise ValueError()\n    return i\n", "m")
    install(box, SPIN, "mspin", timeout=0.02)
    for i in range(10):
        box.invoke("m", i)
    for _ in range(2):
        with pytest.raises(TaskError):
            box.invoke("m", "boom")
    with pytest.raises(TaskTimeout):
        box.invoke("mspin")
    snap = box.metrics()
    m = snap["tasks"]["m"]
    assert (m["calls"], m["successes"], m["failures"]) == (12, 10, {"TaskError": 2})
    assert m["latency"]["count"] == 12 and m["latency"]["p50_ms"] > 0
    assert snap["tasks"]["mspin"]["timeouts"] == 1
    assert snap["installed"]["m"] == 1
    assert set(snap["lanes"]["regular"]) >= {"calls", "queue_depth", "running", "latency"}


def test_short_soak_every_future_resolves_exactly_once():
    """Mixed calls (succeeding, raising, timing out, cancelled) across lanes with hot
    installs going on; the full-size soak is benchmarks/soak.py."""
    outcomes = {"ok": 0, "err": 0, "timeout": 0, "cancelled": 0}
    src = "import vm\ndef main(i):\n    k = i % 4\n    if k == 1:\n        raise ValueError()\n" \
          "    if k == 2:\n        while True:\n            pass\n    return vm.release\n"
    settled: list = []
    with test_container(workers=2, max_queue=100_000, breaker_threshold=10**9) as c:
        c.install(build_test_bundle(src, name="soak", release=1, timeout=1.0))
        window: list = []
        for i in range(2000):
            if i % 500 == 499:
                c.install(build_test_bundle(src, name="soak", release=i, timeout=1.0))
            f = c.submit("soak", i, lane=("core", "regular", "low")[i % 3],
                         timeout=0.005 if i % 4 == 2 else None)
            f.add_done_callback(settled.append)
            if i % 4 == 3 and i % 8 == 7:
                f.cancel()
            window.append(f)
            if len(window) >= 16:
                outcomes_update(outcomes, window.pop(0))
        for f in window:
            outcomes_update(outcomes, f)
        assert sum(outcomes.values()) == 2000
        time.sleep(0.1)
        assert len(settled) == 2000 and len({id(f) for f in settled}) == 2000
        assert outcomes["err"] == 500 and outcomes["timeout"] == 500
        assert outcomes["cancelled"] >= 1
        snap = c.metrics()["tasks"]["soak"]
        assert snap["successes"] == outcomes["ok"]
        assert snap["failures"]["TaskError"] == outcomes["err"]
        assert snap["timeouts"] == outcomes["timeout"]
        assert np.isfinite(snap["latency"]["p99_ms"])


def outcomes_update(outcomes: dict, f) -> None:
    try:
        f.result(timeout=30)
        outcomes["ok"] += 1
    except TaskError:
        outcomes["err"] += 1
    except TaskTimeout:
        outcomes["timeout"] += 1
    except concurrent.futures.CancelledError:
        outcomes["cancelled"] += 1
