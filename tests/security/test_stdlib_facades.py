"""Stdlib facades: curated members only, no route to sys/os/builtins/gc/inspect, no
process-wide state, no universal getattr."""

from __future__ import annotations

import pytest

from vmcontainer import ResourceLimitExceeded, SandboxViolation, TaskError

from ._harness import body

ABSENT = [
    "import re\nreturn re.enum.sys", "import re\nreturn re.sys.modules", "import re\nreturn re.copyreg",
    "import re\nreturn re.functools", "import re\nreturn re.DEBUG", "import re\nreturn re.purge()",
    "import re\nreturn re.template('a')", "import re\nreturn re.sre_compile",
    "import random\nreturn random.random()", "import random\nrandom.seed(1)", "import random\nreturn random.getstate()",
    "import random\nreturn random.SystemRandom().random()", "import random\nreturn random.os",
    "import random\nreturn random._inst",
    "import operator\nreturn operator.attrgetter('__class__')(1)",
    "import operator\nreturn operator.methodcaller('__reduce__')(1)",
    "import operator\noperator.setitem({}, 1, 2)", "import operator\noperator.iadd([], [1])",
    "import functools\nreturn functools.singledispatch", "import functools\nreturn functools.update_wrapper",
    "import collections\nreturn collections.abc.Mapping", "import collections\nreturn collections.UserDict",
    "import collections\nreturn collections.sys", "import typing\nreturn typing.get_type_hints",
    "import typing\nreturn typing.sys", "import typing\nreturn typing.List.copy",
    "import typing\nreturn typing.Sequence.register(dict)", "import json\nreturn json.load",
    "import json\nreturn json.decoder.scanstring", "import json\nreturn json.codecs",
    "import hashlib\nreturn hashlib.new('sha256')", "import hashlib\nreturn hashlib.file_digest",
    "import hashlib\nreturn hashlib.shake_128(b'x').hexdigest(10 ** 9)", "import base64\nreturn base64.encode",
    "import base64\nreturn base64.binascii", "import string\nreturn string.Formatter()",
    "import string\nreturn string._re", "import statistics\nreturn statistics.NormalDist().samples(3)",
    "import statistics\nreturn statistics.random", "import datetime\nreturn datetime.sys",
    "import math\nreturn math.sys", "import itertools\nreturn itertools.sys",
    "import heapq\nreturn heapq.sys", "import bisect\nreturn bisect.sys",
]


@pytest.mark.parametrize("code", ABSENT)
def test_dangerous_members_are_absent(sandbox, code):
    error = SandboxViolation if "._" in code else TaskError
    if "._" in code:
        sandbox.compile_refused(body(code))
        return
    sandbox.refused(body(code), error, exc_type="AttributeError")


REFUSED = [
    ("import json\nreturn json.dumps(1, cls=dict)", SandboxViolation),
    ("import json\nreturn json.loads('1', cls=dict)", SandboxViolation),
    ("import re\nreturn re.compile('a', 128)", (SandboxViolation, ValueError, TaskError)),
    ("import random\nreturn random.Random()", TaskError),
    ("import random\nr = random.Random(1)\nr.seed(None)\nreturn r.random()", SandboxViolation),
    ("import random\nreturn random.Random(1).getrandbits(10 ** 10)", ResourceLimitExceeded),
    ("import collections\nreturn collections.ChainMap.register(dict)", SandboxViolation),
    ("import typing\nclass C(typing.Sequence[int]):\n    pass\nreturn C.register(dict)", SandboxViolation),
    ("import typing\ntyping.List.x = 1", SandboxViolation),
    ("import functools\nreturn functools.wraps(len)(abs)", SandboxViolation),
    ("import functools\nreturn functools.total_ordering(int)", SandboxViolation),
    ("import functools\nreturn functools.partial(getattr, 1)('__class__')", SandboxViolation),
    ("import functools\nreturn functools.reduce(getattr, ['real', '__class__'], 1)", SandboxViolation),
    ("import string\nclass T(string.Template):\n    flags = 128\nreturn T('$a').substitute(a=1)", SandboxViolation),
    ("import collections\nreturn collections.namedtuple('P', ['__class__'])", TaskError),
    ("import typing\nreturn typing.NamedTuple('P', [('_x', int)])", TaskError),
]


@pytest.mark.parametrize("code,error", REFUSED)
def test_dangerous_arguments_are_refused(sandbox, code, error):
    sandbox.refused(body(code), error)


def test_harmless_uses_stay_harmless(sandbox):
    src = body("""
        import re, datetime, hashlib, json, string, typing, collections, functools
        m = re.match('a(b)', 'ab')
        t = string.Template('$a.__class__').substitute(a=1)
        fwd = str(typing.List['__import__("os").system("id")'])
        nt = collections.namedtuple('P', 'x', module='os')(1)
        @functools.wraps(main)
        def w():
            pass
        return (m.group(1), t, 'ForwardRef' in fwd, nt.x,
                datetime.datetime(2020, 1, 1).strftime('%Y' * 3),
                hashlib.sha256(b'x').hexdigest()[:8], json.dumps({'a': 1}, default=str))
    """)
    out = sandbox.ok(src)
    assert out == ("b", "1.__class__", True, 1, "202020202020", "2d711642", '{"a": 1}')
