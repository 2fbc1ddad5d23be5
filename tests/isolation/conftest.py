"""A shared process pool and a helper that builds verified-equivalent programs."""

from __future__ import annotations

import hashlib
import itertools

import pytest

from vmcontainer.isolation import ProcessLimits, ProcessPool, ProgramSpec
from vmcontainer.sandbox.compiler import compile_task
from vmcontainer.sandbox.limits import DEFAULT_LIMITS, ResourceLimits

_names = itertools.count()


def make_spec(source: str, *, models: dict[str, bytes] | None = None, name: str | None = None,
              entry: str = "main", limits: ResourceLimits = DEFAULT_LIMITS) -> ProgramSpec:
    """Compile like the toolchain does and marshal like the host does after verifying
    (``code_bytes`` of the code object), with ``script.py`` as ``vmcontainer.testing`` names it."""
    code = compile_task(source, "script.py", entry=entry).code
    return ProgramSpec.from_code(
        code, name=name or f"p{next(_names)}", release=1, entry=entry,
        models={n: (hashlib.sha256(b).hexdigest(), b) for n, b in (models or {}).items()},
        limits=limits,
    )


@pytest.fixture(scope="session")
def pool():
    with ProcessPool(2, ProcessLimits(memory_bytes=1 << 30)) as p:
        yield p
