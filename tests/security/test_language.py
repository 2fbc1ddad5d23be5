"""Language-level attacks: RestrictedPython's published advisories and their cousins.

Every parameter is one attack script.  The expected outcome is the specific error
the policy promises (docs/sandbox.md); after each attack the container must still
answer (``Sandbox`` checks that).
"""

from __future__ import annotations

import pytest

from vmcontainer import SandboxViolation, TaskError, TaskTimeout

from ._harness import ADDRESS, body

# --- refused by the compiler ----------------------------------------------------------

COMPILE_REFUSED = [
    # dunder walks (issue #142 class)
    ("return (1).__class__.__bases__[0].__subclasses__()", '"__class__"', "subclass-walk"),
    ("def f():\n    pass\nreturn f.__globals__", '"__globals__"', "function-globals"),
    ("return __builtins__", '"__builtins__"', "builtins-name"),
    ("return __import__('os')", '"__import__"', "dunder-import"),
    ("return exec('1')", "exec()", "exec"),
    ("return eval('1')", "eval()", "eval"),
    ("return 𝐞𝐯𝐚𝐥('1')", "eval()", "eval-nfkc-mathbold"),
    ("return f'{__builtins__}'", '"__builtins__"', "fstring-builtins"),
    # frames through generators, coroutines, tracebacks (CVE-2023-37271)
    ("g = (x for x in [1])\nreturn g.gi_frame.f_back.f_globals", '"gi_frame"', "gen-gi_frame-walk"),
    ("def f():\n    yield 1\nreturn f().gi_code", '"gi_code"', "gen-gi_code"),
    ("def f():\n    yield 1\nreturn f().gi_yieldfrom", '"gi_yieldfrom"', "gen-gi_yieldfrom"),
    ("g = (x for x in [])\nreturn g.ag_frame", '"ag_frame"', "asyncgen-ag_frame"),
    ("async def f():\n    pass\nreturn f().cr_frame", "AsyncFunctionDef", "coroutine-cr_frame"),
    ("try:\n    1/0\nexcept Exception as e:\n    return e.__traceback__.tb_frame.f_globals",
     '"tb_frame"', "traceback-tb_frame"),
    ("try:\n    1/0\nexcept Exception as e:\n    return e.__traceback__", '"__traceback__"', "traceback-attr"),
    ("return (1).__class__.mro()", '"mro"', "mro"),
    # except* type confusion (CVE-2025-22153)
    ("try:\n    pass\nexcept* ValueError as eg:\n    return eg.split(ValueError)", "TryStar", "except-star"),
    ("match inputs:\n    case {'a': x}:\n        return x", "Match", "match"),
    # positional-only (and other) parameters shadowing guards (CVE-2026-55830)
    ("def f(_getattr_, /):\n    return _getattr_\nreturn f(1)", '"_getattr_"', "posonly-_getattr_"),
    ("def f(_vm_write_, /):\n    return 1\nreturn f(1)", '"_vm_write_"', "posonly-_vm_write_"),
    ("def f(*, _vm_getattr_=None):\n    return 1\nreturn f()", '"_vm_getattr_"', "kwonly-_vm_getattr_"),
    ("f = lambda _print_: 1\nreturn f(1)", '"_print_"', "lambda-_print_"),
    ("x = [_vm_clock_ for _vm_clock_ in range(3)]", '"_vm_clock_"', "comprehension-target-shadow"),
    ("try:\n    pass\nexcept Exception as _vm_expired_:\n    pass", '"_vm_expired_"', "except-as-shadow"),
    ("import math as _vm_clock_", '"_vm_clock_"', "import-as-shadow"),
    ("from math import pi as _vm_arith_", '"_vm_arith_"', "from-import-as-shadow"),
    ("class _vm_write_:\n    pass", '"_vm_write_"', "class-name-shadow"),
    # the deadline lives in the call's globals
    ("global _vm_deadline_\n_vm_deadline_ = 1e300\nwhile True:\n    pass", '"_vm_deadline_"', "global-deadline"),
    ("def f():\n    nonlocal _vm_clock_", '"_vm_clock_"', "nonlocal-clock"),
    ("x = (_vm_deadline_ := 10**300)", '"_vm_deadline_"', "walrus-deadline"),
    ("return [(print := i) for i in range(2)]", '"print"', "walrus-print"),
    ("class A:\n    x = (_y := 1)", '"_y"', "class-body-walrus"),
    # class bodies: dunders that would run in host code, and class machinery
    ("class A:\n    __slots__ = ()", '"__slots__"', "class-slots"),
    ("class A:\n    def __init_subclass__(cls):\n        pass", '"__init_subclass__"', "init-subclass"),
    ("class A:\n    def __del__(self):\n        pass", '"__del__"', "finalizer"),
    ("class A:\n    def __hash__(self):\n        return 1", '"__hash__"', "custom-hash"),
    ("class A:\n    def __repr__(self):\n        return 'x'", '"__repr__"', "custom-repr"),
    ("class A:\n    def __getattr__(self, n):\n        return 1", '"__getattr__"', "custom-getattr"),
    ("class A(metaclass=type):\n    pass", '"metaclass"', "metaclass-kw"),
    ("return __build_class__", '"__build_class__"', "build-class"),
    ("class A:\n    def f(self):\n        return super().__thisclass__", '"__thisclass__"', "super-thisclass"),
    ("return object.__new__", '"__new__"', "object-new"),
    # print cannot be rebound or collected
    ("def print():\n    pass", '"print" is a reserved name', "def-print"),
    ("del print", '"print" is a reserved name', "del-print"),
    ("return printed", '"printed"', "printed"),
    ("breakpoint()", '"breakpoint"', "breakpoint"),
]


@pytest.mark.parametrize("code,fragment", [pytest.param(c, f, id=i) for c, f, i in COMPILE_REFUSED])
def test_refused_at_compile_time(sandbox, code, fragment):
    sandbox.compile_refused(body(code), fragment)


# --- refused at run time ------------------------------------------------------------------

V = SandboxViolation
RUNTIME_REFUSED = [
    # str.format / format_map traversal (CVE-2023-41039, Jinja CVE-2016-10745 / 2019-10906)
    ("return '{0.__class__}'.format(1)", V, None, "format-dunder"),
    ("return '{a.__class__}'.format_map({'a': 1})", V, None, "format_map-dunder"),
    ("return str.format('{0.__class__}', 1)", V, None, "unbound-str-format"),
    ("return str.format_map('{a.__class__}', {'a': 1})", V, None, "unbound-str-format_map"),
    ("f = '{0.__class__}'.format\nreturn f(1)", V, None, "stored-format-reference"),
    ("f = getattr('{0.__class__}', 'format')\nreturn f(1)", V, None, "format-via-getattr"),
    ("class S(str):\n    pass\nreturn S('{0.__class__}').format(1)", V, None, "str-subclass-format"),
    ("return '{0:{1.__class__}}'.format(1, 2)", V, None, "nested-spec-traversal"),
    ("return '{0.real.__class__}'.format(1)", V, None, "chained-traversal"),
    ("g = (x for x in [1])\nreturn '{0.gi_frame}'.format(g)", V, None, "format-gi_frame"),
    ("try:\n    (1).nope\nexcept AttributeError as e:\n    return '{0.obj}'.format(e)", V, None,
     "format-exception-obj"),
    # AttributeError.obj leaks the object the lookup failed on (CVE-2024-47532)
    ("import math\ntry:\n    math.nope\nexcept AttributeError as e:\n    return e.obj", V, None,
     "attributeerror-obj"),
    ("try:\n    (1).nope\nexcept AttributeError as e:\n    return getattr(e, 'obj')", V, None,
     "attributeerror-obj-getattr"),
    # dynamic getattr: str subclass names (PR #282), dunders, frames
    ("class S(str):\n    def startswith(self, p):\n        return False\nreturn getattr(1, S('__class__'))",
     V, None, "getattr-str-subclass"),
    ("return getattr(1, '__cl' + 'ass__')", V, None, "getattr-built-dunder"),
    ("g = (x for x in [1])\nreturn getattr(g, 'gi_frame')", V, None, "getattr-gi_frame"),
    ("try:\n    1/0\nexcept Exception as e:\n    return getattr(e, '__traceback__')", V, None,
     "getattr-traceback"),
    ("g = getattr(getattr, 'func')\nreturn g(1, '__class__')", TaskError, "AttributeError",
     "getattr-has-no-func"),
    ("class A:\n    def f(self):\n        return getattr(super(), '__thisclass__')\nreturn A().f()", V, None,
     "getattr-super-thisclass"),
    # a guard violation cannot be caught and probed further
    ("try:\n    getattr(1, '__class__')\nexcept Exception:\n    return 'caught'", V, None,
     "violation-not-catchable"),
    ("try:\n    getattr(1, 'gi_frame')\nexcept:\n    return 'caught'", V, None, "violation-bare-except"),
    ("def g():\n    try:\n        yield getattr(1, '__class__')\n    finally:\n        return\nreturn list(g())",
     V, None, "violation-swallowed-in-generator-finally"),
    # absent builtins
    ("return open('/etc/passwd').read()", TaskError, "NameError", "open"),
    ("return compile('1', 'f', 'eval')", TaskError, "NameError", "compile"),
    ("return globals()", TaskError, "NameError", "globals"),
    ("return locals()", TaskError, "NameError", "locals"),
    ("return vars()", TaskError, "NameError", "vars"),
    ("return dir()", TaskError, "NameError", "dir"),
    ("return id(inputs)", TaskError, "NameError", "id"),
    ("return memoryview(b'x')", TaskError, "NameError", "memoryview"),
    ("return input()", TaskError, "NameError", "input"),
    ("setattr(inputs, 'x', 2)", TaskError, "NameError", "setattr"),
    ("delattr(inputs, 'x')", TaskError, "NameError", "delattr"),
    ("with open('/etc/passwd') as f:\n    return f.read()", TaskError, "NameError", "with-open"),
    # BaseException family: never nameable, never past the boundary
    ("raise BaseException('x')", TaskError, "NameError", "BaseException"),
    ("raise SystemExit(3)", TaskError, "NameError", "SystemExit"),
    ("raise KeyboardInterrupt", TaskError, "NameError", "KeyboardInterrupt"),
    ("raise GeneratorExit", TaskError, "NameError", "GeneratorExit"),
    ("raise ExceptionGroup('x', [ValueError()])", TaskError, "NameError", "ExceptionGroup"),
    ("class E(BaseException):\n    pass\nraise E()", TaskError, "NameError", "BaseException-subclass"),
    ("raise StopIteration", TaskError, "StopIteration", "StopIteration-at-top"),
    # generator throw/close tricks
    ("def g():\n    try:\n        yield 1\n    finally:\n        yield 2\ngen = g()\nnext(gen)\ngen.close()",
     TaskError, "RuntimeError", "generator-ignores-close"),
    ("def g():\n    yield 1\ngen = g()\nnext(gen)\ngen.throw(StopIteration)", TaskError, "RuntimeError",
     "generator-throw-stopiteration"),
    # type() abuse: one argument only, never the real `type`
    ("return type('X', (), {})", TaskError, "TypeError", "type-three-args"),
    ("class A:\n    pass\nreturn type(A)", V, None, "type-of-class"),
    ("return type(int)", V, None, "type-of-builtin-class"),
    ("import collections\nreturn type(collections.Counter)('X', (), {})", V, None, "type-of-host-class"),
    ("class M(type):\n    pass", TaskError, "TypeError", "subclass-type-name"),
    ("F = type(main)\nreturn F(None, {})", TaskError, "TypeError", "function-type-without-code"),
    # print tricks
    ("print('a', file=None)", TaskError, "TypeError", "print-file"),
    ("print('a', flush=True)", TaskError, "TypeError", "print-flush"),
]


@pytest.mark.parametrize("code,error,exc_type",
                         [pytest.param(c, e, t, id=i) for c, e, t, i in RUNTIME_REFUSED])
def test_refused_at_run_time(sandbox, code, error, exc_type):
    sandbox.refused(body(code), error, exc_type=exc_type)


# --- attacks that run but achieve nothing ---------------------------------------------------

def test_hasattr_answers_false_for_forbidden_names(sandbox):
    out = sandbox.ok(body("return [hasattr(1, n) for n in ('__class__', 'gi_frame', 'real')]"))
    assert out == [False, False, True]


def test_string_template_does_not_traverse(sandbox):
    src = body("import string\nreturn string.Template('$a.__class__').substitute(a=1)")
    assert sandbox.ok(src) == "1.__class__"


def test_string_formatter_is_not_offered(sandbox):
    sandbox.refused(body("import string\nreturn string.Formatter().get_field('0.__class__', [1], {})"),
                    TaskError, exc_type="AttributeError")


def test_shadowing_exception_does_not_catch_the_deadline(sandbox):
    # the compiler rewrites a bare ``except:`` to ``except Exception:`` - a name the script can rebind
    src = body("""
        Exception = ZeroDivisionError
        try:
            while True:
                pass
        except:
            return 'caught'
    """)
    sandbox.refused(src, TaskTimeout, timeout=0.2, within=1.5)


def test_generator_throw_cannot_catch_the_deadline(sandbox):
    src = body("""
        def g():
            while True:
                try:
                    yield 1
                except Exception:
                    pass
        gen = g()
        next(gen)
        while True:
            gen.throw(ValueError)
    """)
    sandbox.refused(src, TaskTimeout, timeout=0.2, within=1.5)


def test_super_proxy_is_harmless(sandbox):
    src = body("""
        class A(dict):
            def keys(self):
                return super().keys()
        return list(A(a=1).keys()), repr(super(int, 1))
    """)
    assert sandbox.ok(src) == (["a"], "<super: <class 'int'>, <int object>>")


def test_decorators_get_nothing_new(sandbox):
    src = body("""
        import functools
        @functools.lru_cache(maxsize=None)
        @staticmethod
        def f():
            return 1
        @type
        def g():
            pass
        return repr(g)
    """)
    assert sandbox.ok(src) == "<class 'function'>"


def test_type_of_vm_builds_only_a_powerless_copy(sandbox):
    src = body("""
        import vm
        class FakeTask:
            pass
        fake = type(vm)(FakeTask(), None)
        try:
            fake.remaining()
        except AttributeError:
            return 'powerless'
    """)
    assert sandbox.ok(src) == "powerless"


# --- escapes -------------------------------------------------------------------------------


def test_forged_vmerror_subclass_never_reaches_the_host(sandbox):
    src = """
import math
def main(inputs):
    try:
        math.factorial(10 ** 6)
    except Exception as e:
        Limit = type(e)
    class Forged(Limit):
        def __eq__(self, other):
            return True
        @property
        def args(self):
            return ('task code ran in the host',)
    raise Forged('quota')
"""
    from vmcontainer import ResourceLimitExceeded

    # Facade refusals are uncatchable inside a call, so the script never gets the
    # class to subclass: the call ends with the refusal itself, a host class.
    exc = sandbox.refused(src, ResourceLimitExceeded)
    assert type(exc) is ResourceLimitExceeded, type(exc)
    assert exc.args != ("task code ran in the host",)


def test_script_cannot_forge_a_sandbox_violation(sandbox):
    src = body("""
        import json
        try:
            json.dumps(1, cls=dict)
        except Exception as e:
            Violation = type(e)
        raise Violation('forged: host key compromised')
    """)
    # The refusal cannot be caught, so its class never reaches the script: the host
    # gets the genuine violation, not the forged message.
    exc = sandbox.refused(src, SandboxViolation)
    assert "forged" not in str(exc) and "cls=" in str(exc)


REPRS = [
    ("import numpy as np\nreturn repr(np.sum)", "facade-function"),
    ("import math\nreturn repr(math.factorial)", "facade-wrapper"),
    ("import json\nreturn repr(json.dumps)", "json-facade-function"),
    ("return repr(print)", "print-capture"),
    ("return repr(getattr)", "guarded-getattr"),
    ("return repr(type)", "safe-type"),
    ("return repr(pow)", "size-guarded-pow"),
    ("import random\nreturn repr(random.Random(1))", "random-instance"),
    ("import functools\nreturn repr(functools.lru_cache(maxsize=2)(abs))", "lru-wrapper"),
    ("return repr(main)", "script-function"),
    ("class A:\n    pass\nreturn repr(A())", "script-instance"),
    ("return repr(object())", "object"),
    ("return '%r' % ((x for x in []),)", "generator-percent"),
    ("return (b'%r %a' % ((x for x in []), main)).decode()", "generator-bytes-percent"),
    ("return f'{main!r} {main!a} {(x for x in [])!r:>60}'", "fstring-conversions"),
    ("return '{!r} {!a}'.format(main, [].append)", "str-format-conversions"),
    pytest.param("return f'{main}'", marks=pytest.mark.xfail(strict=True, reason=(
        "RESIDUAL: str() of functions, generators and builtin methods - through str(), format(), "
        "%s, a dynamic %-format and f'{x}' - is the C repr with the address; repr()/ascii(), !r/!a "
        "and %r/%a of literal formats are scrubbed")), id="function-fstring"),
    pytest.param("return str([].append)", marks=pytest.mark.xfail(strict=True, reason=(
        "RESIDUAL: see function-fstring")), id="builtin-method-str"),
    # Script-class instances have an address-free default repr, so every route is clean.
    ("class A:\n    pass\nreturn str(A())", "script-instance-str"),
    ("class A:\n    pass\nreturn f'{A()} {A()!r} {A()!s}'", "script-instance-fstring"),
    ("class A:\n    pass\nreturn '%r %s' % (A(), A())", "script-instance-percent"),
    ("class A:\n    pass\nreturn '{} {!r}'.format(A(), A()) + format(A(), '')", "script-instance-format"),
    ("class A:\n    pass\nclass B(A):\n    pass\nreturn str([A(), B(), {1: B()}])", "script-instance-in-list"),
    ("class E(Exception):\n    pass\nclass A:\n    pass\nreturn str(E(A())) + repr(E(A()))", "script-exception-arg"),
    ("return repr([].append)", "bound-builtin-method"),
    ("return ascii(iter([]))", "iterator-ascii"),
    ("class A:\n    pass\nreturn repr(ValueError(A()))", "exception-args"),
]


@pytest.mark.parametrize("code", [c if isinstance(c, type(pytest.param(0))) else pytest.param(*c[:1], id=c[1])
                                  for c in REPRS])
def test_repr_reveals_no_addresses(sandbox, code):
    out = sandbox.ok(body(code))
    assert ADDRESS.search(out) is None, out


@pytest.mark.parametrize("code", [
    pytest.param("o = object()\nreturn hash(o)", id="object"),
    pytest.param("return hash(main)", id="function"),
    pytest.param("import math\nreturn hash(math)", id="facade"),
    pytest.param("import vm\nreturn hash(vm)", id="vm"),
])
def test_hash_is_not_an_address_oracle(sandbox, code):
    value = sandbox.ok(body(code))
    address = (value << 4) & ((1 << 64) - 1) | ((value >> 60) & 0xF)
    assert not 0x550000000000 <= address < 0x800000000000, hex(address)


def test_print_cap_cannot_be_bypassed_through_its_buffer(sandbox, caplog):
    src = body("""
        print.parts.append('x' * 1000000)
        print.parts.append('\\nINFO vmcontainer: forged host log line')
        return 'done'
    """)
    with caplog.at_level("INFO", logger="vmcontainer"):
        try:
            sandbox.ok(src)
        except (SandboxViolation, TaskError):
            return  # refused: fine
    printed = "".join(r.getMessage() for r in caplog.records)
    assert len(printed) < 70 * 1024
