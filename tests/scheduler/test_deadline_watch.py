"""Checkpoints read a flag; the deadline watch raises it.

What must hold: a runaway loop still times out close to its deadline with no
CPU or memory budget to audit (only the watch's lead brings the slow path), with
timeouts shorter than the lead, and in code built before the flag (checkpoints
that read the clock).  A stream of short calls must not wake the watch thread,
and the thread must go back to sleep when calls stop."""

from __future__ import annotations

import threading
import time

import pytest

from vmcontainer import TaskCancelled, TaskTimeout
from vmcontainer.sandbox.compiler import compile_task
from vmcontainer.sandbox.runtime import TaskProgram
from vmcontainer.scheduler import watch
from vmcontainer.scheduler.scope import CallScope

SPIN = "def main(i):\n    n = 0\n    while True:\n        n += 1\n"

# What the compiler emitted before the flag: the task reads the clock itself.
CLOCK_CHECKPOINTS = """\
def main(i):
    if _vm_clock_() > _vm_deadline_:
        _vm_expired_()
    while True:
        if _vm_clock_() > _vm_deadline_:
            _vm_expired_()
"""


def _program(source: str, *, compiled: bool = True) -> TaskProgram:
    code = compile_task(source, "task.py").code if compiled else compile(source, "task.py", "exec")
    return TaskProgram(code, name="t", release=1)


def _overshoot(program: TaskProgram, timeout: float, **budgets: object) -> float:
    scope = CallScope(timeout, **budgets)  # type: ignore[arg-type]
    with pytest.raises(TaskTimeout):
        program.call(None, scope)
    return time.monotonic() - scope.deadline


def test_the_compiled_checkpoint_reads_a_flag_not_the_clock():
    names = set()
    stack = [compile_task(SPIN, "task.py").code]
    while stack:
        code = stack.pop()
        names.update(code.co_names)
        stack.extend(c for c in code.co_consts if hasattr(c, "co_names"))
    assert "_vm_stop_" in names and "_vm_expired_" in names
    assert "_vm_clock_" not in names


@pytest.mark.parametrize("timeout", [0.002, 0.05, 0.2], ids=["under-the-lead", "short", "long"])
def test_a_runaway_loop_without_budgets_times_out_at_its_deadline(timeout):
    """No audits: the slow path comes only from the watch raising the flag ahead of
    the deadline (or, under the lead, from the first checkpoint on)."""
    program = _program(SPIN)
    overshoot = max(_overshoot(program, timeout) for _ in range(3))
    assert 0 <= overshoot < 0.05


def test_a_runaway_loop_with_budgets_times_out_at_its_deadline():
    program = _program(SPIN)
    overshoot = _overshoot(program, 0.1, cpu_budget=10.0, memory_budget=1 << 30,
                           audit_interval=0.005)
    assert 0 <= overshoot < 0.05


def test_a_flag_lowered_by_a_racing_slow_path_is_raised_again(monkeypatch):
    """The race: a slow path reads the clock just before the lead, the watch raises
    the flag at the lead, then the slow path lowers it (its reading said "not near
    the deadline yet").  Forced here on every slow path: the watch must still bring
    the call down at its deadline rather than leave it running for ever."""
    real_arm = CallScope._arm

    def stale_arm(self, g, now):
        real_arm(self, g, now - 1.0)  # always "long before the deadline"

    monkeypatch.setattr(CallScope, "_arm", stale_arm)
    program = _program(SPIN)
    for budgets in ({}, {"cpu_budget": 10.0, "audit_interval": 0.002}):
        assert 0 <= _overshoot(program, 0.05, **budgets) < 0.05


def test_the_watch_looks_exactly_at_leads_and_long_calls_audits_only():
    interval = watch.EXACT_AUDITS_BELOW  # the default audit interval
    scope = CallScope(10.0, cpu_budget=10.0, audit_interval=interval)
    g: dict = {}
    scope.bind(g)
    try:
        start, deadline, lead = scope._started, scope.deadline, watch.WATCH.lead
        # Before the first audit is due only the deadline's lead is timed: the audit
        # waits for a tick (a short call never costs a wake-up).
        assert scope.next_look == deadline - lead
        assert scope.look(start + 0.001) == deadline - lead and g["_vm_stop_"] is False
        # Once audited, a long call is looked at on its audit times.
        assert scope.look(start + interval) == pytest.approx(start + 2 * interval)
        assert g["_vm_stop_"] is True
        # Within the lead: raised, and looked at again a lead past the deadline, then
        # every tick.
        g["_vm_stop_"] = False  # a racing slow path lowered it on a stale reading
        assert scope.look(deadline - lead / 2) == deadline + lead and g["_vm_stop_"] is True
        assert deadline < scope.look(deadline + 1.0) <= deadline + 1.0 + watch.TICK
    finally:
        scope.close()
    assert scope.look(deadline) == float("inf")  # a closed call is let go


def test_audits_asked_for_more_often_than_the_default_are_timed_from_the_start():
    interval = watch.EXACT_AUDITS_BELOW / 10
    scope = CallScope(10.0, memory_budget=1 << 30, audit_interval=interval)
    g: dict = {}
    scope.bind(g)
    try:
        first = scope._started + interval
        assert scope.next_look == pytest.approx(first)
        assert scope.look(scope._started + 0.0001) == pytest.approx(first)
    finally:
        scope.close()


def test_a_failing_look_does_not_stop_the_watch(monkeypatch, caplog):
    """A MemoryError in the watch thread (a memory bomb elsewhere in the process)
    must not leave later runaway loops without a deadline."""
    real_look = CallScope.look
    failures = []

    def flaky_look(self, now):
        if not failures:
            failures.append(now)
            raise MemoryError
        return real_look(self, now)

    monkeypatch.setattr(CallScope, "look", flaky_look)
    program = _program(SPIN)
    assert 0 <= _overshoot(program, 0.1) < 0.05
    assert failures and "look failed" in caplog.text
    assert 0 <= _overshoot(program, 0.1) < 0.05


def test_code_built_before_the_flag_still_times_out_and_cancels():
    program = _program(CLOCK_CHECKPOINTS, compiled=False)
    assert 0 <= _overshoot(program, 0.05) < 0.05
    scope = CallScope(30.0)
    threading.Timer(0.05, scope.cancel).start()
    started = time.monotonic()
    with pytest.raises(TaskCancelled):
        program.call(None, scope)
    assert time.monotonic() - started < 1.0


def test_a_stream_of_short_calls_does_not_wake_the_watch(monkeypatch):
    program = _program("def main(i):\n    return i\n")
    pokes = []
    real_poke = watch.DeadlineWatch._poke
    monkeypatch.setattr(watch.DeadlineWatch, "_poke", lambda self: (pokes.append(1), real_poke(self)))
    for i in range(300):
        assert program.call(i, CallScope(30.0, cpu_budget=10.0))[0] == i
    assert len(pokes) <= 2  # the first call after an idle spell, at most twice on a slow start


def test_finished_calls_leave_the_watch_and_it_sleeps_when_calls_stop():
    program = _program("def main(i):\n    return i\n")
    for i in range(20):
        program.call(i, CallScope(30.0, cpu_budget=10.0))
    scope = CallScope(30.0)
    program.call(0, scope)
    assert scope not in watch.WATCH.running
    deadline = time.monotonic() + 2.0
    while watch.WATCH.wake_at != float("inf") and time.monotonic() < deadline:
        time.sleep(0.01)
    assert watch.WATCH.wake_at == float("inf") or watch.WATCH.running  # another test's call
