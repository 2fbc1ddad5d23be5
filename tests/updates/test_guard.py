"""Crash rollback: a release whose first calls crash, time out or fail too often is
marked bad on the device and the previous good release comes back by itself."""

from __future__ import annotations

import time

import pytest

from vmcontainer.errors import TaskError, TaskNotFound, TaskTimeout
from vmcontainer.testing import test_container
from vmcontainer.updates import GuardPolicy, ReleaseGuard

from .conftest import bundle, publish, running

CRASH = 'def main(inputs):\n    raise ValueError("boom")\n'
HANG = "def main(inputs):\n    while True:\n        pass\n"
POLICY = GuardPolicy(calls=4, max_error_rate=0.5)  # bad at the 3rd failure


def fail(container, task: str, times: int, exc: type[BaseException] = TaskError) -> None:
    for _ in range(times):
        with pytest.raises(exc):
            container.invoke(task, {})


def test_verdicts():
    guard = ReleaseGuard.__new__(ReleaseGuard)
    guard.policy = GuardPolicy(calls=10, max_error_rate=0.3)
    assert guard._verdict(2, 2) is None          # too early to tell
    assert guard._verdict(4, 4) is not None     # crash loop: bad before the 10th call
    assert guard._verdict(10, 3) == "good"      # 30 % is not above 30 %
    assert "error rate" in guard._verdict(20, 7)  # 35 % over 20 calls
    assert guard._verdict(12, 0) == "good"
    assert guard._verdict(100, 5) == "good"  # a late check over many healthy calls


def test_crashing_release_rolls_back_to_previous(repo, server, container, make_device):
    publish(repo, bundle("hello", 1))
    device = make_device(guard=POLICY)
    device.sync()
    publish(repo, bundle("hello", 2, src=CRASH))
    assert device.sync().installed[0].release == 2
    assert device.status()["guard"]["probation"]["hello"]["release"] == 2
    fail(container, "hello", 2)
    assert device.check() == []  # two failures: not yet conclusive
    fail(container, "hello", 1)
    [rollback] = device.check()
    assert (rollback.action, rollback.release, rollback.previous) == ("crash_rollback", 1, 2)
    assert running(container) == {"hello": 1}
    assert container.invoke("hello", {}) == "hello-r1"
    assert device.state.bad() == {"hello": {2: "3 of its first 3 calls failed"}}
    status = device.status()
    assert status["guard"]["recent_rollbacks"][0]["previous"] == 2
    # ... and the container's metrics carry it too
    assert container.metrics()["updates"]["guard"]["recent_rollbacks"][0]["previous"] == 2
    # the next sync reports it once, and does not reinstall the bad release
    report = device.sync()
    assert [(e["kind"], e["release"], e["to"]) for e in report.crash_rollbacks] == \
        [("crash_rollback", 2, 1)]
    assert not report.installed and report.current == ["hello"]
    assert device.sync().crash_rollbacks == []


def test_timeouts_count_as_crashes(repo, server, container, make_device):
    publish(repo, bundle("hello", 1))
    device = make_device(guard=POLICY)
    device.sync()
    publish(repo, bundle("hello", 2, src=HANG, timeout=0.05))
    device.sync()
    fail(container, "hello", 3, TaskTimeout)
    [rollback] = device.check()
    assert rollback.release == 1 and container.invoke("hello", {}) == "hello-r1"


def test_good_release_passes_probation_and_becomes_the_fallback(repo, server, container,
                                                                make_device):
    publish(repo, bundle("hello", 1))
    device = make_device(guard=POLICY)
    device.sync()
    publish(repo, bundle("hello", 2))
    device.sync()
    for _ in range(4):
        container.invoke("hello", {})
    assert device.check() == []
    assert device.state.installed()["hello"].status == "good"
    publish(repo, bundle("hello", 3, src=CRASH))
    device.sync()
    assert device.state.installed()["hello"].fallback_release == 2
    fail(container, "hello", 3)
    [rollback] = device.check()
    assert rollback.release == 2 and container.invoke("hello", {}) == "hello-r2"


def test_probation_counts_survive_a_restart(tmp_path, repo, server, make_device):
    state = tmp_path / "state"
    publish(repo, bundle("hello", 1))
    publish(repo, bundle("hello", 2, src=CRASH))
    with test_container(workers=1) as first:
        device = make_device(container=first, state_dir=state, guard=POLICY)
        device.sync()  # fresh device: release 2 directly, on probation, no fallback
        fail(first, "hello", 2)
        assert device.check() == []
        device.close()
    with test_container(workers=1) as second:
        device = make_device(container=second, state_dir=state, guard=POLICY)
        device.restore()
        fail(second, "hello", 1)  # the third failure overall
        [rollback] = device.check()
        # no earlier release on this device: the bad one is removed, not kept crashing
        assert rollback.release is None and rollback.detail["result"] == "removed"
        with pytest.raises(TaskNotFound):
            second.invoke("hello", {})
        report = device.sync()  # release 2 is bad here; release 1 is below the mark
        assert running(second) == {} and report.held


def test_boot_counter_catches_hard_crashes(tmp_path, repo, server, make_device):
    """A release that kills the process never reaches ``check()``; with ``max_boots``
    the restart itself counts against it (Shorebird's boot marker)."""
    state = tmp_path / "state"
    policy = GuardPolicy(calls=4, max_error_rate=0.5, max_boots=1)
    publish(repo, bundle("hello", 1))
    with test_container(workers=1) as c:
        device = make_device(container=c, state_dir=state, guard=policy)
        device.sync()
        publish(repo, bundle("hello", 2))
        device.sync()  # release 2 on probation; then the process "dies" twice
        device.close()
    for boot, expected in ((1, 2), (2, 1)):
        with test_container(workers=1) as c:
            device = make_device(container=c, state_dir=state, guard=policy)
            outcomes = device.restore()
            assert running(c) == {"hello": expected}, boot
            device.close()
    assert outcomes[0].action == "crash_rollback"


def test_poller_runs_the_guard(repo, server, container, make_device):
    publish(repo, bundle("hello", 1))
    device = make_device(guard=POLICY)
    device.sync()
    publish(repo, bundle("hello", 2, src=CRASH))
    device.sync()
    device.start_polling(interval=60, initial_delay=60, guard_interval=0.02)
    try:
        fail(container, "hello", 3)
        deadline = time.monotonic() + 5
        while running(container) != {"hello": 1}:
            assert time.monotonic() < deadline, "guard did not roll back"
            time.sleep(0.02)
    finally:
        device.stop_polling()
    assert container.invoke("hello", {}) == "hello-r1"
