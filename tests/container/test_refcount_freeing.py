"""Finished calls and replaced releases are freed by reference counting.

A call's globals and the script's functions refer to each other, and so did a
release's program and its builtins; left as cycles they wait for the cyclic
collector, whose passes over the young generation then land on installs and
calls as pauses.  These tests run with the collector off and look for what is
left behind."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from vmcontainer.testing import build_test_bundle

FUNCTIONS = """\
import vm

def helper(x):
    return [x + i for i in range(3)]

def gen(n):
    try:
        for i in range(n):
            yield i
    finally:
        pass

def main(inputs):
    g = gen(5)
    next(g)  # left suspended: it dies with the call's globals
    adder = lambda y: helper(y)
    return {"task": vm.task, "v": adder(inputs)}
"""

WITH_CLASS = """\
class Box:
    def __init__(self, v):
        self.v = v

def main(inputs):
    return Box(inputs).v
"""


@pytest.fixture
def collector_off() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _left_to_collector() -> list[object]:
    """Objects only the cyclic collector would have freed."""
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        return list(gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()


def _is_call_state(obj: object) -> bool:
    if isinstance(obj, dict):
        return "_vm_scope_" in obj or "_vm_deadline_" in obj
    module = getattr(obj, "__module__", None)
    return type(obj).__name__ == "function" and isinstance(module, str) and module.startswith("task.")


def test_a_finished_call_leaves_nothing_to_the_cyclic_collector(container, deploy, collector_off):
    name = deploy(FUNCTIONS)
    for i in range(5):
        assert container.invoke(name, i) == {"task": name, "v": [i, i + 1, i + 2]}
    left = [o for o in _left_to_collector() if _is_call_state(o)]
    assert left == []


def test_a_failed_call_leaves_nothing_to_the_cyclic_collector(container, deploy, collector_off):
    name = deploy("def f():\n    return 1 / 0\n\ndef main(inputs):\n    return f()\n")
    for _ in range(3):
        with pytest.raises(Exception, match="ZeroDivisionError"):
            container.invoke(name, 0)
    left = [o for o in _left_to_collector() if _is_call_state(o)]
    assert left == []


@pytest.mark.parametrize("source", [FUNCTIONS, WITH_CLASS], ids=["functions", "class"])
def test_a_replaced_release_is_freed_at_once(container, source, collector_off):
    """A script's classes stay cyclic (a type is in its own ``__mro__``), but they
    no longer hold the release: the program and the task go as soon as the new
    release replaces them."""
    name = f"swap-{len(source)}"
    container.install(build_test_bundle(source, name=name, release=1))
    old = container._registry.get(name)
    old_task, old_program = weakref.ref(old), weakref.ref(old.program)
    del old
    container.install(build_test_bundle(source, name=name, release=2))
    assert old_task() is None
    assert old_program() is None
    assert container._registry.get(name).info.release == 2
