"""pytest plugin: unit-test task scripts in the real sandbox, exactly as devices run them.

Registered through the ``pytest11`` entry point, so once ``vmcontainer`` is
installed every test can ask for the fixtures::

    def test_ranking(run_task):
        out = run_task("sample_tasks/ranker/task.py", inputs,
                       models={"ranker": "ranker.onnx"}, timeout=1.0)
        assert out["ranking"][0] == "c-ipl-104"

Why it is built this way:

* **The production path.**  A script is compiled by the production compiler,
  sealed with ephemeral keys into a real bundle, verified and installed by a
  real ``Container`` and invoked through it (``vmcontainer.testing``), so a
  test sees the same results, deadlines and errors as a device.
* **Fast.**  One container serves the whole test session (``vm_container``),
  and each distinct (source, models, entry, requires) is built and installed
  once under a unique task name; running it again costs a digest of the
  source and a plain ``invoke`` (well under a millisecond plus the task).
* **Readable failures.**  A script that raises surfaces as ``ScriptFailed``
  (a ``TaskError``) whose message carries the script's traceback with its own
  source lines; a policy violation surfaces as a ``CompileError`` that quotes
  the offending line.  ``pytest.raises(TaskError)`` keeps working.
* **No work until used.**  pytest loads this module in every run in the
  environment; the container and its keys are only made when a test asks for
  a fixture.

Prerequisites of a task graph can be stubbed: ``run_task(path, inputs,
upstream={"features": {...}})`` installs, for each name, a tiny task returning
that value and builds the script with ``requires=[...names]``, so the script is
called as ``main(inputs, upstream)`` through the real graph machinery.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import math
import os
import re
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from .container import Container
from .errors import CompileError, TaskError
from .testing import build_test_bundle, test_container

__all__ = ["ScriptFailed", "TaskRunner", "run_task", "vm_container"]

DEFAULT_TIMEOUT = 5.0
"""Deadline of a call when the test gives none (the same default as ``run_script``)."""

MAX_TIMEOUT = 120.0
"""Manifest timeout of test bundles and the container's cap: the call's own ``timeout`` decides."""

ModelSource = bytes | str | os.PathLike
_TB_LINE = re.compile(r'^(\s*)File "([^"]+)", line (\d+), in .*$')


# --------------------------------------------------------------------------- errors


class ScriptFailed(TaskError):
    """The task script raised; the message shows its traceback with source lines.

    ``exc_type`` and ``script_traceback`` are the container's, unchanged.
    """


def annotate_traceback(traceback_text: str, filename: str, source: str) -> str:
    """Add the script's source text under each ``File "<filename>", line N`` frame.

    The container reports frames in script line numbers only (no host paths, no
    source: a device does not have it).  The test does have the source, so the
    failure can quote the lines, as a normal Python traceback would.  Frames that
    already carry a source line are left alone.
    """
    lines = source.splitlines()
    tb = traceback_text.splitlines()
    out: list[str] = []
    for i, line in enumerate(tb):
        out.append(line)
        m = _TB_LINE.match(line)
        if not m or m.group(2) != filename:
            continue
        has_text = i + 1 < len(tb) and tb[i + 1].startswith(m.group(1) + "    ")
        lineno = int(m.group(3))
        if not has_text and 1 <= lineno <= len(lines):
            out.append(f"{m.group(1)}    {lines[lineno - 1].strip()}")
    return "\n".join(out)


def _script_failed(exc: TaskError, filename: str, source: str) -> TaskError:
    tb = annotate_traceback(exc.script_traceback, filename, source) if exc.script_traceback else ""
    message = f"{exc}\n\nScript traceback:\n{tb}" if tb else str(exc)
    return ScriptFailed(message, exc_type=exc.exc_type, script_traceback=exc.script_traceback)


def _compile_failed(exc: CompileError, source: str) -> CompileError:
    """The same ``CompileError`` (same ``diagnostics``), its message quoting each line."""
    lines = source.splitlines()
    parts = []
    for d in exc.diagnostics:
        parts.append(str(d))
        if 1 <= d.line <= len(lines):
            text = lines[d.line - 1]
            parts.append(f"    {text}")
            parts.append("    " + " " * max(0, min(d.col - 1, len(text))) + "^")
    err = type(exc)(exc.diagnostics)
    err.args = ("\n".join(parts),)
    return err


# --------------------------------------------------------------------------- stubs


def python_literal(value: Any) -> str:
    """Source text that rebuilds ``value`` in a script (JSON-like data and numeric arrays).

    Used for the stub prerequisites of ``upstream=``: the stub is a real task,
    so its result crosses the real boundary into the script under test.
    """
    t = type(value)
    if value is None or t in (bool, int, str, bytes):
        return repr(value)
    if t is float:
        return repr(value) if math.isfinite(value) else f"float({str(value)!r})"
    if t is complex:
        return f"complex({python_literal(value.real)}, {python_literal(value.imag)})"
    if t is list:
        return "[" + ", ".join(python_literal(v) for v in value) + "]"
    if t is tuple:
        return "(" + "".join(python_literal(v) + ", " for v in value) + ")"
    if t is dict:
        items = (f"{python_literal(k)}: {python_literal(v)}" for k, v in value.items())
        return "{" + ", ".join(items) + "}"
    if t is np.ndarray:
        return f"np.array({python_literal(value.tolist())}, dtype={value.dtype.name!r})"
    if isinstance(value, np.generic):
        return python_literal(value.item())
    raise TypeError(f"upstream values must be JSON-like data or numeric arrays, not {t.__name__}")


def stub_source(value: Any) -> str:
    """A task whose ``main`` returns ``value``."""
    return f"import numpy as np\n\n\ndef main(inputs):\n    return {python_literal(value)}\n"


# --------------------------------------------------------------------------- runner


def _digest(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for part in parts:
        data = part.encode("utf-8") if isinstance(part, str) else part
        h.update(len(data).to_bytes(8, "big"))
        h.update(data)
    return h.hexdigest()


def _read_script(path_or_source: str | os.PathLike) -> tuple[str, str]:
    """(source text, filename): a ``.py`` path (no newline) is read, anything else is source."""
    if isinstance(path_or_source, os.PathLike) or (
        "\n" not in path_or_source and path_or_source.endswith(".py")
    ):
        path = Path(path_or_source)
        return path.read_text(encoding="utf-8"), path.name
    return path_or_source, "script.py"


class TaskRunner:
    """Builds, installs (once) and invokes scripts in one shared container.  Thread-safe.

    Call it like ``vmcontainer.testing.run_script``; ``upstream`` stubs a task
    graph's prerequisites (see the module docstring).  ``container`` is the
    underlying ``Container``.
    """

    def __init__(self, container: Container) -> None:
        self.container = container
        self._lock = threading.Lock()
        self._installed: dict[str, str] = {}  # build key -> task name
        self._stubs: dict[str, tuple[int, str]] = {}  # stub name -> (release, value digest)
        self._models: dict[tuple[str, int, int], bytes] = {}  # (path, mtime_ns, size) -> bytes
        self._names = itertools.count(1)

    def __call__(
        self,
        path_or_source: str | os.PathLike,
        inputs: Any = None,
        *,
        models: Mapping[str, ModelSource] | None = None,
        timeout: float | None = None,
        entry: str = "main",
        upstream: Mapping[str, Any] | None = None,
    ) -> Any:
        """Run ``entry(inputs)`` (or ``entry(inputs, upstream)``) in the sandbox; return its result.

        ``models`` maps the names the script passes to ``vm.model`` to ONNX
        bytes or file paths.  ``timeout`` is the call's deadline in seconds
        (default 5).  Raises what a device would raise, except that a script
        exception is a ``ScriptFailed`` (a ``TaskError``) and a compile error
        quotes the source.
        """
        __tracebackhide__ = True
        source, filename = _read_script(path_or_source)
        try:
            name = self._ensure(path_or_source, source, filename, models, entry, upstream)
        except CompileError as exc:
            raise _compile_failed(exc, source) from None
        self.container.reset_breaker(name)  # tests that expect failures must not trip it
        try:
            return self.container.invoke(name, inputs,
                                         timeout=DEFAULT_TIMEOUT if timeout is None else timeout)
        except TaskError as exc:
            raise _script_failed(exc, filename, source) from None

    def install(
        self,
        path_or_source: str | os.PathLike,
        *,
        models: Mapping[str, ModelSource] | None = None,
        entry: str = "main",
        upstream: Mapping[str, Any] | None = None,
    ) -> str:
        """Install a script (once per distinct build) and return its task name.

        For tests that drive ``container`` themselves (``submit``, ``cancel``,
        metrics).  Raises ``CompileError`` for a policy violation.
        """
        source, filename = _read_script(path_or_source)
        return self._ensure(path_or_source, source, filename, models, entry, upstream)

    def _ensure(self, script: str | os.PathLike, source: str, filename: str,
                models: Mapping[str, ModelSource] | None, entry: str,
                upstream: Mapping[str, Any] | None) -> str:
        blobs = self._model_bytes(models)
        requires = sorted(upstream or {})
        key = _digest(source, filename, entry, *requires,
                      *(f"{n}={_digest(b)}" for n, b in sorted(blobs.items())))
        with self._lock:
            for stub, value in (upstream or {}).items():
                self._install_stub(stub, value)
            name = self._installed.get(key)
            if name is None:
                name = f"runtask-{next(self._names)}-{Path(filename).stem}"
                # The path itself (not the text) so tracebacks name the real file.
                self._install(script, name=name, release=1, entry=entry, models=blobs,
                              requires=requires)
                self._installed[key] = name
            return name

    def _install(self, script: str | os.PathLike, *, name: str, release: int,
                 **manifest: Any) -> None:
        self.container.install(build_test_bundle(script, name=name, release=release,
                                                 timeout=MAX_TIMEOUT, **manifest))

    def _install_stub(self, name: str, value: Any) -> None:
        source = stub_source(value)
        digest = _digest(source)
        release, current = self._stubs.get(name, (0, ""))
        if current == digest:
            return
        self._install(source, name=name, release=release + 1)
        self._stubs[name] = (release + 1, digest)

    def _model_bytes(self, models: Mapping[str, ModelSource] | None) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        for name, value in (models or {}).items():
            if isinstance(value, (bytes, bytearray)):
                out[name] = bytes(value)
                continue
            path = Path(value)
            st = path.stat()
            key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
            blob = self._models.get(key)
            if blob is None:
                blob = self._models[key] = path.read_bytes()
            out[name] = blob
        return out


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def vm_container() -> Iterator[Container]:
    """One container for the whole test session, trusting ``vmcontainer.testing``'s keys.

    The circuit breaker is effectively off (tests fail scripts on purpose) and
    the container's deadline cap is ``MAX_TIMEOUT``.  Script ``print`` output is
    logged by the container at INFO, which pytest shows under "Captured log"
    when a test fails.
    """
    logger = logging.getLogger("vmcontainer")
    level = logger.level
    if level == logging.NOTSET:  # the user's own logging configuration wins
        logger.setLevel(logging.INFO)
    try:
        with test_container(workers=2, max_timeout=MAX_TIMEOUT, breaker_threshold=1 << 30) as c:
            yield c
    finally:
        logger.setLevel(level)


@pytest.fixture(scope="session")
def run_task(vm_container: Container) -> TaskRunner:
    """``run_task(path_or_source, inputs, *, models=None, timeout=None, entry="main", upstream=None)``.

    Runs a script in the real sandbox and returns its result (see ``TaskRunner``).
    Session-scoped, so module- and session-scoped fixtures can use it too.
    """
    return TaskRunner(vm_container)
