"""Ordinary engineer code runs unchanged: each script gives the same result in the
sandbox as in plain CPython (differential), including what stock RestrictedPython rejects."""

from __future__ import annotations

import pytest

from vmcontainer.testing import run_script

SCRIPTS: dict[str, tuple[str, object]] = {
    "augassign_items": ("""
def main(inputs):
    counts = {}
    for w in inputs["words"]:
        counts[w] = counts.get(w, 0)
        counts[w] += 1
    grid = [[0] * 3 for _ in range(2)]
    grid[1][2] += 5
    return counts, grid
""", {"words": ["a", "b", "a"]}),
    "augassign_attrs": ("""
class Acc:
    def __init__(self):
        self.n = 0
        self.total = 0.0
    def add(self, v):
        self.n += 1
        self.total += v
def main(inputs):
    a = Acc()
    for v in inputs:
        a.add(v)
    return a.n, a.total
""", [1.5, 2.5]),
    "annotated": ("""
from typing import Dict, List
LIMIT: int = 3
def main(inputs):
    xs: list[int] = []
    seen: Dict[str, int] = {}
    for i in range(LIMIT):
        xs.append(i)
    return xs, seen
""", None),
    "closures_nonlocal": ("""
def make_counter():
    n = 0
    def inc(k=1):
        nonlocal n
        n += k
        return n
    return inc
def main(inputs):
    c = make_counter()
    c(); c(5)
    return c()
""", None),
    "classes_super": ("""
class Base:
    kind = "base"
    def __init__(self, name):
        self.name = name
    def describe(self):
        return f"{self.kind}:{self.name}"
class Child(Base):
    kind = "child"
    def __init__(self, name, extra):
        super().__init__(name)
        self.extra = extra
    def describe(self):
        return super().describe() + f"+{self.extra}"
def main(inputs):
    return Child("x", 2).describe(), isinstance(Child("y", 1), Base)
""", None),
    "decorators": ("""
class Temp:
    scale = 2
    def __init__(self, c):
        self.c = c
    @property
    def f(self):
        return self.c * 9 / 5 + 32
    @staticmethod
    def zero():
        return 0
    @classmethod
    def make(cls, c):
        return cls(c * cls.scale)
def main(inputs):
    t = Temp.make(50)
    return t.f, Temp.zero(), t.c
""", None),
    "generators": ("""
def windows(xs, n):
    for i in range(len(xs) - n + 1):
        yield xs[i:i + n]
def evens(limit):
    yield from (i for i in range(limit) if i % 2 == 0)
def main(inputs):
    return [sum(w) for w in windows(inputs, 2)], list(evens(7))
""", [1, 2, 3, 4]),
    "comprehensions": ("""
def main(inputs):
    sq = [x * x for x in inputs if x % 2]
    d = {k: v for k, v in zip("abc", inputs)}
    s = {x % 3 for x in inputs}
    nested = [(i, j) for i in range(3) for j in range(i)]
    return sq, d, sorted(s), nested, sum(x for x in inputs)
""", [1, 2, 3, 4, 5]),
    "fstrings": ("""
import math
def main(inputs):
    v = math.pi
    name = "ctr"
    return [f"{v:.3f}", f"{name!r:>8}", f"{42:08b}", f"{1234567.891:,.2f}", f"{'x' * 3}", f"{v=:.1f}"]
""", None),
    "try_except_finally": ("""
def parse(s):
    try:
        return int(s)
    except ValueError as e:
        return -1
    finally:
        pass
def main(inputs):
    out = []
    for s in inputs:
        try:
            out.append(10 // parse(s))
        except ZeroDivisionError:
            out.append(None)
        except (TypeError, KeyError):
            out.append("?")
        else:
            out.append("ok")
    return out
""", ["5", "x", "0"]),
    "lambdas_sorted": ("""
def main(inputs):
    items = sorted(inputs, key=lambda r: (-r["score"], r["id"]))
    top = max(inputs, key=lambda r: r["score"])
    return [r["id"] for r in items], top["id"], list(map(lambda r: r["score"] * 2, inputs))
""", [{"id": "a", "score": 1}, {"id": "b", "score": 3}, {"id": "c", "score": 3}]),
    "unpacking": ("""
def main(inputs):
    a, b = inputs[0], inputs[1]
    first, *middle, last = inputs
    (x, y), z = (1, 2), 3
    for i, (k, v) in enumerate({"p": 1, "q": 2}.items()):
        pass
    merged = {**{"a": 1}, **{"b": 2}}
    args = [*inputs, *middle]
    return a, b, first, middle, last, x + y + z, i, k, v, merged, args
""", [1, 2, 3, 4]),
    "global_state": ("""
CACHE = {}
calls = 0
def get(k):
    global calls
    calls += 1
    if k not in CACHE:
        CACHE[k] = k * 2
    return CACHE[k]
def main(inputs):
    return [get(k) for k in inputs], calls
""", [1, 2, 1]),
    "collections_heapq_bisect": ("""
import collections, heapq, bisect
def main(inputs):
    c = collections.Counter(inputs)
    dd = collections.defaultdict(list)
    for i, x in enumerate(inputs):
        dd[x].append(i)
    dq = collections.deque(maxlen=2)
    for x in inputs:
        dq.append(x)
    top = heapq.nlargest(2, inputs)
    s = sorted(inputs)
    return c.most_common(1), dict(dd), list(dq), top, bisect.bisect_left(s, 3)
""", [3, 1, 3, 2]),
    "itertools_functools": ("""
import itertools, functools, operator
@functools.lru_cache(maxsize=None)
def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)
def main(inputs):
    pairs = list(itertools.combinations(inputs, 2))
    acc = list(itertools.accumulate(inputs))
    prod = functools.reduce(operator.mul, inputs, 1)
    groups = {k: len(list(g)) for k, g in itertools.groupby(sorted(inputs))}
    return len(pairs), acc, prod, groups, fib(30)
""", [1, 2, 2, 3]),
    "json_re_string": ("""
import json, re, string
def main(inputs):
    doc = json.loads(inputs)
    words = re.findall(r"[a-z]+", doc["text"].lower())
    clean = re.sub(r"\\s+", " ", doc["text"]).strip()
    caps = string.capwords(clean)
    return json.dumps({"n": len(words), "caps": caps}, sort_keys=True), string.ascii_lowercase[:3]
""", '{"text": "Hello   World  foo"}'),
    "math_statistics": ("""
import math, statistics
def main(inputs):
    return (round(statistics.mean(inputs), 6), statistics.median(inputs),
            round(statistics.pstdev(inputs), 6), math.isclose(math.exp(math.log(5)), 5.0),
            math.floor(2.7), math.inf > 1e308)
""", [1.0, 2.0, 4.0, 8.0]),
    "datetime_use": ("""
import datetime
def main(inputs):
    t0 = datetime.datetime(2026, 1, 1, 12, 0)
    t1 = t0 + datetime.timedelta(hours=inputs)
    return t1.isoformat(), (t1 - t0).total_seconds(), t1.strftime("%Y-%m-%d %H")
""", 30),
    "hashlib_base64": ("""
import hashlib, base64
def bucket(user, n):
    h = hashlib.sha256(user.encode()).hexdigest()
    return int(h[:8], 16) % n
def main(inputs):
    return [bucket(u, 100) for u in inputs], base64.b64encode(b"abc").decode()
""", ["u1", "u2"]),
    "random_seeded": ("""
import random
def main(inputs):
    rng = random.Random(inputs)
    xs = [rng.randint(0, 100) for _ in range(5)]
    rng.shuffle(xs)
    return xs, round(rng.random(), 6)
""", 7),
    "str_format": ("""
def main(inputs):
    return "{} has {:.1f} pts".format(inputs["name"], inputs["pts"]), "{name}".format_map(inputs), str.format("{0}-{0}", 1)
""", {"name": "ann", "pts": 3.14159}),
    "while_break_continue": ("""
def main(inputs):
    i, out = 0, []
    while True:
        i += 1
        if i % 2:
            continue
        if i > 10:
            break
        out.append(i)
    else:
        out.append(-1)
    return out
""", None),
    "walrus_ternary_chain": ("""
def main(inputs):
    res = [y for x in inputs if (y := x * 2) > 2]
    label = "big" if len(res) > 1 else "small"
    return res, label, 1 < 2 < 3, not res, [] or None
""", [1, 2, 3]),
    "exceptions_custom": ("""
class FeatureError(Exception):
    def __init__(self, field):
        super().__init__(f"missing {field}")
        self.field = field
def need(d, k):
    if k not in d:
        raise FeatureError(k)
    return d[k]
def main(inputs):
    try:
        need(inputs, "x")
    except FeatureError as e:
        return e.field, str(e), e.args
""", {}),
    "dunder_compare": ("""
class Item:
    def __init__(self, score):
        self.score = score
    def __lt__(self, other):
        return self.score < other.score
    def __eq__(self, other):
        return self.score == other.score
def main(inputs):
    items = sorted(Item(s) for s in inputs)
    return [i.score for i in items], Item(1) == Item(1)
""", [3, 1, 2]),
    "dict_methods": ("""
def main(inputs):
    d = dict(inputs)
    d.setdefault("z", 0)
    d.update(y=2)
    popped = d.pop("a", None)
    keys = sorted(d.keys())
    return keys, popped, list(d.values())[-1], d.get("missing", "dflt")
""", {"a": 1}),
    "slicing_strings": ("""
def main(inputs):
    s = inputs
    return s[::-1], s[1:3], s.upper(), s.split(","), ",".join(reversed(s.split(","))), s.count("a")
""", "a,b,ca"),
    "recursion": ("""
def depth(tree):
    if not isinstance(tree, list):
        return 0
    return 1 + max([depth(t) for t in tree] or [0])
def main(inputs):
    return depth(inputs)
""", [[1, [2, [3]]], []]),
    "typing_namedtuple": ("""
from typing import NamedTuple, Optional
import collections
class Point(NamedTuple):
    x: int
    y: int = 0
Pair = collections.namedtuple("Pair", "a b")
def norm1(p: Point) -> int:
    return abs(p.x) + abs(p.y)
def main(inputs) -> Optional[int]:
    p = Point(3, -4)
    q = Pair(1, 2)
    return norm1(p), [p.x, p.y], q.a + q.b
""", None),
    "class_counter_attr": ("""
class Registry:
    count = 0
    items = []
    def __init__(self, v):
        Registry.count += 1
        Registry.items.append(v)
def main(inputs):
    for v in inputs:
        Registry(v)
    return Registry.count, Registry.items
""", [1, 2]),
}


def _plain(source: str, inputs: object) -> object:
    g: dict = {"__name__": "plain"}
    exec(compile(source, "plain.py", "exec"), g)
    return g["main"](inputs)


def _normalise(value: object) -> object:
    """The boundary returns tuples as tuples and lists as lists; compare structurally."""
    if isinstance(value, (list, tuple)):
        return [_normalise(v) for v in value]
    if isinstance(value, dict):
        return {k: _normalise(v) for k, v in value.items()}
    return value


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_script_runs_unchanged(name: str) -> None:
    source, inputs = SCRIPTS[name]
    expected = _plain(source, inputs)
    got = run_script(source, inputs, timeout=10)
    assert _normalise(got) == _normalise(expected)


def test_at_least_thirty_realistic_scripts() -> None:
    assert len(SCRIPTS) >= 30
