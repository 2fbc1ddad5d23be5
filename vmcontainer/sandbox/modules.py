"""The module facades a task script gets from ``import``: capabilities, not modules.

Why facades
-----------
A script's static attribute loads (``np.sum``, ``x.shape``) compile to plain,
unguarded attribute loads.  So anything a script can reach by walking public
attribute names from what ``import`` gave it is, in effect, handed to it.  A real
module is a doorway to everything it imported (``re.enum.sys``,
``numpy.f2py.os``, ``numpy.ma.core.builtins``), so a script never gets one.  It
gets a read-only ``Facade`` (see ``facade.py``) holding an allowlist of members,
each chosen so that walking *its* public attributes reaches no module, ``sys``,
``os``, ``builtins``, frames, code objects, files, ctypes/cffi, or
process-wide state.  ``tests/test_facades.py`` checks this by walking the
attribute graph.

Where the real member is not safe as it is, the facade holds a thin Python
wrapper.  A wrapper does one of four things:

* **caps work done in one C call** that no Python-level timer can stop:
  allocating from a shape (``MAX_ARRAY_ELEMENTS``), big-integer combinatorics
  (``MAX_COUNT_ARGUMENT``), random bytes (``MAX_RANDOM_BYTES``).  The check runs
  *before* anything is allocated.  These caps stop the cheap one-liners.  They
  do not replace the worker process's memory and time limits.
* **keeps numpy data numeric**: dtypes other than bool/int/uint/float/complex
  (object, string, bytes, void/structured, datetime) are refused on the way in
  and checked on the way out.  Object arrays run task code when the host later
  compares or serialises them, and they are a way to smuggle arbitrary objects
  through numpy.
* **refuses one argument** that turns a harmless function into a bad one:
  ``json`` ``cls=`` (builds any class it is given), the ``re.DEBUG`` flag (prints
  to the host's stdout), calling with no seed (OS entropy: results that cannot
  be reproduced).
* **hides an object** whose public attributes lead somewhere bad.  numpy's
  ``Generator.bit_generator`` leads to ``.ctypes``/``.cffi`` (function pointers,
  raw state addresses), ``.capsule`` and ``.lock``.  typing aliases forward any
  attribute to their ``collections.abc`` origin, and ``ABCMeta.register`` on a
  shared ABC changes ``isinstance`` answers for the whole process.

Facades are built once per process and shared by every call.  Facades, ufuncs,
classes and typing aliases are read-only, or refuse writes.  Writes to classes
and functions are also refused by the runtime write guard.

Left out on purpose (grouped by reason)
---------------------------------------
* Files, network, pickle: ``json.dump/load``, ``base64.encode/decode`` (file
  objects), ``hashlib.file_digest``, numpy ``load/save/savez/loadtxt/savetxt/
  genfromtxt/fromfile/tofile/memmap`` (``np.load`` unpickles; ``loadtxt``
  fetches URLs).
* Submodules that lead back to real modules: ``numpy.ctypeslib`` (ctypes),
  ``f2py`` (os/sys/subprocess), ``testing`` (``exec``), ``ma``/``lib``/``core``/
  ``char``/``rec``/``emath``/``dtypes``, ``re.enum``/``re.sys`` and the like.
* Raw or uninitialised memory: ``numpy.frombuffer``,
  ``lib.stride_tricks.as_strided`` (out-of-bounds reads), and calling
  ``numpy.ndarray(...)``/``numpy.empty`` directly (heap contents).  The facade
  ``ndarray`` only works with ``isinstance``.  ``empty``/``empty_like`` give
  zeros.
* Process-wide state: ``numpy.set_printoptions/seterr/seterrcall/setbufsize``,
  the legacy ``numpy.random`` functions and ``seed``, module-level ``random.*``
  and ``random.seed``, ``re.purge``, ``show_config/show_runtime/info``
  (host stdout).
* Universal getattr/setattr routes: ``operator.attrgetter/methodcaller``;
  ``functools.wraps`` only takes ``wrapped`` (its ``assigned=``/``updated=`` name
  dunders such as ``__code__``/``__globals__``), and ``wraps``/``total_ordering``
  only decorate the script's own functions and classes.  ``string.Formatter``
  walks attributes (CVE-2023-41039, CVE-2026-76825).
* Writes that get round the write guard: ``operator.setitem/delitem`` and the
  in-place ``operator.i*`` functions are the subscript assignment and ``+=``
  that the runtime guards, with no guard.
* Nondeterminism: ``random.SystemRandom``, unseeded ``random.Random()`` and
  ``numpy.random.default_rng()``, ``statistics.NormalDist`` (``samples()``
  seeds from the OS when given no seed).
* Not needed, or could be abused with nothing gained: ``numpy.vectorize/
  frompyfunc/fromiter``, ``numpy.finfo/iinfo`` (cached shared instances),
  ``collections.UserDict/UserList`` (unsealed ABCs), ``hashlib.new`` (names
  any OpenSSL algorithm) and ``shake_*`` (output length is unbounded).

Known limits (enforced elsewhere)
---------------------------------
numpy ufuncs are wrapped (``Ufunc``): numeric loops only (no ``dtype=object`` /
``signature=``), broadcast and ``outer`` sizes capped.  ``ndarray.astype/view``
and ``type(array)`` are checked by the runtime guards.  ``out=``, ``ufunc.at``
and ``Generator.shuffle`` write into arrays they are given: inputs reach scripts
as copies.  The caps here are on allocations from shapes and counts; array
methods that grow (``resize``, ``repeat``) and ``einsum`` are bounded only by the
process (``isolation="process"``: RLIMIT_AS).  C functions called from a script
frame import through the script's ``__import__``; ``_prime_numpy_lazy_imports``
has numpy load the helpers it caches before any script runs.  Refusals raised
here are uncatchable inside a call (``scope.refuse``).
"""

from __future__ import annotations

import abc
import base64
import bisect
import builtins
import collections
import datetime
import functools
import hashlib
import heapq
import inspect
import itertools
import json
import math
import operator
import random
import re
import statistics
import string
import threading
import time
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import regex

from ..scheduler.scope import Interrupt, current_scope, refuse
from . import policy
from .facade import Facade, make_facade
from .guards import SizeGuards
from .limits import DEFAULT_LIMITS

__all__ = [
    "MAX_ARRAY_ELEMENTS",
    "MAX_COUNT_ARGUMENT",
    "MAX_RANDOM_BYTES",
    "MAX_SEQUENCE_ITEMS",
    "MAX_SPLIT_SECTIONS",
    "get_facades",
]

MAX_ARRAY_ELEMENTS = 50_000_000
# Facades are shared by every task, so they check sizes against the default limits.
_SIZES = SizeGuards(DEFAULT_LIMITS.max_int_bits, DEFAULT_LIMITS.max_sequence)
"""Largest number of elements a numpy call may allocate from a shape or count argument."""

MAX_COUNT_ARGUMENT = 10_000
"""Largest n for math.factorial/comb/perm, itertools.product(repeat=)/tee(n) and rng.spawn."""

MAX_RANDOM_BYTES = 1 << 24
"""Largest random.Random.randbytes / getrandbits (in bytes) and Generator.bytes request."""

MAX_SEQUENCE_ITEMS = MAX_ARRAY_ELEMENTS
"""Largest list a single random.choices/sample or statistics.quantiles call may build."""

MAX_SPLIT_SECTIONS = 1_000_000
"""Largest section count for numpy.split/array_split (each section is a new array object)."""


# --- shared helpers ------------------------------------------------------------------


def _limit(n: int, limit: int, what: str) -> None:
    if n > limit:
        raise refuse("limit", f"{what}: {n} exceeds the limit of {limit}")


def _named(fn: Callable[..., Any], name: str, module: str, doc: str | None = None) -> Any:
    fn.__name__ = name
    fn.__qualname__ = name
    fn.__module__ = module
    if doc is not None:
        fn.__doc__ = doc
    return fn


def _is_script_function(fn: object) -> bool:
    """True for functions compiled by the task, i.e. not the host's own.

    Host functions (stdlib, numpy, these facades) run with the real builtins; a
    task's globals carry the sandbox's restricted builtins instead.
    """
    if not isinstance(fn, types.FunctionType):
        return False
    fn_builtins = fn.__globals__.get("__builtins__")
    return fn_builtins is not builtins and fn_builtins is not builtins.__dict__


def _pick(module: Any, names: Iterable[str], optional: Iterable[str] = ()) -> dict[str, Any]:
    """``{name: module.name}`` for ``names`` (must exist) and ``optional`` (if present)."""
    out = {name: getattr(module, name) for name in names}
    for name in optional:
        if hasattr(module, name):
            out[name] = getattr(module, name)
    return out


def _facade(name: str, members: Mapping[str, Any]) -> Facade:
    fixed: dict[str, Any] = {}
    for key, value in members.items():
        # Non-function callables that bind like methods (numpy's array-function
        # dispatchers, for one) must not turn into methods of the facade.
        binds = hasattr(type(value), "__get__") and not isinstance(value, (type, types.FunctionType))
        fixed[key] = staticmethod(value) if binds else value
    return make_facade(name, fixed)


# --- math ----------------------------------------------------------------------------


def _check_count_args(what: str, *args: Any) -> None:
    for arg in args:
        try:
            value = operator.index(arg)
        except TypeError:
            continue  # let math raise its own TypeError
        _limit(value, MAX_COUNT_ARGUMENT, f"math.{what} argument")


def _math() -> Facade:
    members = {
        name: getattr(math, name)
        for name in dir(math)
        if not name.startswith("_") and not isinstance(getattr(math, name), types.ModuleType)
    }

    def factorial(n):
        _check_count_args("factorial", n)
        return math.factorial(n)

    def comb(n, k):
        _check_count_args("comb", n, k)
        return math.comb(n, k)

    def perm(n, k=None):
        _check_count_args("perm", n, k)
        return math.perm(n, k)

    def prod(iterable, *, start=1):
        values = list(iterable)
        bits = sum(v.bit_length() for v in [start, *values] if type(v) is int)
        if bits > _SIZES.max_int_bits:
            raise refuse("limit", f"math.prod: a {bits}-bit product exceeds the size limit")
        return math.prod(values, start=start)

    for fn in (factorial, comb, perm, prod):
        members[fn.__name__] = _named(fn, fn.__name__, "math", getattr(math, fn.__name__).__doc__)
    return _facade("math", members)


# --- json ----------------------------------------------------------------------------


def _json() -> Facade:
    def dumps(obj, *, skipkeys=False, ensure_ascii=True, check_circular=True, allow_nan=True,
              cls=None, indent=None, separators=None, default=None, sort_keys=False):
        if cls is not None:
            raise refuse("violation", "json.dumps: cls= is not allowed")
        return json.dumps(obj, skipkeys=skipkeys, ensure_ascii=ensure_ascii,
                          check_circular=check_circular, allow_nan=allow_nan, indent=indent,
                          separators=separators, default=default, sort_keys=sort_keys)

    def loads(s, *, cls=None, object_hook=None, parse_float=None, parse_int=None,
              parse_constant=None, object_pairs_hook=None):
        if cls is not None:
            raise refuse("violation", "json.loads: cls= is not allowed")
        return json.loads(s, object_hook=object_hook, parse_float=parse_float,
                          parse_int=parse_int, parse_constant=parse_constant,
                          object_pairs_hook=object_pairs_hook)

    return _facade("json", {
        "dumps": _named(dumps, "dumps", "json", json.dumps.__doc__),
        "loads": _named(loads, "loads", "json", json.loads.__doc__),
        "JSONDecodeError": json.JSONDecodeError,
    })


# --- sealed ABCs (collections.ChainMap, typing) -----------------------------------------


class _SealedABCMeta(abc.ABCMeta):
    """ABCMeta whose ``register`` is refused.

    ``SomeABC.register(cls)`` edits a registry shared by the whole process.  It
    also spreads upwards: registering with ``ChainMap`` makes a class a
    ``MutableMapping`` everywhere.  Host code that trusts ``isinstance`` (result
    validators, serialisers) would then treat a task's object as a mapping.
    """

    def register(cls, subclass):
        raise refuse("violation", "registering virtual subclasses of shared ABCs is not allowed")


_sealed_lock = threading.Lock()
_sealed_abcs: dict[type, type] = {}


def _sealed_abc(base: type) -> type:
    """A subclass of ABC ``base`` with the sealed metaclass (cached)."""
    if isinstance(base, _SealedABCMeta) or not isinstance(base, abc.ABCMeta):
        return base
    with _sealed_lock:
        sealed = _sealed_abcs.get(base)
        if sealed is None:
            ns = {"__slots__": (), "__module__": base.__module__, "__qualname__": base.__qualname__}
            sealed = _SealedABCMeta(base.__name__, (base,), ns)
            _sealed_abcs[base] = sealed
        return sealed


class ChainMap(collections.ChainMap, metaclass=_SealedABCMeta):
    __doc__ = collections.ChainMap.__doc__


def _collections() -> Facade:
    return _facade("collections", {
        **_pick(collections, ["Counter", "OrderedDict", "defaultdict", "deque", "namedtuple"]),
        "ChainMap": ChainMap,
    })


# --- itertools, functools, heapq, bisect ----------------------------------------------


def _itertools() -> Facade:
    members = {
        name: getattr(itertools, name)
        for name in dir(itertools)
        if not name.startswith("_") and callable(getattr(itertools, name))
    }

    def product(*iterables, repeat=1):
        _limit(operator.index(repeat), MAX_COUNT_ARGUMENT, "itertools.product repeat")
        return itertools.product(*iterables, repeat=repeat)

    def tee(iterable, n=2):
        _limit(operator.index(n), MAX_COUNT_ARGUMENT, "itertools.tee n")
        return itertools.tee(iterable, n)

    members["product"] = _named(product, "product", "itertools", itertools.product.__doc__)
    members["tee"] = _named(tee, "tee", "itertools", itertools.tee.__doc__)
    return _facade("itertools", members)


def _functools() -> Facade:
    def wraps(wrapped):
        def decorator(wrapper):
            if not _is_script_function(wrapper):
                raise refuse("violation", "functools.wraps only decorates the script's own functions")
            return functools.update_wrapper(wrapper, wrapped)

        return decorator

    def total_ordering(cls):
        own = getattr(cls, "__dict__", {}) if isinstance(cls, type) else {}
        if not any(_is_script_function(own.get(op)) for op in ("__lt__", "__le__", "__gt__", "__ge__")):
            raise refuse("violation", "functools.total_ordering only decorates the script's own classes")
        return functools.total_ordering(cls)

    return _facade("functools", {
        **_pick(functools, ["reduce", "partial", "lru_cache", "cache", "cmp_to_key",
                            "cached_property"]),
        "wraps": _named(wraps, "wraps", "functools", functools.wraps.__doc__),
        "total_ordering": _named(total_ordering, "total_ordering", "functools",
                                 functools.total_ordering.__doc__),
    })


def _heapq() -> Facade:
    return _facade("heapq", _pick(heapq, heapq.__all__))


def _bisect() -> Facade:
    return _facade("bisect", _pick(
        bisect, ["bisect", "bisect_left", "bisect_right", "insort", "insort_left", "insort_right"]))


# --- statistics, datetime -------------------------------------------------------------


def _statistics() -> Facade:
    members = _pick(statistics, [
        "mean", "fmean", "median", "median_low", "median_high", "median_grouped", "mode",
        "multimode", "pstdev", "stdev", "pvariance", "variance", "geometric_mean",
        "harmonic_mean", "correlation", "covariance", "linear_regression", "StatisticsError",
    ])

    def quantiles(data, *, n=4, method="exclusive"):
        _limit(operator.index(n), MAX_SEQUENCE_ITEMS, "statistics.quantiles n")
        return statistics.quantiles(data, n=n, method=method)

    members["quantiles"] = _named(quantiles, "quantiles", "statistics", statistics.quantiles.__doc__)
    return _facade("statistics", members)


def _datetime() -> Facade:
    return _facade("datetime", _pick(
        datetime,
        ["date", "datetime", "time", "timedelta", "timezone", "tzinfo", "MINYEAR", "MAXYEAR"],
        optional=["UTC"],
    ))


# --- re, string ------------------------------------------------------------------------
#
# Catastrophic backtracking (``re.match(r'(a|aa)+$', 'a' * 40 + 'b')``) is one C call that
# no checkpoint can stop.  So the ``re`` facade runs on the third-party ``regex`` engine in
# VERSION0 (re-compatible) mode: its matching takes a ``timeout``.  Every matching call gets
# what is left of the call's deadline, and running out raises ``Interrupt("timeout")``,
# which the runtime turns into ``TaskTimeout``.  Scripts see stdlib ``re``'s API and syntax:
# a pattern must compile under stdlib ``re`` first, then it is re-spelled so that ``regex``
# reads it the same way (see ``_regex_spelling``).  ``Pattern`` and ``Match`` wrap the
# engine's objects, so no attribute leads to an unbounded matcher.
#
# Limits: ``regex`` measures its timeout in process CPU time (C ``clock()``), checked
# every 256 steps of the matcher.  On a loaded machine the call ends after the deadline by
# the CPU time it did not get; other threads' CPU time can end it early, which is retried
# below.  Cancelling a call does not stop a match already running: it stops at the deadline.
# Compiling is uninterruptible host work (up to ~0.2 s for a ``MAX_PATTERN_CHARS`` pattern).

MAX_PATTERN_CHARS = 10_000
"""Longest pattern the ``re`` facade compiles."""

REGEX_DEFAULT_TIMEOUT = 1.0
"""Time limit in seconds of one ``re`` matching call made outside a task call."""

# A match that stopped with at least this much of the deadline left stopped early (other
# threads advanced regex's CPU clock): it is run again with what is left.
_REGEX_RETRY_MIN = 0.005
_REGEX_MAX_TIMEOUT = 86_400.0  # regex keeps the timeout in clock ticks: keep it finite
_REGEX_TIMEOUT_MESSAGE = "regex matching exceeded the call deadline"
_RE_TO_REGEX_FLAGS = tuple((int(std), int(rx)) for std, rx in (
    (re.IGNORECASE, regex.IGNORECASE), (re.LOCALE, regex.LOCALE),
    (re.MULTILINE, regex.MULTILINE), (re.DOTALL, regex.DOTALL), (re.UNICODE, regex.UNICODE),
    (re.VERBOSE, regex.VERBOSE), (re.ASCII, regex.ASCII),
))
_RE_FLAGS = functools.reduce(operator.or_, (std for std, _ in _RE_TO_REGEX_FLAGS))
# regex behaviours stdlib re does not have (fuzzy best/enhanced match, full case folding,
# POSIX leftmost-longest, reverse search, Unicode word boundaries, VERSION1, debug output).
_REGEX_ONLY_FLAGS = int(regex.BESTMATCH | regex.ENHANCEMATCH | regex.FULLCASE | regex.POSIX
                        | regex.REVERSE | regex.WORD | regex.VERSION1 | regex.DEBUG)
_STDLIB_REPEAT_BODY = re.compile(r"[0-9]*(?:,[0-9]*)?\}")  # what follows '{' in 'a{2,3}'
_PATTERN_CACHE_SIZE = 512


def _re_flags(flags: Any) -> Any:
    if operator.index(flags) & re.DEBUG:
        raise refuse("violation", "re.DEBUG is not allowed (it prints to the host's stdout)")
    return flags


def _regex_flags(flags: int) -> int:
    unknown = flags & ~_RE_FLAGS
    if unknown:
        raise ValueError(f"re flags {unknown:#x} are not supported")
    out = int(regex.VERSION0)
    for std, rx in _RE_TO_REGEX_FLAGS:
        if flags & std:
            out |= rx
    return out


def _regex_spelling(pattern: str) -> str:
    """``pattern`` (which stdlib ``re`` accepted) spelled so that ``regex`` reads it the same way.

    Two spellings that stdlib ``re`` reads as literals mean something else to ``regex``,
    even in VERSION0: a ``{`` that opens no counted repeat can open fuzzy-matching
    constraints (``a{e<=1}``), and ``[:`` inside a set opens a POSIX class
    (``[[:digit:]]``).  Both get a backslash.  ``\\{`` and ``\\:`` are the same literal to
    both engines, in a set or out of one, and in a verbose-mode comment they change nothing.
    """
    if "{" not in pattern and "[:" not in pattern:
        return pattern
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        ch = pattern[i]
        if ch == "\\":
            if pattern.startswith("N{", i + 1):  # \N{NAME}: the braces belong to the escape
                end = pattern.find("}", i + 3)
                end = n if end < 0 else end + 1
            else:
                end = i + 2
            out.append(pattern[i:end])
            i = end
            continue
        if ch == "{" and (pattern.startswith("}", i + 1)
                          or not _STDLIB_REPEAT_BODY.match(pattern, i + 1)):
            out.append("\\{")
        elif ch == "[" and pattern.startswith(":", i + 1):
            out.append("[\\:")
            i += 1
        else:
            out.append(ch)
        i += 1
    return "".join(out)


def _re_error(exc: Exception, pattern: Any = None) -> re.error:
    return re.error(str(getattr(exc, "msg", None) or exc), pattern)


def _bounded(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args, timeout=...)`` with what is left of the call's deadline.

    Only for calls that run no script code: a call that stopped early is run again.
    """
    scope = current_scope()
    deadline = (scope.deadline if scope is not None
                else time.monotonic() + REGEX_DEFAULT_TIMEOUT)
    while True:
        if scope is not None:
            scope.check()
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise Interrupt("timeout", _REGEX_TIMEOUT_MESSAGE)
        try:
            return fn(*args, timeout=min(remaining, _REGEX_MAX_TIMEOUT))
        except TimeoutError:
            if scope is not None and scope.cancelled:
                raise Interrupt("cancelled", "call cancelled") from None
            if deadline - time.monotonic() < _REGEX_RETRY_MIN:
                raise Interrupt("timeout", _REGEX_TIMEOUT_MESSAGE) from None
        except regex.error as exc:  # bad replacement templates
            raise _re_error(exc) from None


class Pattern:
    """A compiled regular expression (stdlib ``re.Pattern``'s API).

    Matching is bounded by the call's deadline.  Made by ``re.compile``.
    """

    __slots__ = ("_vm_flags", "_vm_groupindex", "_vm_pattern", "_vm_rx")
    __module__ = "re"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("cannot create 're.Pattern' instances; use re.compile")

    def __init_subclass__(cls, **kwargs: Any) -> None:
        raise TypeError("type 're.Pattern' is not an acceptable base type")

    __class_getitem__ = classmethod(types.GenericAlias)

    @property
    def pattern(self):
        """The pattern string from which the pattern object was compiled."""
        return self._vm_pattern

    @property
    def flags(self):
        """The regex matching flags (stdlib ``re`` values)."""
        return self._vm_flags

    @property
    def groups(self):
        """The number of capturing groups in the pattern."""
        return self._vm_rx.groups

    @property
    def groupindex(self):
        """A mapping of group names to group numbers."""
        return self._vm_groupindex

    def match(self, string, pos=0, endpos=None):
        """Match at the start of ``string[pos:endpos]``: a Match, or None."""
        return _new_match(_bounded(self._vm_rx.match, string, pos, endpos), self)

    def fullmatch(self, string, pos=0, endpos=None):
        """Match all of ``string[pos:endpos]``: a Match, or None."""
        return _new_match(_bounded(self._vm_rx.fullmatch, string, pos, endpos), self)

    def search(self, string, pos=0, endpos=None):
        """The first match anywhere in ``string[pos:endpos]``: a Match, or None."""
        return _new_match(_bounded(self._vm_rx.search, string, pos, endpos), self)

    def findall(self, string, pos=0, endpos=None):
        """All non-overlapping matches: strings, or tuples of groups."""
        return _bounded(self._vm_rx.findall, string, pos, endpos)

    def finditer(self, string, pos=0, endpos=None):
        """An iterator of Match objects over the non-overlapping matches."""
        return _MatchIterator._vm_new(self, string, pos, endpos)

    def split(self, string, maxsplit=0):
        """Split ``string`` by the matches."""
        return _bounded(self._vm_rx.split, string, maxsplit)

    def sub(self, repl, string, count=0):
        """``string`` with matches replaced by ``repl`` (a template, or a function of a Match)."""
        return self._vm_subn(repl, string, count)[0]

    def subn(self, repl, string, count=0):
        """Like ``sub``, and the number of replacements: ``(new_string, n)``."""
        return self._vm_subn(repl, string, count)

    def _vm_subn(self, repl, string, count):
        count = operator.index(count)
        if not callable(repl):
            return _bounded(self._vm_rx.subn, repl, string, count)
        # ``repl`` is (most likely) script code: it must not run again when a step is
        # retried, so the matches come one step at a time from a bounded iterator.
        it = _MatchIterator._vm_new(self, string, 0, None)
        limit = None if count == 0 else max(count, 0)  # stdlib: count < 0 replaces nothing
        pieces = []
        last = n = 0
        while limit is None or n < limit:
            raw = it._vm_next_raw()
            if raw is None:
                break
            start, end = raw.span()
            pieces.append(string[last:start])
            piece = repl(_new_match(raw, self, it._vm_pos_override))
            if piece is not None:  # as in stdlib re: None replaces with nothing
                pieces.append(piece)
            last = end
            n += 1
        pieces.append(string[last:])
        return ("" if isinstance(string, str) else b"").join(pieces), n

    def __eq__(self, other):
        if not isinstance(other, Pattern):
            return NotImplemented
        return (type(self._vm_pattern) is type(other._vm_pattern)
                and self._vm_pattern == other._vm_pattern and self._vm_flags == other._vm_flags)

    def __hash__(self):
        return hash((self._vm_pattern, self._vm_flags))

    def __repr__(self) -> str:
        shown = repr(self._vm_pattern)[:200]
        flags = self._vm_flags & ~(re.UNICODE if isinstance(self._vm_pattern, str) else 0)
        if flags:
            return f"re.compile({shown}, {re.RegexFlag(flags)!r})"
        return f"re.compile({shown})"

    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return self

    def __reduce__(self) -> Any:
        raise refuse("violation", "re patterns cannot be pickled")


class Match:
    """The result of a successful match (stdlib ``re.Match``'s API)."""

    __slots__ = ("_vm_m", "_vm_pos", "_vm_re")
    __module__ = "re"
    __iter__ = None  # like stdlib: m[0] works, iter(m) does not

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("cannot create 're.Match' instances")

    def __init_subclass__(cls, **kwargs: Any) -> None:
        raise TypeError("type 're.Match' is not an acceptable base type")

    __class_getitem__ = classmethod(types.GenericAlias)

    def group(self, *groups):
        """One or more subgroups of the match (group 0 is the whole match)."""
        return self._vm_m.group(*groups)

    def __getitem__(self, group):
        return self._vm_m[group]

    def groups(self, default=None):
        """A tuple of all the subgroups; ``default`` for groups that did not participate."""
        return self._vm_m.groups(default)

    def groupdict(self, default=None):
        """A dict of the named subgroups."""
        return self._vm_m.groupdict(default)

    def start(self, group=0):
        """Index of the start of the substring matched by ``group``."""
        return self._vm_m.start(group)

    def end(self, group=0):
        """Index of the end of the substring matched by ``group``."""
        return self._vm_m.end(group)

    def span(self, group=0):
        """``(start, end)`` of ``group``."""
        return self._vm_m.span(group)

    def expand(self, template):
        """``template`` with backslash escapes and group references filled in."""
        try:
            return self._vm_m.expand(template)
        except regex.error as exc:
            raise _re_error(exc) from None

    @property
    def string(self):
        """The string passed to match() or search()."""
        return self._vm_m.string

    @property
    def re(self):
        """The pattern object whose match() or search() produced this match."""
        return self._vm_re

    @property
    def pos(self):
        """The index into the string at which the search started."""
        return self._vm_m.pos if self._vm_pos is None else self._vm_pos

    @property
    def endpos(self):
        """The index into the string beyond which the search did not go."""
        return self._vm_m.endpos

    @property
    def lastindex(self):
        """The integer index of the last matched capturing group."""
        return self._vm_m.lastindex

    @property
    def lastgroup(self):
        """The name of the last matched capturing group (None if it has no name)."""
        # Not regex's lastgroup: that names the last *named* group that matched.
        index = self._vm_m.lastindex
        if index is not None:
            for name, number in self._vm_re._vm_groupindex.items():
                if number == index:
                    return name
        return None

    @property
    def regs(self):
        """The spans of all the groups."""
        return self._vm_m.regs

    def __repr__(self) -> str:
        return f"<re.Match object; span={self._vm_m.span()!r}, match={self._vm_m.group()!r}>"

    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return self

    def __reduce__(self) -> Any:
        raise refuse("violation", "re matches cannot be pickled")


def _new_match(raw: Any, pattern: Pattern, pos: int | None = None) -> Match | None:
    if raw is None:
        return None
    m = object.__new__(Match)
    m._vm_m = raw
    m._vm_re = pattern
    m._vm_pos = pos
    return m


class _MatchIterator:
    """What ``finditer`` returns: one match per step, each step bounded by the deadline.

    ``regex`` times a whole scan from its start, in process CPU time.  A step that stops
    with time left (other threads' CPU time) restarts the scan where the last match ended.
    """

    __slots__ = ("_vm_deadline", "_vm_endpos", "_vm_last_empty", "_vm_pattern", "_vm_pos",
                 "_vm_pos_override", "_vm_resume", "_vm_scanner", "_vm_skip_empty", "_vm_string")
    __module__ = "re"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("cannot create match iterators; use re.finditer")

    def __init_subclass__(cls, **kwargs: Any) -> None:
        raise TypeError("match iterators cannot be subclassed")

    @classmethod
    def _vm_new(cls, pattern: Pattern, string: Any, pos: Any, endpos: Any) -> _MatchIterator:
        it = object.__new__(cls)
        it._vm_pattern = pattern
        it._vm_string = string
        it._vm_pos = pos
        it._vm_endpos = endpos
        scope = current_scope()
        it._vm_deadline = None if scope is not None else time.monotonic() + REGEX_DEFAULT_TIMEOUT
        it._vm_resume = pos  # where the last match ended
        it._vm_last_empty = False  # whether that match was empty
        it._vm_skip_empty = False  # whether this scan may return it again
        it._vm_pos_override = None
        it._vm_scanner = it._vm_scan(pos, scope)  # checks the types and pos now, as stdlib does
        return it

    def _vm_scan(self, pos: Any, scope: Any) -> Any:
        if scope is not None:
            scope.check()
        deadline = scope.deadline if scope is not None else self._vm_deadline
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise Interrupt("timeout", _REGEX_TIMEOUT_MESSAGE)
        return self._vm_pattern._vm_rx.finditer(self._vm_string, pos, self._vm_endpos,
                                                timeout=min(remaining, _REGEX_MAX_TIMEOUT))

    def _vm_next_raw(self) -> Any:
        while True:
            scanner = self._vm_scanner
            if scanner is None:
                return None
            scope = current_scope()
            if scope is not None:
                scope.check()
            try:
                raw = next(scanner)
            except StopIteration:
                self._vm_scanner = None
                return None
            except TimeoutError:
                deadline = scope.deadline if scope is not None else self._vm_deadline
                if scope is not None and scope.cancelled:
                    raise Interrupt("cancelled", "call cancelled") from None
                if deadline - time.monotonic() < _REGEX_RETRY_MIN:
                    self._vm_scanner = None
                    raise Interrupt("timeout", _REGEX_TIMEOUT_MESSAGE) from None
                # Stopped early: scan again from the end of the last match.  After an
                # empty match there, the scan must not return that same empty match.
                self._vm_scanner = self._vm_scan(self._vm_resume, scope)
                self._vm_skip_empty = self._vm_last_empty
                self._vm_pos_override = self._vm_pos
                continue
            start, end = raw.span()
            if self._vm_skip_empty:
                self._vm_skip_empty = False
                if start == end == self._vm_resume:
                    continue
            self._vm_resume = end
            self._vm_last_empty = start == end
            return raw

    def __iter__(self):
        return self

    def __next__(self):
        raw = self._vm_next_raw()
        if raw is None:
            raise StopIteration
        return _new_match(raw, self._vm_pattern, self._vm_pos_override)

    def __reduce__(self) -> Any:
        raise refuse("violation", "match iterators cannot be pickled")


def _compile(pattern: Any, flags: Any = 0) -> Pattern:
    if isinstance(pattern, Pattern):
        if flags:
            raise ValueError("cannot process flags argument with a compiled pattern")
        return pattern
    flags = int(operator.index(_re_flags(flags)))
    # An exact str/bytes copy: a script's subclass cannot change how it reads.
    if isinstance(pattern, str):
        pattern = str.__str__(pattern)
    elif isinstance(pattern, bytes):
        pattern = b"".join((pattern,))
    else:
        raise TypeError("first argument must be string or compiled pattern")
    _limit(len(pattern), MAX_PATTERN_CHARS, "re pattern length")
    return _compile_cached(pattern, flags)


@functools.lru_cache(maxsize=_PATTERN_CACHE_SIZE)
def _compile_cached(pattern: str | bytes, flags: int) -> Pattern:
    std = re.compile(pattern, flags)  # stdlib syntax only, and stdlib's errors
    rx_flags = _regex_flags(flags)
    if isinstance(pattern, str):
        source: str | bytes = _regex_spelling(pattern)
    else:
        source = _regex_spelling(pattern.decode("latin-1")).encode("latin-1")
    try:
        rx = regex.compile(source, rx_flags)
    except regex.error as exc:
        raise _re_error(exc, pattern) from None
    if (rx.flags & _REGEX_ONLY_FLAGS or rx.groups != std.groups
            or dict(rx.groupindex) != dict(std.groupindex)):
        raise re.error("pattern not supported in the sandbox (engines disagree)", pattern)
    p = object.__new__(Pattern)
    p._vm_rx = rx
    p._vm_pattern = pattern
    p._vm_flags = std.flags
    p._vm_groupindex = std.groupindex
    return p


def _re() -> Facade:
    def compile(pattern, flags=0):
        return _compile(pattern, flags)

    def search(pattern, string, flags=0):
        return _compile(pattern, flags).search(string)

    def match(pattern, string, flags=0):
        return _compile(pattern, flags).match(string)

    def fullmatch(pattern, string, flags=0):
        return _compile(pattern, flags).fullmatch(string)

    def findall(pattern, string, flags=0):
        return _compile(pattern, flags).findall(string)

    def finditer(pattern, string, flags=0):
        return _compile(pattern, flags).finditer(string)

    def split(pattern, string, maxsplit=0, flags=0):
        return _compile(pattern, flags).split(string, maxsplit)

    def sub(pattern, repl, string, count=0, flags=0):
        return _compile(pattern, flags).sub(repl, string, count)

    def subn(pattern, repl, string, count=0, flags=0):
        return _compile(pattern, flags).subn(repl, string, count)

    members: dict[str, Any] = {}
    for fn in (compile, search, match, fullmatch, findall, finditer, split, sub, subn):
        members[fn.__name__] = _named(fn, fn.__name__, "re", getattr(re, fn.__name__).__doc__)
    members.update(_pick(
        re,
        ["escape", "error", "IGNORECASE", "I", "MULTILINE", "M", "DOTALL",
         "S", "VERBOSE", "X", "ASCII", "A", "UNICODE", "U"],
        optional=["NOFLAG"],
    ))
    members.update(Pattern=Pattern, Match=Match)
    return _facade("re", members)


class Template(string.Template):
    __doc__ = string.Template.__doc__

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # string.Template compiles a subclass's pattern with stdlib re and the
        # subclass's flags: a script's own pattern would run in an engine with no
        # deadline (catastrophic backtracking hangs the worker).
        for name in ("pattern", "idpattern", "braceidpattern"):
            if name in cls.__dict__:
                raise refuse("violation", f"string.Template subclasses cannot set {name}")
        flags = cls.flags
        if not isinstance(flags, int) or flags & re.DEBUG:
            raise refuse("violation", "string.Template flags must be re flags without re.DEBUG")
        super().__init_subclass__(**kwargs)


def _string() -> Facade:
    return _facade("string", {
        **_pick(string, ["ascii_letters", "ascii_lowercase", "ascii_uppercase", "digits",
                         "hexdigits", "octdigits", "punctuation", "printable", "whitespace",
                         "capwords"]),
        "Template": Template,
    })


# --- random ----------------------------------------------------------------------------


class Random(random.Random):
    """random.Random that must be seeded explicitly, so a task's results are reproducible.

    ``Random()`` and ``seed(None)`` would seed from OS entropy, so they are refused.
    Module-level functions (one generator shared by the whole process) and
    ``SystemRandom`` are not offered.
    """

    def __init__(self, x):
        super().__init__(x)

    def seed(self, a, version=2):
        if a is None:
            raise refuse("violation", "random.Random needs an explicit seed")
        super().seed(a, version)

    def getrandbits(self, k):
        _limit(k, MAX_RANDOM_BYTES * 8, "random.getrandbits k")
        return super().getrandbits(k)

    def randbytes(self, n):
        _limit(n, MAX_RANDOM_BYTES, "random.randbytes n")
        return super().randbytes(n)

    def choices(self, population, weights=None, *, cum_weights=None, k=1):
        _limit(k, MAX_SEQUENCE_ITEMS, "random.choices k")
        return super().choices(population, weights, cum_weights=cum_weights, k=k)

    def sample(self, population, k, *, counts=None):
        _limit(k, MAX_SEQUENCE_ITEMS, "random.sample k")
        return super().sample(population, k, counts=counts)


def _random() -> Facade:
    return _facade("random", {"Random": Random})


# --- operator, hashlib, base64 -----------------------------------------------------------

_OPERATOR_EXCLUDED = frozenset({
    # universal getattr / method-call routes
    "attrgetter", "methodcaller",
    # `x[k] = v`, `del x[k]` and `x += y` without the runtime write guards
    "setitem", "delitem", "iadd", "iand", "iconcat", "ifloordiv", "ilshift", "imatmul", "imod",
    "imul", "ior", "ipow", "irshift", "isub", "itruediv", "ixor",
})


def _operator() -> Facade:
    names = [n for n in operator.__all__ if n not in _OPERATOR_EXCLUDED and not n.startswith("_")]
    members = _pick(operator, names)
    # The same size checks as the `*`, `**` and `<<` operators (sandbox.guards.SizeGuards).
    members.update(
        mul=_named(lambda a, b: _SIZES.arith("*", a, b), "mul", "operator", operator.mul.__doc__),
        pow=_named(lambda a, b: _SIZES.arith("**", a, b), "pow", "operator", operator.pow.__doc__),
        lshift=_named(lambda a, b: _SIZES.arith("<<", a, b), "lshift", "operator", operator.lshift.__doc__),
    )
    return _facade("operator", members)


def _hashlib() -> Facade:
    return _facade("hashlib", _pick(
        hashlib,
        ["md5", "sha1", "sha224", "sha256", "sha384", "sha512", "blake2b", "blake2s", "sha3_256",
         "sha3_512"],
        optional=["sha3_224", "sha3_384"],
    ))


def _base64() -> Facade:
    return _facade("base64", _pick(
        base64,
        ["b64encode", "b64decode", "urlsafe_b64encode", "urlsafe_b64decode", "b16encode",
         "b16decode", "b32encode", "b32decode", "standard_b64encode", "standard_b64decode",
         "b85encode", "b85decode", "a85encode", "a85decode", "encodebytes", "decodebytes"],
        optional=["b32hexencode", "b32hexdecode"],
    ))


# --- typing ------------------------------------------------------------------------------


def _sealed_alias_class(base: type) -> type:
    """A subclass of typing's alias class ``base`` that does not pass attributes to the origin.

    Real aliases pass every non-dunder attribute read and write to their origin.
    That makes ``typing.Sequence.register`` the process-wide ABC registry, and
    ``typing.Mapping.get = f`` a patch of every Mapping.  Sealed aliases pass on
    only ``_`` names (typing's own bookkeeping, which scripts cannot name).  They
    stay sealed when subscripted (``copy_with``).  As bases
    (``class C(Sequence[int])``) they give sealed ABCs.  The subclass adds no
    slots, so typing's freshly built aliases can be re-classed into it.
    """
    with _sealed_lock:
        cls = _sealed_alias_classes.get(base)
        if cls is not None:
            return cls

        def __getattr__(self, attr):
            if attr.startswith("_"):
                return base.__getattr__(self, attr)
            raise AttributeError(attr)

        def __setattr__(self, attr, value):
            if not attr.startswith("_"):
                raise refuse("violation", "typing aliases are read-only")
            base.__setattr__(self, attr, value)

        def __delattr__(self, attr):
            raise refuse("violation", "typing aliases are read-only")

        def __dir__(self):
            return object.__dir__(self)

        def copy_with(self, params):
            return _seal_new_alias(base.copy_with(self, params))

        def __mro_entries__(self, bases):
            return tuple(_sealed_abc(b) if isinstance(b, type) else b
                         for b in base.__mro_entries__(self, bases))

        ns = {
            "__slots__": (), "__module__": "typing", "_vm_sealed": True,
            "__getattr__": __getattr__, "__setattr__": __setattr__,
            "__delattr__": __delattr__, "__dir__": __dir__, "copy_with": copy_with,
            "__mro_entries__": __mro_entries__,
        }
        cls = types.new_class(base.__name__, (base,), {"_root": True}, lambda d: d.update(ns))
        _sealed_alias_classes[base] = cls
        return cls


_sealed_alias_classes: dict[type, type] = {}


def _seal_new_alias(alias: Any) -> Any:
    """Seal an alias that typing has just built (never a cached or shared one)."""
    if not getattr(type(alias), "_vm_sealed", False):
        alias.__class__ = _sealed_alias_class(type(alias))
    return alias


def _sealed_clone(alias: Any) -> Any:
    clone = object.__new__(_sealed_alias_class(type(alias)))
    clone.__dict__.update(alias.__dict__)
    return clone


def _typing() -> Facade:
    alias_names = ["List", "Dict", "Tuple", "Set", "FrozenSet", "Callable", "Iterable",
                   "Iterator", "Sequence", "Mapping", "MutableMapping", "Generator",
                   "DefaultDict", "Counter", "Deque"]
    members = {name: _sealed_clone(getattr(typing, name)) for name in alias_names}
    members.update(_pick(typing, ["Any", "Optional", "Union", "NamedTuple", "TypedDict",
                                  "Literal", "Final", "cast", "TYPE_CHECKING"]))
    return _facade("typing", members)


# --- numpy -------------------------------------------------------------------------------

_NUMERIC_KINDS = frozenset("biufc")


def _dtype(spec: Any, where: str) -> np.dtype:
    """Resolve ``spec`` once and refuse anything but bool/int/uint/float/complex."""
    dt = np.dtype(spec)
    if dt.kind not in _NUMERIC_KINDS:
        raise refuse("violation",
            f"numpy.{where}: dtype {dt} not allowed (only bool, integer, float, complex)")
    return dt


def _numeric(value: Any, where: str) -> Any:
    """Refuse a numpy result (or a tuple/list of them) whose dtype is not numeric."""
    if isinstance(value, (np.ndarray, np.generic)):
        if value.dtype.kind not in _NUMERIC_KINDS:
            raise refuse("violation",
                f"numpy.{where}: result dtype {value.dtype} not allowed "
                "(only bool, integer, float, complex)")
    elif isinstance(value, (tuple, list)):
        for item in value:
            if isinstance(item, (np.ndarray, np.generic, tuple, list)):
                _numeric(item, where)
    return value


def _check_elements(n: int, where: str) -> None:
    if n > MAX_ARRAY_ELEMENTS:
        raise refuse("limit",
            f"numpy.{where}: {n} elements exceeds the limit of {MAX_ARRAY_ELEMENTS}")


def _shape(shape: Any, where: str) -> tuple[int, ...]:
    """Normalise a shape to a tuple of ints (read once) and check its size."""
    try:
        dims: tuple[int, ...] = (operator.index(shape),)
    except TypeError:
        dims = tuple(operator.index(d) for d in itertools.islice(shape, 65))
    if all(d >= 0 for d in dims):  # negative dimensions: numpy raises its own error
        _check_elements(math.prod(dims), where)
    return dims


def _count(value: Any, where: str) -> int:
    n = operator.index(value)
    _check_elements(n, where)
    return n


# ufuncs handed out through ``Ufunc`` (numeric loops only, sizes capped).
_NP_UFUNCS = (
    "abs", "absolute", "fabs", "exp", "exp2", "expm1", "log", "log1p", "log2", "log10",
    "logaddexp", "logaddexp2", "sqrt", "cbrt", "square", "power", "float_power", "reciprocal",
    "sin", "cos", "tan", "arcsin", "arccos", "arctan", "arctan2", "hypot", "sinh", "cosh",
    "tanh", "arcsinh", "arccosh", "arctanh", "deg2rad", "rad2deg", "degrees", "radians",
    "maximum", "minimum", "fmax", "fmin", "floor", "ceil", "rint", "trunc", "sign", "signbit",
    "copysign", "heaviside", "nextafter", "spacing", "modf", "frexp", "ldexp",
    "isnan", "isinf", "isfinite", "add", "subtract", "multiply", "divide", "true_divide",
    "floor_divide", "mod", "remainder", "fmod", "divmod", "negative", "positive", "matmul",
    "logical_and", "logical_or", "logical_not", "logical_xor", "greater", "greater_equal",
    "less", "less_equal", "equal", "not_equal", "gcd", "lcm", "bitwise_and", "bitwise_or",
    "bitwise_xor", "invert", "left_shift", "right_shift", "conjugate", "conj",
)
_NP_UFUNCS_OPTIONAL = ("bitwise_not", "bitwise_count")

# Plain numpy functions wrapped only for the dtype checks: name -> index of a
# positional ``dtype`` parameter (None if it is keyword-only or absent).
_NP_DTYPE_POSITION: dict[str, int | None] = {
    # reductions and statistics
    "sum": 2, "prod": 2, "mean": 2, "std": 2, "var": 2, "cumsum": 2, "cumprod": 2,
    "nansum": 2, "nanmean": 2, "nanprod": 2, "nanstd": 2, "nanvar": 2, "nancumsum": 2,
    "nancumprod": 2, "trace": 4,
    "median": None, "min": None, "max": None, "amin": None, "amax": None, "argmin": None,
    "argmax": None, "percentile": None, "quantile": None, "average": None, "all": None,
    "any": None, "count_nonzero": None, "nanmax": None, "nanmin": None, "nanmedian": None,
    "nanpercentile": None, "nanquantile": None, "nanargmax": None, "nanargmin": None,
    "ptp": None,
    # shape manipulation, joining, splitting
    "reshape": None, "ravel": None, "concatenate": None, "stack": None, "vstack": None,
    "hstack": None, "column_stack": None,
    "expand_dims": None, "squeeze": None, "transpose": None, "swapaxes": None,
    "moveaxis": None, "flip": None, "fliplr": None, "flipud": None, "rot90": None,
    "roll": None, "atleast_1d": None, "atleast_2d": None, "atleast_3d": None,
    "delete": None, "insert": None, "append": None, "diagonal": None, "tril": None,
    "triu": None,
    # selecting, sorting, searching
    "where": None, "argsort": None, "sort": None, "lexsort": None, "partition": None,
    "argpartition": None, "unique": None, "searchsorted": None, "take": None,
    "take_along_axis": None, "argwhere": None, "nonzero": None, "flatnonzero": None,
    "digitize": None, "select": None, "unravel_index": None, "ravel_multi_index": None,
    # arithmetic and linear algebra
    "diff": None, "gradient": None, "dot": None, "vdot": None, "inner": None,
    "einsum": None, "tensordot": None, "cross": None, "convolve": None, "correlate": None,
    "interp": None, "clip": None, "round": None, "around": None, "fix": None,
    "nan_to_num": None, "real": None, "imag": None, "angle": None, "sinc": None,
    # comparison and inspection
    "allclose": None, "isclose": None, "array_equal": None, "array_equiv": None,
    "shape": None, "size": None, "ndim": None,
}
_NP_OPTIONAL = ("trapezoid", "cumulative_sum", "cumulative_prod", "unique_counts",
                "unique_values", "unique_inverse", "unique_all")

_NP_SCALAR_TYPES = (
    "bool_", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
    "float16", "float32", "float64", "complex64", "complex128", "int_", "intp", "uintp",
    "generic", "number", "integer", "signedinteger", "unsignedinteger", "inexact",
    "floating", "complexfloating",
)

_LINALG_FUNCTIONS = (
    "norm", "inv", "solve", "det", "slogdet", "eig", "eigh", "eigvals", "eigvalsh", "svd",
    "qr", "cholesky", "pinv", "lstsq", "matrix_rank", "matrix_power", "cond", "multi_dot",
)


def _np_function(name: str, fn: Callable[..., Any], dtype_at: int | None) -> Any:
    def wrapper(*args, **kwargs):
        if kwargs.get("dtype") is not None:
            kwargs["dtype"] = _dtype(kwargs["dtype"], name)
        if dtype_at is not None and len(args) > dtype_at and args[dtype_at] is not None:
            args = (*args[:dtype_at], _dtype(args[dtype_at], name), *args[dtype_at + 1:])
        return _numeric(fn(*args, **kwargs), name)

    return _named(wrapper, name.rpartition(".")[2], "numpy", fn.__doc__)


def _ufunc_kwargs(kwargs: dict[str, Any], where: str) -> dict[str, Any]:
    """Loop selection stays numeric: ``dtype=object`` or a ``signature`` would run an
    object loop (task objects' methods from C; a self-referencing object array
    segfaults)."""
    if kwargs.get("dtype") is not None:
        kwargs["dtype"] = _dtype(kwargs["dtype"], where)
    for key in ("signature", "sig", "extobj"):
        if key in kwargs:
            raise refuse("violation", f"numpy.{where}: {key}= is not available in the sandbox")
    out = kwargs.get("out")
    if out is not None:
        for arr in out if isinstance(out, tuple) else (out,):
            if arr is not None and (not isinstance(arr, np.ndarray)
                                    or arr.dtype.kind not in _NUMERIC_KINDS):
                raise refuse("violation", f"numpy.{where}: out= must be a numeric array")
    return kwargs


def _broadcast_size(args: tuple[Any, ...], where: str) -> None:
    """Refuse a broadcast whose result would exceed the element cap, before numpy
    allocates it in one uninterruptible call."""
    shapes = [a.shape for a in args if isinstance(a, np.ndarray) and a.ndim]
    if len(shapes) > 1:
        try:
            size = math.prod(np.broadcast_shapes(*shapes))
        except ValueError:
            return  # numpy raises its own shape error
        _check_elements(size, where)


class Ufunc:
    """A numpy ufunc for scripts: numeric loops only, broadcast sizes capped.

    Wrapping costs about a microsecond per call; it closes ``dtype=object`` /
    ``signature=`` object loops and ``outer``/broadcast allocation bombs.
    """

    __slots__ = ("_f", "_name")

    def __init__(self, f: np.ufunc):
        object.__setattr__(self, "_f", f)
        object.__setattr__(self, "_name", f.__name__)

    def __setattr__(self, name: str, value: Any) -> None:
        raise refuse("violation", "numpy ufuncs are read-only")

    def __repr__(self) -> str:
        return f"<ufunc {self._name!r}>"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        _broadcast_size(args, self._name)
        return _numeric(self._f(*args, **_ufunc_kwargs(kwargs, self._name)), self._name)

    def reduce(self, *args: Any, **kwargs: Any) -> Any:
        return _numeric(self._f.reduce(*args, **_ufunc_kwargs(kwargs, self._name)), self._name)

    def accumulate(self, *args: Any, **kwargs: Any) -> Any:
        return _numeric(self._f.accumulate(*args, **_ufunc_kwargs(kwargs, self._name)), self._name)

    def reduceat(self, *args: Any, **kwargs: Any) -> Any:
        return _numeric(self._f.reduceat(*args, **_ufunc_kwargs(kwargs, self._name)), self._name)

    def outer(self, a: Any, b: Any, **kwargs: Any) -> Any:
        _check_elements(int(np.size(a)) * int(np.size(b)), self._name + ".outer")
        return _numeric(self._f.outer(a, b, **_ufunc_kwargs(kwargs, self._name)), self._name)

    def at(self, a: Any, indices: Any, b: Any = None) -> None:
        if not isinstance(a, np.ndarray) or a.dtype.kind not in _NUMERIC_KINDS:
            raise refuse("violation", f"numpy.{self._name}.at needs a numeric array")
        if b is None:
            self._f.at(a, indices)
        else:
            self._f.at(a, indices, b)

    @property
    def nin(self) -> int:
        return self._f.nin

    @property
    def nout(self) -> int:
        return self._f.nout

    @property
    def nargs(self) -> int:
        return self._f.nargs

    @property
    def identity(self) -> Any:
        return self._f.identity

    @property
    def types(self) -> list[str]:
        return list(self._f.types)


class _TypeCheckOnly(type):
    """Metaclass of stand-ins that answer isinstance/issubclass for a real numpy type."""

    def __instancecheck__(cls, obj):
        return isinstance(obj, cls._vm_real)

    def __subclasscheck__(cls, sub):
        return isinstance(sub, type) and issubclass(sub, cls._vm_real)


class ndarray(metaclass=_TypeCheckOnly):
    """numpy.ndarray for isinstance() only: calling it would hand out uninitialised memory."""

    _vm_real = np.ndarray
    __slots__ = ()

    def __new__(cls, *args, **kwargs):
        raise refuse("violation", "numpy.ndarray() is not available; use numpy.array or numpy.zeros")

    def __init_subclass__(cls, **kwargs):
        raise refuse("violation", "numpy.ndarray cannot be subclassed")


class dtype(metaclass=_TypeCheckOnly):
    """numpy.dtype limited to bool, integer, float and complex types."""

    _vm_real = np.dtype
    __slots__ = ()

    def __new__(cls, obj=None):
        return _dtype(np.float64 if obj is None else obj, "dtype")

    def __init_subclass__(cls, **kwargs):
        raise refuse("violation", "numpy.dtype cannot be subclassed")


def _numpy_constructors() -> dict[str, Any]:
    def array(object, dtype=None, *, copy=True, order="K", ndmin=0):
        dt = None if dtype is None else _dtype(dtype, "array")
        out = np.array(object, dtype=dt, copy=copy, order=order, subok=False, ndmin=ndmin)
        return _numeric(out, "array")

    def asarray(a, dtype=None, order=None):
        # Always a copy the script owns, never a view of a host buffer.
        dt = None if dtype is None else _dtype(dtype, "asarray")
        out = np.array(a, dtype=dt, copy=True, order="K" if order is None else order, subok=False)
        return _numeric(out, "asarray")

    def copy(a, order="K"):
        return _numeric(np.array(a, copy=True, order=order, subok=False), "copy")

    def zeros(shape, dtype=None, order="C"):
        dt = None if dtype is None else _dtype(dtype, "zeros")
        return np.zeros(_shape(shape, "zeros"), dtype=dt, order=order)

    def ones(shape, dtype=None, order="C"):
        dt = None if dtype is None else _dtype(dtype, "ones")
        return np.ones(_shape(shape, "ones"), dtype=dt, order=order)

    def full(shape, fill_value, dtype=None, order="C"):
        dt = None if dtype is None else _dtype(dtype, "full")
        return _numeric(np.full(_shape(shape, "full"), fill_value, dtype=dt, order=order), "full")

    def _like_shape(a, shape, where):
        if shape is not None:
            return _shape(shape, where)
        _check_elements(np.size(a), where)
        return None

    def zeros_like(a, dtype=None, order="K", shape=None):
        dt = None if dtype is None else _dtype(dtype, "zeros_like")
        shape = _like_shape(a, shape, "zeros_like")
        out = np.zeros_like(a, dtype=dt, order=order, subok=False, shape=shape)
        return _numeric(out, "zeros_like")

    def ones_like(a, dtype=None, order="K", shape=None):
        dt = None if dtype is None else _dtype(dtype, "ones_like")
        shape = _like_shape(a, shape, "ones_like")
        out = np.ones_like(a, dtype=dt, order=order, subok=False, shape=shape)
        return _numeric(out, "ones_like")

    def full_like(a, fill_value, dtype=None, order="K", shape=None):
        dt = None if dtype is None else _dtype(dtype, "full_like")
        shape = _like_shape(a, shape, "full_like")
        out = np.full_like(a, fill_value, dtype=dt, order=order, subok=False, shape=shape)
        return _numeric(out, "full_like")

    def arange(start=None, stop=None, step=None, dtype=None):
        dt = None if dtype is None else _dtype(dtype, "arange")
        if start is None and stop is None:
            raise TypeError("arange() requires stop to be specified")
        lo, hi = (0, start) if stop is None else (0 if start is None else start, stop)
        st = 1 if step is None else step
        try:
            n = math.ceil((float(hi) - float(lo)) / float(st))
        except ZeroDivisionError:
            raise ZeroDivisionError("arange: step must not be zero") from None
        except (TypeError, ValueError, OverflowError):
            raise ValueError("arange: start, stop and step must be finite real numbers") from None
        _check_elements(n, "arange")
        return np.arange(lo, hi, st, dtype=dt)

    def _space_size(start, stop, num, where):
        n = _count(num, where)
        _check_elements(n * max(np.size(start), np.size(stop)), where)
        return n

    def linspace(start, stop, num=50, endpoint=True, retstep=False, dtype=None, axis=0):
        dt = None if dtype is None else _dtype(dtype, "linspace")
        n = _space_size(start, stop, num, "linspace")
        return np.linspace(start, stop, n, endpoint=endpoint, retstep=retstep, dtype=dt, axis=axis)

    def logspace(start, stop, num=50, endpoint=True, base=10.0, dtype=None, axis=0):
        dt = None if dtype is None else _dtype(dtype, "logspace")
        n = _space_size(start, stop, num, "logspace")
        return np.logspace(start, stop, n, endpoint=endpoint, base=base, dtype=dt, axis=axis)

    def geomspace(start, stop, num=50, endpoint=True, dtype=None, axis=0):
        dt = None if dtype is None else _dtype(dtype, "geomspace")
        n = _space_size(start, stop, num, "geomspace")
        return np.geomspace(start, stop, n, endpoint=endpoint, dtype=dt, axis=axis)

    def eye(N, M=None, k=0, dtype=float, order="C"):
        dt = _dtype(dtype, "eye")
        rows = operator.index(N)
        cols = rows if M is None else operator.index(M)
        if rows >= 0 and cols >= 0:
            _check_elements(rows * cols, "eye")
        return np.eye(rows, cols, k, dtype=dt, order=order)

    def identity(n, dtype=None):
        dt = None if dtype is None else _dtype(dtype, "identity")
        n = operator.index(n)
        if n >= 0:
            _check_elements(n * n, "identity")
        return np.identity(n, dtype=dt)

    def tile(A, reps):
        a = np.asarray(A)
        dims = _shape(reps, "tile")
        if all(d >= 0 for d in dims):
            _check_elements(a.size * math.prod(dims), "tile")
        return _numeric(np.tile(a, dims), "tile")

    def repeat(a, repeats, axis=None):
        a = np.asarray(a)
        r = np.asarray(repeats)
        if r.size == 1:  # one count, broadcast to every element
            total = a.size * float(r.ravel()[0])
        elif axis is None:
            total = float(np.sum(r, dtype=np.float64))
        else:
            per = a.size // max(a.shape[axis], 1)
            total = float(np.sum(r, dtype=np.float64)) * per
        _check_elements(int(total), "repeat")
        return _numeric(np.repeat(a, r, axis=axis), "repeat")

    def broadcast_to(array, shape):
        # A view, but its logical size is what np.sum etc. walk in one C call.
        return _numeric(np.broadcast_to(array, _shape(shape, "broadcast_to"), subok=False),
                        "broadcast_to")

    def outer(a, b, out=None):
        a, b = np.asarray(a), np.asarray(b)
        _check_elements(a.size * b.size, "outer")
        return _numeric(np.outer(a, b, out=out), "outer")

    def meshgrid(*xi, copy=True, sparse=False, indexing="xy"):
        xi = tuple(np.asarray(x) for x in xi)
        if not sparse:
            _check_elements(math.prod(x.size for x in xi) * len(xi), "meshgrid")
        return _numeric(np.meshgrid(*xi, copy=copy, sparse=sparse, indexing=indexing), "meshgrid")

    def pad(array, pad_width, mode="constant", **kwargs):
        a = np.asarray(array)
        if isinstance(pad_width, dict):
            seq = [(0, 0)] * a.ndim
            for axis, width in pad_width.items():
                seq[axis] = (width, width) if isinstance(width, int) else tuple(width)
            pad_width = seq
        widths = np.asarray(pad_width)
        if widths.dtype.kind not in "iu":
            raise TypeError("`pad_width` must be of integral type.")
        # Resolve the widths to one (before, after) pair per axis, the way numpy does.
        if widths.size == 1:
            pairs = np.full((a.ndim, 2), widths.ravel()[0])
        elif widths.size == 2 and widths.shape != (2, 1):
            pairs = np.broadcast_to(widths.ravel(), (a.ndim, 2))
        else:
            pairs = np.broadcast_to(widths, (a.ndim, 2))
        if pairs.size == 0 or pairs.min() >= 0:  # negative widths: numpy raises its own error
            grown = [s + int(b) + int(e) for s, (b, e) in zip(a.shape, pairs.tolist())]
            _check_elements(math.prod(grown), "pad")
        return _numeric(np.pad(a, pairs, mode, **kwargs), "pad")

    def histogram(a, bins=10, range=None, density=None, weights=None):
        if isinstance(bins, str):
            raise refuse("violation", "numpy.histogram: pass a bin count or edges, not an estimator name")
        try:
            bins = _count(bins, "histogram")
        except TypeError:
            pass  # bin edges: bounded by their own size
        return _numeric(np.histogram(a, bins, range=range, density=density, weights=weights),
                        "histogram")

    def bincount(x, weights=None, minlength=0):
        x = np.asarray(x)
        minlength = operator.index(minlength)
        n = minlength
        if x.size and x.dtype.kind in "iu":
            n = max(n, int(x.max()) + 1)
        _check_elements(n, "bincount")
        return _numeric(np.bincount(x, weights, minlength), "bincount")

    def isin(element, test_elements, assume_unique=False, invert=False, *, kind=None):
        if kind == "table":
            raise refuse("violation", "numpy.isin: kind='table' allocates by value range")
        return _numeric(np.isin(element, test_elements, assume_unique=assume_unique,
                                invert=invert, kind=kind), "isin")

    def diag(v, k=0):
        v = np.asarray(v)
        if v.ndim == 1:
            n = v.size + abs(operator.index(k))
            _check_elements(n * n, "diag")
        return _numeric(np.diag(v, k), "diag")

    def _nvars(x, rowvar):
        x = np.atleast_2d(np.asarray(x))
        return x.shape[0] if (rowvar or x.shape[0] == 1) else x.shape[1]

    def cov(m, y=None, rowvar=True, bias=False, ddof=None, fweights=None, aweights=None, *,
            dtype=None):
        dt = None if dtype is None else _dtype(dtype, "cov")
        n = _nvars(m, rowvar) + (0 if y is None else _nvars(y, rowvar))
        _check_elements(n * n, "cov")
        return _numeric(np.cov(m, y, rowvar, bias, ddof, fweights, aweights, dtype=dt), "cov")

    def corrcoef(x, y=None, rowvar=True, *, dtype=None):
        dt = None if dtype is None else _dtype(dtype, "corrcoef")
        n = _nvars(x, rowvar) + (0 if y is None else _nvars(y, rowvar))
        _check_elements(n * n, "corrcoef")
        return _numeric(np.corrcoef(x, y, rowvar, dtype=dt), "corrcoef")

    def _sections(indices_or_sections, where):
        try:
            n = operator.index(indices_or_sections)
        except TypeError:
            return  # explicit split points: the script already built that many
        _limit(n, MAX_SPLIT_SECTIONS, f"numpy.{where} sections")

    def split(ary, indices_or_sections, axis=0):
        _sections(indices_or_sections, "split")
        return _numeric(np.split(ary, indices_or_sections, axis), "split")

    def array_split(ary, indices_or_sections, axis=0):
        _sections(indices_or_sections, "array_split")
        return _numeric(np.array_split(ary, indices_or_sections, axis), "array_split")

    fns = [array, asarray, copy, split, array_split, zeros, ones, full, zeros_like, ones_like, full_like, arange,
           linspace, logspace, geomspace, eye, identity, tile, repeat, broadcast_to, outer,
           meshgrid, pad, histogram, bincount, isin, diag, cov, corrcoef]
    members = {fn.__name__: _named(fn, fn.__name__, "numpy", getattr(np, fn.__name__).__doc__)
               for fn in fns}
    # Uninitialised memory would leak old heap contents: hand out zeros instead.
    members["empty"] = _named(
        lambda shape, dtype=None, order="C": zeros(shape, dtype, order), "empty", "numpy",
        "Like numpy.empty, but the array is zero-filled (no uninitialised memory).")
    members["empty_like"] = _named(
        lambda a, dtype=None, order="K", shape=None: zeros_like(a, dtype, order, shape),
        "empty_like", "numpy",
        "Like numpy.empty_like, but the array is zero-filled (no uninitialised memory).")
    return members


# numpy.random.Generator ---------------------------------------------------------------

# methods whose output also has one axis per element of a vector parameter
_RNG_VECTOR_PARAM = {"multivariate_normal": "mean", "multinomial": "pvals",
                     "dirichlet": "alpha", "multivariate_hypergeometric": "colors"}


class Generator:
    """A seeded numpy random Generator.

    This wraps the real one.  The real ``bit_generator`` exposes ``ctypes``/``cffi``
    function pointers and raw state addresses, a PyCapsule and a ``lock``, so it
    is not offered.  Every distribution method keeps numpy's signature.
    ``size=`` is capped at ``MAX_ARRAY_ELEMENTS``.
    """

    __slots__ = ("_rng",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise refuse("violation", "use numpy.random.default_rng(seed)")

    def __repr__(self) -> str:
        return "Generator(PCG64)"

    def __reduce__(self) -> Any:
        raise refuse("violation", "generators cannot be pickled")

    def bytes(self, length):
        _limit(operator.index(length), MAX_RANDOM_BYTES, "Generator.bytes length")
        return self._rng.bytes(length)

    def spawn(self, n_children):
        _limit(operator.index(n_children), MAX_COUNT_ARGUMENT, "Generator.spawn n_children")
        return [_new_generator(child) for child in self._rng.spawn(n_children)]

    def permutation(self, x, axis=0):
        if not isinstance(x, (np.ndarray, list, tuple)):
            try:
                _count(x, "random.Generator.permutation")
            except TypeError:
                pass
        return _numeric(self._rng.permutation(x, axis), "random.Generator.permutation")

    def shuffle(self, x, axis=0):
        self._rng.shuffle(x, axis)


def _new_generator(rng: np.random.Generator) -> Generator:
    gen = object.__new__(Generator)
    object.__setattr__(gen, "_rng", rng)
    return gen


def _rng_method(name: str) -> Callable[..., Any]:
    real = getattr(np.random.Generator, name)
    params = list(inspect.signature(real).parameters)[1:]  # without self
    size_at = params.index("size") if "size" in params else None
    vector = _RNG_VECTOR_PARAM.get(name)
    vector_at = params.index(vector) if vector else None
    where = f"random.Generator.{name}"

    def method(self, *args, **kwargs):
        if size_at is not None:
            positional = len(args) > size_at
            size = args[size_at] if positional else kwargs.get("size")
            if size is not None:
                dims = _shape(size, where)
                if vector_at is not None:
                    v = args[vector_at] if len(args) > vector_at else kwargs.get(vector)
                    _check_elements(math.prod(dims) * max(np.shape(v)[-1:] or (1,)), where)
                if positional:
                    args = (*args[:size_at], dims, *args[size_at + 1:])
                else:
                    kwargs["size"] = dims
        if name == "choice" and not (args[2] if len(args) > 2 else kwargs.get("replace", True)):
            population = args[0] if args else kwargs.get("a")
            if not isinstance(population, (np.ndarray, list, tuple)):
                try:
                    _count(population, where)  # replace=False may materialise range(a)
                except TypeError:
                    pass
        return _numeric(getattr(self._rng, name)(*args, **kwargs), where)

    return _named(method, name, "numpy.random", real.__doc__)


for _name in dir(np.random.Generator):
    if (_name.startswith("_") or _name in {"bit_generator", "bytes", "spawn", "permutation",
                                            "shuffle"}):
        continue
    setattr(Generator, _name, _rng_method(_name))
del _name


def _numpy_random() -> Facade:
    def default_rng(seed):
        """A numpy random Generator seeded with ``seed`` (an int or a list of ints; required)."""
        seeds = seed if isinstance(seed, (list, tuple)) else [seed]
        if not seeds or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool)
                                for s in seeds):
            raise TypeError("numpy.random.default_rng needs an explicit integer seed")
        seed = [int(s) for s in seeds] if isinstance(seed, (list, tuple)) else int(seed)
        return _new_generator(np.random.default_rng(seed))

    return _facade("numpy.random", {"default_rng": _named(default_rng, "default_rng",
                                                          "numpy.random")})


def _numpy_linalg() -> Facade:
    members: dict[str, Any] = {
        name: _np_function(f"linalg.{name}", getattr(np.linalg, name), None)
        for name in _LINALG_FUNCTIONS
    }
    members["LinAlgError"] = np.linalg.LinAlgError
    return _facade("numpy.linalg", members)


def _numpy() -> tuple[Facade, Facade, Facade]:
    linalg = _numpy_linalg()
    nprandom = _numpy_random()
    members: dict[str, Any] = {}
    for name in _NP_UFUNCS + tuple(n for n in _NP_UFUNCS_OPTIONAL if hasattr(np, n)):
        ufunc = getattr(np, name)
        if not isinstance(ufunc, np.ufunc):
            raise TypeError(f"numpy.{name} is not a ufunc")
        members[name] = Ufunc(ufunc)
    for name, dtype_at in _NP_DTYPE_POSITION.items():
        members[name] = _np_function(name, getattr(np, name), dtype_at)
    for name in _NP_OPTIONAL:
        if hasattr(np, name):
            members[name] = _np_function(name, getattr(np, name), None)
    members.update(_numpy_constructors())
    members.update(_pick(np, _NP_SCALAR_TYPES, optional=["bool"]))
    members.update(_pick(np, ["pi", "e", "inf", "nan", "newaxis", "euler_gamma"]))
    members.update({"ndarray": ndarray, "dtype": dtype, "linalg": linalg, "random": nprandom})
    return _facade("numpy", members), linalg, nprandom


# --- the registry ---------------------------------------------------------------------

_lock = threading.Lock()
_facades: Mapping[str, Facade] | None = None


def _prime_numpy_lazy_imports() -> None:
    """Have numpy's C code import its Python helpers now, from this (host) frame.

    Some C methods (``ndarray.sum/mean/std/any/clip``, scalar and dtype ``repr``,
    raising ``AxisError``) import a helper module the first time they run.  They
    import through the *calling frame's* ``__import__`` (CPython #130272).  Under
    a script frame that is the sandbox's import, which refuses ``numpy._core.*``.
    numpy keeps each helper once it has it, so doing this once per process is
    enough.
    """
    for arr in (np.arange(4.0), np.arange(4), np.ones(2, dtype=bool), np.ones(2, dtype=complex)):
        for method in ("sum", "prod", "mean", "std", "var", "max", "min", "any", "all",
                       "cumsum", "cumprod", "argmax", "argmin", "round", "nonzero", "tolist"):
            getattr(arr, method)()
        arr.clip(0, 1)
        repr(arr), str(arr), repr(arr.dtype), str(arr.dtype), repr(arr[0]), str(arr[0])
        format(arr[0], "")
        try:
            arr.sum(axis=3)
        except (ValueError, IndexError):  # numpy's AxisError derives from both
            pass
    for scalar_type in (np.float16, np.float32, np.int8, np.uint64, np.complex64):
        repr(scalar_type(1)), str(scalar_type(1))


def _build() -> Mapping[str, Facade]:
    _prime_numpy_lazy_imports()
    numpy_facade, linalg, nprandom = _numpy()
    built = {
        "math": _math(), "json": _json(), "collections": _collections(),
        "itertools": _itertools(), "functools": _functools(), "heapq": _heapq(),
        "bisect": _bisect(), "statistics": _statistics(), "datetime": _datetime(),
        "re": _re(), "random": _random(), "string": _string(), "operator": _operator(),
        "hashlib": _hashlib(), "base64": _base64(), "typing": _typing(),
        "numpy": numpy_facade, "numpy.linalg": linalg, "numpy.random": nprandom,
    }
    missing = policy.ALLOWED_MODULES - {"vm"} - built.keys()
    if missing:
        raise RuntimeError(f"no facade for allowed modules: {sorted(missing)}")
    return types.MappingProxyType(built)


def get_facades() -> Mapping[str, Facade]:
    """The shared, read-only facades by module name (everything in ALLOWED_MODULES but ``vm``).

    Built once per process, on first use.  ``numpy.linalg`` and ``numpy.random``
    are keys too, so ``import numpy.linalg`` resolves.
    """
    global _facades
    if _facades is None:
        with _lock:
            if _facades is None:
                _facades = _build()
    return _facades
