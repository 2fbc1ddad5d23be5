"""Reachability: walk the attribute graph from every object a script can get.

Two walks over the same objects:

* **in the sandbox** - a script builds the roots (facades, ``vm``, a model handle,
  arrays, results of allowed calls, caught exceptions, generators, bound methods,
  classes, functions, the guarded builtins) and follows every public name with the
  guarded dynamic ``getattr``; it classifies what it reaches by ``repr`` and returns a
  verdict.  Names come from the host (scripts have no ``dir``).
* **in the host** - the same roots (the script's ``roots()`` run in sandbox globals),
  followed with ``dir`` + ``getattr`` and classified by type.

Nothing may reach a module, frame, code object, traceback, a module's globals, a
builtin outside the allowlist, ``os.*``/``sys.*``, ctypes/cffi, capsules or locks.
"""

from __future__ import annotations

import abc
import builtins
import collections
import threading
import types

import pytest

from vmcontainer.sandbox import policy

from . import _models
from ._harness import body

ROOTS = '''
import vm
import math, json, collections, itertools, functools, heapq, bisect, statistics, datetime
import re, random, string, operator, hashlib, base64, typing
import numpy as np
import numpy.linalg
import numpy.random

class Mine:
    attr = 1
    def method(self):
        return 1

def gen():
    yield 1

def caught(fn):
    try:
        fn()
    except Exception as e:
        return e

def roots():
    arr = np.arange(6.0).reshape(2, 3)
    m = vm.model('lin')
    out = m.run({'x': np.zeros((1, 4), dtype=np.float32)})
    facades = {'math': math, 'json': json, 'collections': collections, 'itertools': itertools,
               'functools': functools, 'heapq': heapq, 'bisect': bisect, 'statistics': statistics,
               'datetime': datetime, 're': re, 'random': random, 'string': string, 'operator': operator,
               'hashlib': hashlib, 'base64': base64, 'typing': typing, 'np': np,
               'np.linalg': np.linalg, 'np.random': np.random}
    values = {
        'vm': vm, 'handle': m, 'remaining': vm.remaining, 'model_out': out['y'],
        'arr': arr, 'view': arr[1:], 'scalar': np.float64(1.5), 'dtype': arr.dtype, 'flat': arr.flat,
        'pattern': re.compile('a(b)'), 'match': re.match('a(b)', 'ab'), 'finditer': re.finditer('a', 'aa'),
        'counter': collections.Counter('aab'), 'deque': collections.deque([1]),
        'ordered': collections.OrderedDict(a=1), 'defaultdict': collections.defaultdict(list),
        'chainmap': collections.ChainMap({}), 'ntuple': collections.namedtuple('P', 'x y')(1, 2),
        'datetime': datetime.datetime(2020, 1, 1), 'timedelta': datetime.timedelta(1),
        'utc': datetime.timezone.utc, 'random': random.Random(1), 'rng': np.random.default_rng(1),
        'svd': np.linalg.svd(np.eye(2)), 'sha': hashlib.sha256(b'x'), 'template': string.Template('$a'),
        'partial': functools.partial(max, 1), 'lru': functools.lru_cache(maxsize=2)(abs),
        'typing_alias': typing.List[int], 'itemgetter': operator.itemgetter(0), 'count': itertools.count(),
        'zerodiv': caught(lambda: 1 // 0), 'attrerr': caught(lambda: math.nope),
        'valueerr': caught(lambda: int('x')), 'keyerr': caught(lambda: {}['k']),
        'jsonerr': caught(lambda: json.loads('{')), 'linalgerr': caught(lambda: np.linalg.inv(np.zeros((2, 2)))),
        'generator': gen(), 'genexpr': (x for x in [1]), 'bound': Mine().method, 'builtin_bound': [].append,
        'cls': Mine, 'instance': Mine(), 'function': main, 'lambda': lambda: 1,
        'print': print, 'getattr': getattr, 'type': type, 'pow': pow, 'hasattr': hasattr,
        'super': super(Mine, Mine()), 'range': range(3), 'iter': iter([1]),
    }
    return facades, values
'''

WALK = '''
BAD_TYPES = ("<class 'module'>", "<class 'frame'>", "<class 'code'>", "<class 'traceback'>",
             "<class 'type'>", "<class 'cell'>")

def classify(obj, forbidden):
    r = repr(obj)
    if r.startswith('<module ') and '(sandbox facade)' not in r and "(container API)" not in r:
        return 'module ' + r[:60]
    if r.startswith(('<frame ', '<code object ', '<traceback object ')):
        return r[:40]
    if r in BAD_TYPES:
        return 'class ' + r
    if r.startswith('<built-in function ') and r[19:-1] in forbidden:
        return 'builtin ' + r
    if isinstance(obj, dict) and ('__builtins__' in obj or '__loader__' in obj):
        return 'module globals'
    return None

def main(inputs):
    names_by_type, fallback, forbidden, depth, class_reprs = inputs
    forbidden = set(forbidden)
    class_reprs = set(class_reprs)
    facades, values = roots()
    todo = [(v, k, 0) for k, v in list(facades.items()) + list(values.items())]
    seen = {}
    bad = []
    visited = 0
    while todo:
        obj, path, level = todo.pop()
        r = repr(obj)
        key = r[:300]
        if key in seen:
            continue
        seen[key] = 1
        visited += 1
        reason = classify(obj, forbidden)
        if reason:
            bad.append(path + ': ' + reason)
            continue
        if level >= depth:
            continue
        is_class = r in class_reprs or r.startswith(('<class ', '<enum ', '<flag '))
        tkey = r if is_class else repr(type(obj))
        for name in names_by_type.get(tkey, fallback):
            try:
                value = getattr(obj, name)
            except Exception:
                continue
            todo.append((value, path + '.' + name, level + 1))
    return {'visited': visited, 'bad': bad}
'''

_SAFE_C_MODULES = {
    "math", "cmath", "_operator", "operator", "_functools", "functools", "itertools", "_heapq", "_bisect",
    "_json", "json", "_hashlib", "_md5", "_sha1", "_sha256", "_sha512", "_sha3", "_blake2", "binascii",
    "_random", "_collections", "collections", "_datetime", "datetime", "_statistics", "_struct",
    "_string", "_sre", "regex", "_regex", "numpy", "time",
}
_BAD_PY_MODULES = ("os", "sys", "subprocess", "shutil", "io", "pickle", "importlib", "inspect", "ctypes",
                   "gc", "builtins", "numpy.lib._npyio_impl", "numpy.testing", "numpy.f2py", "numpy.ctypeslib")
_ALLOWED_BUILTINS = set(policy.PLAIN_BUILTINS) | {"getattr", "hasattr", "format", "print"}
_FORBIDDEN_BUILTIN_NAMES = sorted(
    {"open", "eval", "exec", "compile", "__import__", "globals", "vars", "setattr", "delattr", "breakpoint",
     "input", "memoryview", "id", "locals", "dir", "exit", "quit", "help"}
    | {n for n in dir(__import__("os")) if callable(getattr(__import__("os"), n)) and not n.startswith("_")}
    | {n for n in dir(__import__("sys")) if callable(getattr(__import__("sys"), n)) and not n.startswith("_")}
    - set(policy.PLAIN_BUILTINS))
_EXTRA_NAMES = ["os", "sys", "builtins", "subprocess", "enum", "f2py", "ma", "core", "lib", "testing", "func",
                "self", "globals", "modules", "loader", "spec", "session", "model", "task", "scope", "hub",
                "watchdog", "keywords", "args", "parts", "cache", "registry", "rng", "bit_generator",
                "origin", "fget", "fset", "code", "frame", "tb", "importer", "program", "container"]
_SKIP = (policy.DENIED_ATTRIBUTES | policy.ARRAY_DENIED_ATTRIBUTES) | {"obj"}
_LOCKS = (type(threading.Lock()), type(threading.RLock()))
_CLASS_REPRS: set[str] = set()


def _public(names):
    return sorted(n for n in names if not n.startswith("_") and n not in _SKIP)


def _host_danger(obj) -> str | None:
    if isinstance(obj, types.ModuleType):
        return f"module {obj.__name__}"
    if isinstance(obj, (types.FrameType, types.CodeType, types.TracebackType)):
        return type(obj).__name__
    if isinstance(obj, dict) and "__builtins__" in obj:
        return "a module's globals"
    if isinstance(obj, _LOCKS):
        return "thread lock"
    if type(obj).__name__ == "PyCapsule":
        return "PyCapsule"
    if any(str(getattr(t, "__module__", "")).startswith(("ctypes", "_ctypes", "_cffi_backend", "cffi"))
           for t in (type(obj), type(type(obj)))):
        return "ctypes/cffi"
    if isinstance(obj, types.BuiltinFunctionType):
        owner = getattr(obj, "__self__", None)
        if owner is builtins and obj.__name__ not in _ALLOWED_BUILTINS:
            return f"builtins.{obj.__name__}"
        if isinstance(owner, types.ModuleType) and owner is not builtins and \
                owner.__name__.split(".")[0] not in _SAFE_C_MODULES:
            return f"{owner.__name__}.{obj.__name__}"
    if isinstance(obj, types.FunctionType) and str(obj.__module__).startswith(_BAD_PY_MODULES):
        return f"function {obj.__module__}.{obj.__qualname__}"
    if obj is type:
        return "the real type"
    if isinstance(obj, abc.ABCMeta) and type(obj).register is abc.ABCMeta.register:
        return f"unsealed ABC {obj.__qualname__}"
    return None


@pytest.fixture(scope="module")
def host_roots():
    """The exact objects a script gets, built by running ``roots()`` in sandbox globals (thread mode)."""
    from vmcontainer.sandbox.runtime import PrintCapture
    from vmcontainer.scheduler.scope import CallScope, set_current_scope
    from vmcontainer.testing import build_test_bundle, test_container

    with test_container(workers=1) as c:
        c.install(build_test_bundle(ROOTS + "def main(i):\n    return 1\n", name="roots",
                                    models={"lin": _models.linear()}))
        program = c._registry.get("roots").program
        scope = CallScope(60.0)
        set_current_scope(scope)
        try:
            g = program.new_globals(scope, PrintCapture())
            exec(program.code, g)
            facades, values = g["roots"]()
        finally:
            set_current_scope(None)
        yield facades, values


def _host_walk(roots: dict, depth: int):
    problems, live = [], []
    seen: dict[int, object] = {}
    names_by_type: dict[str, list[str]] = {}
    todo = [(v, k, 0) for k, v in roots.items()]
    while todo:
        obj, path, level = todo.pop()
        if id(obj) in seen:
            continue
        seen[id(obj)] = obj
        reason = _host_danger(obj)
        if reason:
            problems.append(f"{path}: {reason}")
            continue
        try:
            names = _public(dir(obj))
        except Exception:
            names = []
        key = repr(obj) if isinstance(obj, type) else repr(type(obj))
        names_by_type.setdefault(key, names)
        if isinstance(obj, type):
            _CLASS_REPRS.add(repr(obj))
        if level >= depth:
            continue
        for name in names:
            try:
                value = getattr(obj, name)
            except Exception:
                continue
            if isinstance(value, (dict, list, set, bytearray, collections.deque)):
                try:
                    same = getattr(obj, name) is value
                except Exception:
                    same = False
                if same and not path.startswith(("values.instance", "values.partial", "values.match",
                                                 "values.pattern", "values.cls", "values.ordered",
                                                 "values.counter", "values.defaultdict", "values.deque",
                                                 "values.chainmap", "values.svd", "values.typing_alias")):
                    live.append(f"{path}.{name}")
            todo.append((value, f"{path}.{name}", level + 1))
    return problems, live, names_by_type


def test_host_side_walk_reaches_nothing_dangerous(host_roots):
    facades, values = host_roots
    roots = {**{f"facades.{k}": v for k, v in facades.items()}, **{f"values.{k}": v for k, v in values.items()}}
    problems, _, _ = _host_walk(roots, depth=4)
    assert problems == []


KNOWN_LIVE_STATE: set[str] = set()


def test_host_side_walk_finds_no_new_live_host_state(host_roots):
    facades, values = host_roots
    roots = {**{f"facades.{k}": v for k, v in facades.items()}, **{f"values.{k}": v for k, v in values.items()}}
    _, live, _ = _host_walk(roots, depth=3)
    assert set(live) <= KNOWN_LIVE_STATE, sorted(set(live) - KNOWN_LIVE_STATE)


def test_no_live_mutable_host_state_is_reachable(host_roots):
    facades, values = host_roots
    roots = {**{f"facades.{k}": v for k, v in facades.items()}, **{f"values.{k}": v for k, v in values.items()}}
    _, live, _ = _host_walk(roots, depth=3)
    assert live == []


def test_in_sandbox_walk_reaches_nothing_dangerous(sandbox, host_roots):
    facades, values = host_roots
    roots = {**{f"facades.{k}": v for k, v in facades.items()}, **{f"values.{k}": v for k, v in values.items()}}
    _, _, names_by_type = _host_walk(roots, depth=3)
    fallback = _public(set(_EXTRA_NAMES) | {"real", "imag", "shape", "dtype", "name", "value", "args"})
    names_by_type = {k: _public(set(v) | set(_EXTRA_NAMES)) for k, v in names_by_type.items()}
    inputs = [names_by_type, fallback, _FORBIDDEN_BUILTIN_NAMES, 3, sorted(_CLASS_REPRS)]
    out = sandbox.ok(ROOTS + WALK, inputs, timeout=30.0, models={"lin": _models.linear()})
    assert out["bad"] == []
    assert out["visited"] > 1000, out["visited"]  # the walk is not vacuous


@pytest.mark.parametrize("name", ["__class__", "__globals__", "__dict__", "__subclasses__", "__builtins__",
                                  "__self__", "__func__", "__closure__", "__code__", "__traceback__",
                                  "gi_frame", "f_globals", "tb_frame", "cr_frame", "mro", "ctypes"])
def test_guarded_getattr_refuses_private_names_on_every_root(sandbox, name):
    src = ROOTS.replace("def roots():", "def roots():  # noqa") + body(f"""
        facades, values = roots()
        refused = 0
        for obj in list(facades.values()) + list(values.values()):
            if hasattr(obj, {name!r}):
                return 'hasattr answered True for ' + repr(obj)[:60]
            refused += 1
        getattr(values['vm'], {name!r})
    """)
    from vmcontainer import SandboxViolation

    sandbox.refused(src, SandboxViolation, models={"lin": _models.linear()})
