"""Shared fixtures: one container trusting the process's ephemeral test keys."""

from __future__ import annotations

import itertools

import pytest

from vmcontainer.testing import build_test_bundle, test_container

_names = itertools.count()


@pytest.fixture(scope="session")
def container():
    with test_container(workers=2) as c:
        yield c


@pytest.fixture
def deploy(container):
    """Install a script under a fresh task name and return that name."""

    def _deploy(source: str, **kwargs) -> str:
        name = kwargs.pop("name", None) or f"t{next(_names)}"
        container.install(build_test_bundle(source, name=name, **kwargs))
        return name

    return _deploy
