"""Run one call of a verified task: fresh globals, guarded builtins, the boundary.

Isolation between calls is by construction: the module code object is
executed again for every call into a brand-new globals dict (about 10 us for
a typical script), so nothing one call writes - module state, class
attributes, caches - is visible to another call or thread.  Facades are
shared but immutable.

Errors leave here already public: ``Interrupt`` becomes ``TaskTimeout`` /
``TaskCancelled`` / ``SandboxViolation`` / ``ResourceLimitExceeded``; anything
else the script raised becomes ``TaskError`` carrying a traceback in script
line numbers only.
"""

from __future__ import annotations

import builtins
import re
import time
import traceback
from collections.abc import Callable, Mapping
from types import CodeType
from typing import Any

from ..errors import (
    ResourceLimitExceeded,
    SandboxViolation,
    TaskCancelled,
    TaskError,
    TaskTimeout,
    VmError,
)
from ..scheduler.scope import CallScope, Interrupt, set_current_scope
from . import policy
from .boundary import BoundaryError, copy_plain
from .guards import (
    ScriptTypes,
    SizeGuards,
    guarded_getattr,
    guarded_hasattr,
    safe_ascii,
    safe_hash,
    safe_repr,
    safe_type,
    violation,
)
from .limits import DEFAULT_LIMITS, ResourceLimits
from .modules import get_facades

MAX_PRINT_BYTES = 64 * 1024
_SCOPE = "_vm_scope_"
# Modules that C code running under a script frame may import for its own use.
_C_INTERNAL_IMPORTS = frozenset({"time", "_strptime", "locale", "calendar", "encodings",
                                 "codecs", "unicodedata", "copyreg", "_datetime", "numpy"})
_VM = "_vm_module_"
MAX_MESSAGE_CHARS = 2000
_HOST_PATH = re.compile(r"(?:[A-Za-z]:)?(?:[/\\][\w.\-+~@ ]+)+[/\\]?")

_BUILTINS_TEMPLATE: dict[str, Any] = {name: getattr(builtins, name) for name in policy.PLAIN_BUILTINS}
# getattr, pow and format are bound per program to its size limits (TaskProgram.__init__).
_BUILTINS_TEMPLATE.update(
    hasattr=guarded_hasattr,
    type=safe_type,
    repr=safe_repr,
    ascii=safe_ascii,
    hash=safe_hash,
    __build_class__=builtins.__build_class__,  # the class statement; scripts cannot name it
)


def _bind_getattr(sizes: SizeGuards) -> Callable[..., Any]:
    """The script's ``getattr``: a closure, not a ``functools.partial`` - a partial's
    ``keywords`` dict is public and shared by every call of the release."""
    missing = _MISSING

    def getattr(obj: Any, name: Any, default: Any = missing) -> Any:
        if default is missing:
            return guarded_getattr(obj, name, sizes=sizes)
        return guarded_getattr(obj, name, default, sizes=sizes)

    return getattr


_MISSING = object()
_LOAD_ONLY = object()  # inputs of TaskProgram._run when only the module body runs


def scrub(text: str) -> str:
    """Truncate and strip absolute host paths from a message that leaves the sandbox."""
    if len(text) > MAX_MESSAGE_CHARS:
        text = text[:MAX_MESSAGE_CHARS] + "...[truncated]"
    return _HOST_PATH.sub("<path>", text)


def safe_str(exc: BaseException) -> str:
    try:
        return scrub(str(exc))
    except BaseException:  # a pathological __str__ path (deep args, huge data)
        return "<unprintable message>"


class PrintCapture:
    """Captured, byte-capped ``print`` output of one call.

    Scripts get ``PrintCapture.function()`` - a plain closure - never this object,
    so they cannot reach the buffer (and bypass the cap) through attributes.
    """

    __slots__ = ("cap", "dropped", "parts", "size")

    def __init__(self, cap: int = MAX_PRINT_BYTES) -> None:
        self.cap = cap
        self.parts: list[str] = []
        self.size = 0
        self.dropped = False

    def function(self) -> Callable[..., None]:
        capture = self

        def print(*args: Any, sep: Any = " ", end: Any = "\n") -> None:
            sep = " " if sep is None else str(sep)
            end = "\n" if end is None else str(end)
            for i, arg in enumerate(args):
                if capture.size >= capture.cap:  # stop building what would be dropped
                    capture.dropped = True
                    return
                capture._add((sep if i else "") + str(arg))
            capture._add(end)

        return print

    def _add(self, text: str) -> None:
        room = self.cap - self.size
        if len(text) > room:
            text = text[:max(room, 0)]
            self.dropped = True
        if text:
            self.parts.append(text)
            self.size += len(text)

    def text(self) -> str:
        if not self.parts:
            return ""
        return "".join(self.parts) + ("\n[print output truncated]\n" if self.dropped else "")


class _Importer:
    """``__import__`` for scripts: facades only; ``vm`` is built per call, lazily.

    Its own object, not a bound method of the program: the program's builtins hold
    it, and a bound method would make program and builtins a reference cycle that
    only the cyclic garbage collector frees."""

    __slots__ = ("_facades", "_vm_factory")

    def __init__(self, facades: Mapping[str, Any], vm_factory: Callable[[CallScope], Any] | None):
        self._facades = facades
        self._vm_factory = vm_factory

    def __call__(self, name: str, globals: Any = None, locals: Any = None,
                 fromlist: Any = (), level: int = 0) -> Any:
        if level:
            raise violation("relative imports are not allowed")
        if type(fromlist) is list:
            # Only C code calls __import__ with a list (PyImport_Import, e.g. strftime
            # importing "time"); script import statements pass None or a tuple.  The
            # module goes to that C function, never to the script.
            if name in _C_INTERNAL_IMPORTS or name.startswith(("encodings.", "numpy.")):
                return builtins.__import__(name, None, None, fromlist, 0)
            raise violation(f'internal import of "{name}" is not allowed')
        if name == "vm":
            if self._vm_factory is None or type(globals) is not dict or _SCOPE not in globals:
                raise violation('module "vm" is not available here')
            vm = globals.get(_VM)
            if vm is None:
                vm = globals[_VM] = self._vm_factory(globals[_SCOPE])
            return vm
        key = name if fromlist else name.split(".", 1)[0]
        try:
            return self._facades[key]
        except KeyError:
            raise violation(f'import of "{name}" is not allowed') from None


class TaskProgram:
    """One loaded release of a task: verified code plus what each call needs."""

    def __init__(
        self,
        code: CodeType,
        *,
        name: str,
        release: int,
        entry: str = "main",
        vm_factory: Callable[[CallScope], Any] | None = None,
        limits: ResourceLimits = DEFAULT_LIMITS,
    ):
        self.code = code
        self.name = name
        self.release = release
        self.entry = entry
        self.filename = code.co_filename
        self.limits = limits
        self._boundary = limits.boundary()
        # Per-call objects only a script that names them can reach: a name no code
        # object of the module mentions can never be loaded, so it is left out.
        named = _names(code)
        self._prints = "print" in named
        self._defines_types = not named.isdisjoint((policy.WRITE, policy.CLASSES, policy.METACLASS))
        sizes = SizeGuards(limits.max_int_bits, limits.max_sequence)
        getattr_ = _bind_getattr(sizes)
        builtins_ = dict(_BUILTINS_TEMPLATE, __import__=_Importer(get_facades(), vm_factory),
                         getattr=getattr_, pow=sizes.pow, format=sizes.format)
        self._base_globals: dict[str, Any] = {
            "__builtins__": builtins_,  # shared by calls: unreachable to scripts ("_" name)
            "__name__": f"task.{name}",
            policy.CLOCK: time.monotonic,
            policy.GETATTR: getattr_,
            policy.ARITH: sizes.arith,
            policy.AUG: sizes.aug,
            policy.FORMAT: sizes.format_field,
            policy.PERCENT: sizes.percent,
            policy.TYPE: type,
            policy.FLOAT: float,
        }

    # -- per-call environment ----------------------------------------------------

    def new_globals(self, scope: CallScope, output: PrintCapture | None) -> dict[str, Any]:
        g = dict(self._base_globals)
        if output is not None and self._prints:
            g["print"] = output.function()  # a reserved name: scripts cannot rebind it
        if self._defines_types:
            types_ = ScriptTypes(g)
            g[policy.WRITE] = types_.write
            g[policy.CLASSES] = types_.classes
            g[policy.METACLASS] = types_.metaclass
        g[policy.EXPIRED] = scope.checkpoint
        g[_SCOPE] = scope
        scope.bind(g)
        return g

    def load_check(self, scope: CallScope) -> None:
        """Execute the module body once, so a release whose top level fails is
        refused at install instead of failing every call."""
        self._run(scope, PrintCapture(self.limits.max_print_bytes), _LOAD_ONLY, None)

    # -- one call -------------------------------------------------------------------

    def call(self, inputs: Any, scope: CallScope, upstream: dict[str, Any] | None = None) -> tuple[Any, str]:
        """Run the entry point on (already copied) ``inputs``; return (result, printed).

        A task with prerequisites is called as ``main(inputs, upstream)`` where
        ``upstream`` maps each prerequisite's name to its (copied) result.
        """
        if not self._prints:  # nothing can print: no capture to make or read
            return self._run(scope, None, inputs, upstream), ""
        output = PrintCapture(self.limits.max_print_bytes)
        return self._run(scope, output, inputs, upstream), output.text()

    def _run(self, scope: CallScope, output: PrintCapture | None, inputs: Any,
             upstream: dict[str, Any] | None) -> Any:
        """Execute the module in fresh globals, then (unless only loading) the entry
        point; make every error public.  On every call's path: one frame, no closures.

        The public error is built from strings only and raised *outside* the
        ``except`` block, so neither ``__context__`` nor a traceback carries the
        script's exception, frames or globals to the host.  When the call is over
        its scope is closed, then its globals emptied: task code resumed while
        they go (a suspended generator's ``finally``) stops at its first
        checkpoint.  (No check before the module runs: the lane refused a call
        cancelled or out of time in the queue, and ``bind`` arms the first
        checkpoint for one cancelled since.)
        """
        set_current_scope(scope)
        public: VmError | None = None
        g: dict[str, Any] | None = None
        try:
            g = self.new_globals(scope, output)
            exec(self.code, g)
            if inputs is _LOAD_ONLY:
                return None
            entry = g.get(self.entry)
            if not callable(entry):
                raise TaskError(f'entry function "{self.entry}" is not defined', exc_type="NameError")
            raw = entry(inputs) if upstream is None else entry(inputs, upstream)
            try:
                result = copy_plain(raw, self._boundary)
            except (BoundaryError, TypeError) as exc:
                raise TaskError(f"task returned an unsupported result: {exc}",
                                exc_type="ResultError") from None
            scope.check()  # also catches an interrupt the script swallowed (return in finally)
            return result
        except Interrupt as intr:
            public = _public_interrupt(intr)
        except MemoryError:
            public = ResourceLimitExceeded("the task ran out of memory")
        except BaseException as exc:  # SystemExit and friends never pass the boundary
            public = self._public_error(exc)
        finally:
            scope.close()
            set_current_scope(None)
            # The module's functions hold these globals and the globals hold them:
            # emptying the dict frees the call's objects now, by reference counting,
            # instead of leaving cyclic garbage for the collector to trace.
            if g is not None:
                g.clear()
        try:
            raise public
        finally:  # the traceback holds this frame: no reference cycle through it
            public = None

    def _public_error(self, exc: BaseException) -> VmError:
        """A fresh instance of a vmcontainer-defined class, from strings only."""
        if isinstance(exc, VmError):
            cls = next(c for c in type(exc).__mro__ if c.__module__.startswith("vmcontainer."))
            if type(exc) is cls:  # raised by the host (or re-raised unchanged)
                if cls is TaskError:
                    return TaskError(safe_str(exc), exc_type=str(exc.exc_type),
                                     script_traceback=str(exc.script_traceback))
                return cls(safe_str(exc))
            # a task-defined subclass of one of our errors: the script raised it
        name = _type_name(exc)
        return TaskError(f"{name}: {safe_str(exc)}", exc_type=name,
                         script_traceback=self._script_traceback(exc))

    def _script_traceback(self, exc: BaseException) -> str:
        frames = [
            f'  File "{fs.filename}", line {fs.lineno}, in {fs.name}'
            for fs in traceback.extract_tb(exc.__traceback__)
            if fs.filename == self.filename
        ]
        return "Traceback (most recent call last):\n" + "\n".join(frames) + (
            f"\n{_type_name(exc)}: {safe_str(exc)}"
        )


def _names(code: CodeType) -> set[str]:
    """Every name the module's code objects (nested ones too) load, store or look up."""
    names = set(code.co_names)
    stack = [code]
    while stack:
        for const in stack.pop().co_consts:
            if type(const) is CodeType:
                names.update(const.co_names)
                stack.append(const)
    return names


def _type_name(exc: BaseException) -> str:
    name = type(exc).__name__
    return name if type(name) is str else "Exception"


def _public_interrupt(intr: Interrupt) -> VmError:
    kind = intr.kind
    if kind == "timeout":
        return TaskTimeout(intr.message)
    if kind == "cancelled":
        return TaskCancelled(intr.message)
    if kind == "limit":
        return ResourceLimitExceeded(intr.message)
    return SandboxViolation(scrub(intr.message))
