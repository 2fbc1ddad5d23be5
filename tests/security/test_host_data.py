"""Host data: inputs are copies, nothing persists between calls, and no task object -
or task code - outlives the call in host hands."""

from __future__ import annotations

import gc
import sys

import numpy as np
import pytest

from vmcontainer import SandboxViolation, TaskError

from ._harness import body

MUTATIONS = [
    "inputs['cfg']['limit'] = -1\ninputs['cfg'].clear()",
    "inputs['rows'].append(666)\ninputs['rows'][0] = None\ndel inputs['rows'][1]",
    "inputs['nested'][0]['deep'].append('pwned')",
    "x = inputs['arr']\nx[0] = 99.0\nx += 1",
    "x = inputs['arr']\nx.fill(7)\nx.sort()",
    "import numpy as np\nnp.add(inputs['arr'], 1, out=inputs['arr'])",
    "import numpy as np\nnp.add.at(inputs['arr'], [0, 0], 5)",
    "import numpy as np\nnp.random.default_rng(1).shuffle(inputs['arr'])",
    "x = inputs['arr'][1:]\nx[:] = -1",
    "x = inputs['arr'].reshape(2, 2)\nx[0, 0] = 5",
    "x = inputs['arr']\nx.resize(2, refcheck=False)",
    "inputs['blob'] = b'changed'\ninputs.update({'cfg': None})",
]


@pytest.mark.parametrize("code", MUTATIONS)
def test_host_inputs_are_never_written(sandbox, code):
    host = {"cfg": {"limit": 10}, "rows": [1, 2, 3], "nested": [{"deep": ["ok"]}],
            "arr": np.arange(4.0), "blob": b"orig"}
    sandbox.ok(body(code + "\nreturn 1"), host)
    assert host["cfg"] == {"limit": 10} and host["rows"] == [1, 2, 3]
    assert host["nested"] == [{"deep": ["ok"]}] and host["blob"] == b"orig"
    assert host["arr"].tolist() == [0.0, 1.0, 2.0, 3.0] and host["arr"].flags.writeable


def test_shared_config_object_stays_pristine_across_calls(sandbox):
    shared = {"threshold": 0.5, "weights": [1.0, 2.0]}
    name = sandbox.deploy(body("seen = (inputs['threshold'], len(inputs['weights']))\ninputs['threshold'] = 99\n"
                               "inputs['weights'].append(3)\nreturn seen"))
    assert [sandbox.container.invoke(name, shared) for _ in range(3)] == [(0.5, 2)] * 3
    assert shared == {"threshold": 0.5, "weights": [1.0, 2.0]}
    sandbox.assert_alive()


LEAKS = [
    ("STATE = []\ndef main(inputs):\n    STATE.append(inputs)\n    return len(STATE)\n", "module-global"),
    ("class K:\n    seen = []\ndef main(inputs):\n    K.seen.append(inputs)\n    return len(K.seen)\n",
     "class-attribute"),
    ("def main(inputs, acc=[]):\n    acc.append(inputs)\n    return len(acc)\n", "default-argument"),
    ("import functools\n@functools.lru_cache(maxsize=None)\ndef f(x):\n    return []\n"
     "def main(inputs):\n    f(0).append(inputs)\n    return len(f(0))\n", "lru-cache"),
    ("def make():\n    box = []\n    def add(x):\n        box.append(x)\n        return len(box)\n    return add\n"
     "ADD = make()\ndef main(inputs):\n    return ADD(inputs)\n", "closure"),
    ("def main(inputs):\n    main.count = getattr(main, 'count', 0) + 1\n    return main.count\n",
     "function-attribute"),
    ("import typing\ndef main(inputs):\n    class Box:\n        pass\n    t = typing.List[int]\n"
     "    return 1 if t is typing.List[int] else 1\n", "typing-cache"),
]


@pytest.mark.parametrize("source", [pytest.param(s, id=i) for s, i in LEAKS])
def test_nothing_persists_between_calls(sandbox, source):
    name = sandbox.deploy(source)
    assert [sandbox.container.invoke(name, k) for k in range(3)] == [1, 1, 1]
    sandbox.assert_alive()


@pytest.mark.parametrize("code", [
    "import math\nmath.pi = 0", "import math\nmath.tau += 1", "import json\njson.dumps = len",
    "import collections\ncollections.Counter.most_common = len", "import re\nre.compile = len",
    "import vm\nvm.task = 'other'", "import numpy as np\nnp.random.default_rng = len",
    "import functools\nfunctools.reduce.x = 1", "type(print).cap = 10 ** 9",
])
def test_shared_facades_are_read_only(sandbox, code):
    sandbox.refused(body(code), SandboxViolation)


def test_one_call_cannot_disable_guards_for_later_calls(sandbox):
    from vmcontainer import ResourceLimitExceeded

    name = sandbox.deploy(body("""
        if inputs == 'poison':
            getattr.keywords['sizes'] = None
            return 'poisoned'
        return len('x'.ljust(inputs))
    """))
    try:
        sandbox.container.invoke(name, "poison")
    except (SandboxViolation, TaskError):
        pass
    with pytest.raises(ResourceLimitExceeded):
        sandbox.container.invoke(name, 10 ** 8)
    sandbox.assert_alive()


RESULTS = [
    "class A:\n    pass\nreturn A()",
    "class A:\n    def __eq__(self, o):\n        return True\nreturn [A()]",
    "class D(dict):\n    def __eq__(self, o):\n        return True\nreturn D(a=1)",
    "class S(str):\n    pass\nreturn S('x')",
    "class I(int):\n    pass\nreturn {'n': I(3)}",
    "class T(tuple):\n    pass\nreturn T((1,))",
    "class L(list):\n    def __contains__(self, x):\n        return True\nreturn L([1])",
    "return (x for x in range(3))",
    "def g():\n    yield 1\nreturn {'gen': g()}",
    "return main",
    "return lambda: 1",
    "return print",
    "import vm\nreturn vm",
    "import math\nreturn math",
    "import collections\nreturn collections.Counter('aab')",
    "import collections\nreturn collections.OrderedDict(a=1)",
    "import collections\nreturn collections.defaultdict(list)",
    "import collections\nP = collections.namedtuple('P', 'x')\nreturn P(1)",
    "import numpy as np\nclass F(np.float64):\n    pass\nreturn F(1.0)",
    "return {(1, 2): [1, 2, {3: object()}]}",
    "return ValueError('x')",
    "return range(3)",
    "return iter([1])",
    "return {1, 2}",
    "return bytearray(b'x')",
    "return 1j",
]


@pytest.mark.parametrize("code", RESULTS)
def test_results_carry_plain_data_only(sandbox, code):
    sandbox.refused(body(code), TaskError, exc_type="ResultError")


def test_public_errors_carry_no_task_objects(sandbox):
    src = """
class Evil(Exception):
    def __eq__(self, other):
        return True
def main(inputs):
    secret = ['call-local data']
    raise Evil('x')
"""
    exc = sandbox.refused(src, TaskError, exc_type="Evil")
    chained = [exc.__context__, exc.__cause__]
    assert all(c is None for c in chained), chained
    assert exc.__traceback__ is None or all(
        tb.tb_frame.f_code.co_filename != "script.py" for tb in _walk(exc.__traceback__))


def _walk(tb):
    while tb is not None:
        yield tb
        tb = tb.tb_next


@pytest.mark.xfail(strict=True, reason=(
    "ESCAPE: a suspended generator kept alive by a reference cycle is finalized by the HOST's garbage "
    "collector after the call ended: its `finally:` block (task code) runs in whatever host thread "
    "triggers gc, with no deadline (straight-line code and C calls run to completion). Close the "
    "call's generators / clear and collect its globals inside the call (runtime._guarded)"))
def test_task_code_never_runs_after_the_call(thread_only):
    ran = []
    src = """
HOLD = []
def ghost():
    try:
        yield 1
    finally:
        HOLD.append(1 // 0)
def main(inputs):
    g = ghost()
    next(g)
    HOLD.append(g)
    HOLD.append(HOLD)
    return 'done'
"""
    old = sys.unraisablehook
    sys.unraisablehook = lambda u: ran.append(repr(u.object))
    try:
        assert thread_only.ok(src) == "done"
        gc.collect()
    finally:
        sys.unraisablehook = old
    assert not any("ghost" in r for r in ran), ran


def test_cached_regex_state_does_not_leak_between_calls(sandbox, request):
    name = sandbox.deploy(body("""
        import re
        p = re.compile('(?P<word>x)(?P<other>y)?')
        before = dict(p.groupindex)
        try:
            p.groupindex['word'] = 2
            p.groupindex['injected'] = 1
        except Exception:
            pass
        return before
    """))
    first = sandbox.container.invoke(name, None)
    second = sandbox.container.invoke(name, None)
    sandbox.assert_alive()
    if second != first:
        request.applymarker(pytest.mark.xfail(strict=True, reason=(
            "ESCAPE: the re facade caches compiled Patterns process-wide (sandbox/modules.py, "
            "_PATTERN_CACHE_SIZE) and Pattern.groupindex returns the live dict: one call rewrites it "
            "and every later call/task using that pattern sees the change (lastgroup, groupindex); "
            "return a mappingproxy/copy")))
    assert second == first == {"word": 1, "other": 2}
