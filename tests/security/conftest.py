"""Fixtures of the attack suite: one container per isolation mode, shared by the session."""

from __future__ import annotations

import pytest

from ._harness import MODES, Sandbox, make_container


@pytest.fixture(scope="session", params=MODES)
def mode(request) -> str:
    return request.param


@pytest.fixture(scope="session")
def sandbox(mode):
    with make_container(mode) as container:
        yield Sandbox(container, mode)


@pytest.fixture
def thread_only(sandbox):
    """Attacks whose check needs the task to run inside this process."""
    if sandbox.mode != "thread":
        pytest.skip("observes host-process state: only meaningful in thread mode")
    return sandbox


@pytest.fixture
def process_only(sandbox):
    """Crash and C-level-hang attacks: they would kill or hang the test process itself."""
    if sandbox.mode != "process":
        pytest.skip("would segfault or hang the whole test process in thread mode; "
                    "needs Container(isolation='process')")
    return sandbox
