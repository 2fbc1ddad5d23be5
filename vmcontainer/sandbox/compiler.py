"""Compile a task script to a code object under the sandbox policy.

Used by the cloud toolchain (``bytecode_tools``), by ``vmcontainer.testing`` and
by ``vmtool check`` - one compiler, so what an engineer tests locally is what
the device runs.  The code object's filename is the script's base name only:
build-machine paths never end up in bytecode or tracebacks.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from types import CodeType

from ..errors import CompileError, Diagnostic
from . import policy
from .transformer import TaskTransformer


@dataclass(frozen=True)
class CompiledTask:
    code: CodeType
    entry: str
    filename: str


def _diag(filename: str, line: int | None, col: int | None, message: str) -> CompileError:
    return CompileError([Diagnostic(filename, line or 0, col or 0, message)])


def check_source(source: str | bytes, filename: str = "task.py", *, entry: str = "main") -> ast.Module:
    """Parse and transform ``source``; raise ``CompileError`` listing every violation."""
    if isinstance(source, bytes):
        try:
            source = source.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _diag(filename, 1, 1, f"source is not UTF-8: {exc.reason}") from None
    if len(source.encode("utf-8")) > policy.MAX_SOURCE_BYTES:
        raise _diag(filename, 1, 1, f"source exceeds {policy.MAX_SOURCE_BYTES} bytes")
    try:
        tree = ast.parse(source, filename=filename, mode="exec")
    except SyntaxError as exc:
        raise _diag(filename, exc.lineno, exc.offset, f"SyntaxError: {exc.msg}") from None
    except (RecursionError, MemoryError, ValueError) as exc:
        raise _diag(filename, 1, 1, f"source too deeply nested or invalid: {type(exc).__name__}") from None

    transformer = TaskTransformer(filename)
    try:
        tree = transformer.visit(tree)
    except RecursionError:
        raise _diag(filename, 1, 1, "source too deeply nested") from None
    diagnostics = list(transformer.diagnostics)
    if not any(
        isinstance(n, ast.FunctionDef) and n.name == entry for n in tree.body
    ):
        diagnostics.append(
            Diagnostic(filename, 1, 1, f'entry function "{entry}" is not defined at module level')
        )
    if diagnostics:
        diagnostics.sort(key=lambda d: (d.line, d.col))
        raise CompileError(diagnostics)
    ast.fix_missing_locations(tree)
    return tree


def compile_task(source: str | bytes, filename: str = "task.py", *, entry: str = "main") -> CompiledTask:
    """Compile ``source`` for the sandbox.  Deterministic: same source, same code bytes."""
    filename = filename.replace("\\", "/").rsplit("/", 1)[-1] or "task.py"
    tree = check_source(source, filename, entry=entry)
    try:
        code = compile(tree, filename, "exec", dont_inherit=True, optimize=0)
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        raise _diag(filename, getattr(exc, "lineno", 1), getattr(exc, "offset", 1),
                    f"{type(exc).__name__}: {exc}") from None
    return CompiledTask(code=code, entry=entry, filename=filename)
