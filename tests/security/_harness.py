"""The attack harness: install one attack per fresh task name, run it, assert its
specific outcome, then prove the container still answers.

Every attack goes through the production path (compiler -> sealed bundle ->
verifier -> container -> sandbox), exactly like ``vmcontainer.testing.run_script``,
but against one long-lived container per isolation mode so the suite stays fast.
"""

from __future__ import annotations

import inspect
import itertools
import re
import textwrap
import time
from typing import Any

import pytest

import vmcontainer
from vmcontainer import CompileError, TaskError
from vmcontainer.testing import build_test_bundle, test_container

MODES = ("thread", "process")
ALIVE_SOURCE = "def main(inputs):\n    return ['alive', inputs]\n"
ADDRESS = re.compile(r"0x[0-9a-fA-F]{6,}")

_names = itertools.count()


def process_mode_supported() -> bool:
    return "isolation" in inspect.signature(vmcontainer.Container).parameters


def worker_crashed_type() -> type[BaseException]:
    exc = getattr(vmcontainer, "WorkerCrashed", None)
    if exc is None:
        try:
            from vmcontainer.isolation import WorkerCrashed as exc  # type: ignore[no-redef]
        except ImportError:  # pragma: no cover - process mode not there yet
            exc = vmcontainer.VmError
    return exc


def make_container(mode: str):
    kwargs: dict[str, Any] = dict(workers=2, breaker_threshold=10**9, max_timeout=60.0)
    if mode == "process":
        if not process_mode_supported():
            pytest.skip("Container(isolation='process') is not implemented yet")
        kwargs["isolation"] = "process"
    return test_container(**kwargs)


def body(code: str, *, imports: str = "") -> str:
    """``def main(inputs):`` around an indented attack body."""
    code = textwrap.dedent(code).strip("\n")
    return imports + "def main(inputs):\n" + textwrap.indent(code, "    ") + "\n"


class Sandbox:
    """One container per isolation mode; every attack gets a fresh task name."""

    def __init__(self, container, mode: str):
        self.container = container
        self.mode = mode
        self.container.install(build_test_bundle(ALIVE_SOURCE, name="alive-probe"))

    # -- plumbing --------------------------------------------------------------------

    def deploy(self, source: str, *, timeout: float = 5.0, **bundle: Any) -> str:
        name = f"atk{next(_names)}"
        self.container.install(build_test_bundle(source, name=name, timeout=timeout, **bundle))
        return name

    def invoke(self, source: str, inputs: Any = None, *, timeout: float = 2.0, **bundle: Any) -> Any:
        name = self.deploy(source, timeout=max(timeout, 0.05), **bundle)
        return self.container.invoke(name, inputs, timeout=timeout)

    def assert_alive(self) -> None:
        token = next(_names)
        assert self.container.invoke("alive-probe", token, timeout=10) == ["alive", token]

    # -- assertions ------------------------------------------------------------------

    def ok(self, source: str, inputs: Any = None, **kw: Any) -> Any:
        """The attack runs to completion: return its (harmless) result."""
        try:
            return self.invoke(source, inputs, **kw)
        finally:
            self.assert_alive()

    def refused(self, source: str, error: type[BaseException], inputs: Any = None, *,
                exc_type: str | None = None, match: str | None = None, within: float | None = None,
                **kw: Any) -> BaseException:
        """The attack fails with exactly ``error`` (and ``exc_type`` for ``TaskError``)."""
        start = time.monotonic()
        try:
            with pytest.raises(error, match=match) as info:
                self.invoke(source, inputs, **kw)
            elapsed = time.monotonic() - start
            exc = info.value
            if exc_type is not None:
                assert isinstance(exc, TaskError), exc
                assert exc.exc_type == exc_type, (exc.exc_type, str(exc))
            if within is not None:
                assert elapsed < within, f"took {elapsed:.2f}s (allowed {within}s)"
            # nothing host-side rides out on a public error
            assert ADDRESS.search(str(exc)) is None, str(exc)
            assert "/work/" not in str(exc) and "site-packages" not in str(exc), str(exc)
            return exc
        finally:
            self.assert_alive()

    def compile_refused(self, source: str, fragment: str | None = None) -> CompileError:
        try:
            with pytest.raises(CompileError) as info:
                build_test_bundle(source, name="never-installed")
            if fragment is not None:
                assert fragment in str(info.value), str(info.value)
            return info.value
        finally:
            self.assert_alive()


_CHILD = r"""
import json, sys
from vmcontainer.testing import run_script
src = sys.stdin.read()
try:
    out = run_script(src, None, timeout=float(sys.argv[1]))
    print(json.dumps(["ok", repr(out)]))
except BaseException as exc:
    print(json.dumps(["error", type(exc).__name__]))
"""


def run_isolated(source: str, timeout: float = 5.0, kill_after: float = 60.0) -> tuple[int | None, list]:
    """Run one script with ``run_script`` (thread mode) in a child interpreter: for
    attacks that would take the test process down.  Returns (returncode, outcome)."""
    import json
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        proc = subprocess.run([sys.executable, "-c", _CHILD, str(timeout)], input=source, text=True,
                              capture_output=True, cwd=root, timeout=kill_after,
                              env={**os.environ, "PYTHONPATH": root, "PYTHONFAULTHANDLER": ""})
    except subprocess.TimeoutExpired:
        return None, ["hung", f"no answer after {kill_after}s"]
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("[")]
    return proc.returncode, (json.loads(lines[-1]) if lines else [])
