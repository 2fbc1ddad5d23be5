"""The sandbox's ``re``: stdlib ``re``'s API on the ``regex`` engine, every match bounded by
the call's deadline.

Catastrophic backtracking is one C call that no checkpoint can stop; with stdlib ``re``
the timeout tests below would hang a worker for hours.
"""

from __future__ import annotations

import re
import time
import warnings

import pytest
import regex

from tests.test_facades import walk
from vmcontainer import ResourceLimitExceeded, SandboxViolation, TaskError, TaskTimeout
from vmcontainer.sandbox import modules
from vmcontainer.scheduler.scope import Interrupt
from vmcontainer.testing import run_script

R = modules.get_facades()["re"]

# (a|aa)+$ on 'a'*40+'b' tries ~fib(40) paths before failing: hours for stdlib re.
# (regex itself shortcuts the textbook (a+)+$, so that one would not test anything.)
EVIL = r"(a|aa)+$"
EVIL_SUBJECT = "a" * 40 + "b"
TIMEOUT = 0.3
# regex measures its timeout in process CPU time, checked every 256 matcher steps: it stops
# within about a millisecond of CPU time past the deadline.  In wall time it also runs over
# by however long the process waited for a CPU, so the wall-clock bound allows for a
# loaded machine.
OVERSHOOT = 0.2
STARVED = 2.0

# --- same results as stdlib re ----------------------------------------------------------

COMMON_USE = r'''
import re

WORD = re.compile(r"(?P<key>\w+)=(?P<value>\d+)")

def main(text):
    out = {}
    out["findall"] = re.findall(r"\d+", text)
    out["findall_groups"] = re.findall(r"(\w+)=(\d+)", text)
    out["sub_groups"] = re.sub(r"(\w+)=(\d+)", r"\2:\1", text)
    out["sub_named"] = re.sub(r"(?P<k>\w+)=", r"\g<k> is ", text, count=1)
    out["sub_callable"] = re.sub(r"\d+", lambda m: str(int(m.group()) * 2), text)
    out["subn"] = re.subn(r"\s+", " ", text)
    out["sub_empty"] = re.sub(r"x*", "-", "abxd")
    out["split"] = re.split(r"[,;]\s*", "a, b;c ,d")
    out["split_groups"] = re.split(r"(,)", "a,b,c", maxsplit=1)
    m = WORD.match(text)
    out["match"] = (m.group(), m.group(1), m.group("value"), m.groups(), m.groupdict(),
                    m.span("value"), m.start(), m.end(), m[0], m.lastindex, m.lastgroup,
                    m.pos, m.endpos, m.string == text, m.re is WORD, m.expand(r"<\2>"))
    out["pattern"] = (WORD.pattern, WORD.flags, WORD.groups, dict(WORD.groupindex))
    out["finditer"] = [(m.span(), m.group("key")) for m in WORD.finditer(text)]
    out["finditer_pos"] = [m.span() for m in WORD.finditer(text, 3, 20)]
    out["search"] = re.search(r"b\w+", text).group()
    out["search_none"] = re.search(r"zzz", text) is None
    out["fullmatch"] = (re.fullmatch(r"\w+", "abc") is not None,
                        re.fullmatch(r"\w+", "ab c") is None)
    out["ignorecase"] = re.findall(r"alpha", "Alpha ALPHA alpha", re.IGNORECASE)
    out["multiline"] = re.findall(r"^\w+$", "one\ntwo\nthree", re.M)
    out["dotall"] = re.match(r"a.b", "a\nb", re.S | re.I) is not None
    out["verbose"] = re.findall(r"""(\d+)  # digits
                                    \s*(kg|g)""", "3 kg, 5g", re.X)
    out["escape"] = re.escape("a.b*c[1]")
    out["escaped_match"] = re.findall(re.escape("1+1"), "1+1=2, 1+1")
    out["bytes"] = re.findall(rb"\d", b"a1b2")
    out["isinstance"] = (isinstance(WORD, re.Pattern), isinstance(m, re.Match))
    out["compiled_again"] = re.compile(WORD) is WORD and re.findall(WORD, text) == WORD.findall(text)
    out["braces"] = (re.findall(r"x{e<=1}", "x{e<=1} y"), re.findall(r"a{2}", "aaaa"),
                     re.findall(r"{}", "{}"))
    try:
        re.compile("(unclosed")
        out["error"] = None
    except re.error as exc:
        out["error"] = str(exc)
    return out
'''

TEXT = "alpha=1 beta=22 gamma=333\n  delta=4"


def _plain_cpython(source: str, inputs):
    namespace: dict = {}
    exec(compile(source, "plain.py", "exec"), namespace)
    return namespace["main"](inputs)


def test_common_usage_matches_stdlib():
    expected = _plain_cpython(COMMON_USE, TEXT)
    assert run_script(COMMON_USE, TEXT) == expected
    assert expected["braces"][0] == ["x{e<=1}"]  # a literal, not regex's fuzzy matching


@pytest.mark.parametrize(
    ("call", "args"),
    [
        ("findall", (r"(\w)(\d)?", "a1 b c3")),
        ("split", (r"\b", "ab cd")),
        ("split", (r"x*", "axbc")),
        ("sub", (r"(?m)^", "> ", "a\nb")),
        ("sub", (r"a|(b)", r"[\1]", "abc")),
        ("subn", (r"", "-", "abc")),
        ("findall", (r"[[:alpha:]]+", "ab[:alpha:]]")),  # stdlib: a set, not a POSIX class
        ("findall", (r"\N{DIGIT ONE}{2}", "1 11 111")),
        ("findall", (r"(?i)straße", "STRASSE Straße")),
        ("findall", (r"(?a)\w+", "naïve café")),
        ("findall", (r"\w+", "naïve café")),
        ("findall", (r"(?<=-)\d+", "1-2-33")),
        ("findall", (r"(?:ab)++c|a*+", "ababc aa")),
    ],
)
def test_module_functions_match_stdlib(call, args):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        assert getattr(R, call)(*args) == getattr(re, call)(*args)


def test_sub_callable_sees_facade_matches():
    seen = []

    def repl(m):
        seen.append(type(m))
        return None if m.group() == "b" else m.group().upper()

    assert R.sub(r"\w", repl, "abc") == re.sub(r"\w", lambda m: None if m.group() == "b"
                                                else m.group().upper(), "abc")
    assert seen and all(t is R.Match for t in seen)
    assert R.subn(r"\w", lambda m: "x", "abc", 2) == ("xxc", 2)
    assert R.sub(r"a", lambda m: "x", "aaa", count=-1) == re.sub(r"a", "x", "aaa", count=-1)
    assert R.sub(rb"a", lambda m: b"x", bytearray(b"aa")) == b"xx"
    with pytest.raises(TypeError):
        R.sub(r"a", lambda m: 1, "a")


def test_pattern_and_match_api():
    p = R.compile(r"(?P<x>a)(b)?", R.I)
    assert p == R.compile(r"(?P<x>a)(b)?", R.I) and hash(p) == hash(R.compile(p.pattern, R.I))
    assert repr(p) == repr(re.compile(r"(?P<x>a)(b)?", re.IGNORECASE))
    assert p.flags == re.compile(r"(?P<x>a)(b)?", re.IGNORECASE).flags
    m = p.search("xA")
    assert repr(m) == repr(re.search(r"(?P<x>a)(b)?", "xA", re.IGNORECASE))
    assert (m.groups(), m.groups("-"), m.groupdict(), m.regs) == (("A", None), ("A", "-"),
                                                                 {"x": "A"}, ((1, 2), (1, 2),
                                                                              (-1, -1)))
    with pytest.raises(IndexError):
        m.group(3)
    with pytest.raises(TypeError):
        iter(m)
    with pytest.raises(ValueError):
        R.match(p, "a", R.I)
    with pytest.raises(TypeError):
        R.Pattern()
    with pytest.raises(TypeError):
        R.Match()
    with pytest.raises(TypeError):
        type("Sub", (R.Pattern,), {})
    with pytest.raises(SandboxViolation):
        p.__reduce__()
    assert R.Pattern[str] is not None  # annotations such as re.Pattern[str] work


@pytest.mark.parametrize("pattern", [
    r"(?R)", r"\p{L}", r"(?V1)a", r"(?b)a", r"(*FAIL)", r"(?|(a)|(b))", r"\X", r"(?<n>a)",
    r"(?(DEFINE)(?<n>a))",
])
def test_regex_only_syntax_refused(pattern):
    with pytest.raises(re.error):
        R.compile(pattern)


def test_bad_patterns_raise_stdlib_errors():
    with pytest.raises(re.error) as info:
        R.compile(r"a)")
    assert isinstance(info.value, R.error)
    with pytest.raises(re.error):
        R.sub(r"(a)", r"\2", "a")  # bad group reference in the template
    with pytest.raises(TypeError):
        R.compile(123)
    with pytest.raises(ValueError):
        R.compile(r"a", R.A | R.U)


def test_pattern_length_cap():
    R.compile("a" * modules.MAX_PATTERN_CHARS)
    with pytest.raises(ResourceLimitExceeded):
        R.compile("a" * (modules.MAX_PATTERN_CHARS + 1))
    with pytest.raises(ResourceLimitExceeded):
        R.findall(b"a" * (modules.MAX_PATTERN_CHARS + 1), b"a")
    source = "import re\ndef main(n):\n    return re.findall('a' * n, 'a')\n"
    with pytest.raises(ResourceLimitExceeded):
        run_script(source, modules.MAX_PATTERN_CHARS + 1)


def test_debug_flag_still_refused():
    with pytest.raises(SandboxViolation):
        R.compile("a", re.DEBUG)
    with pytest.raises(SandboxViolation):
        R.findall("a", "a", re.DEBUG | re.IGNORECASE)


# --- the deadline ---------------------------------------------------------------------

CATASTROPHIC = {
    "module match": "re.match(EVIL, SUBJECT)",
    "compiled match": "re.compile(EVIL).match(SUBJECT)",
    "compiled search pos": "re.compile(EVIL).search(SUBJECT, 1)",
    "findall": "re.findall(EVIL, SUBJECT)",
    "sub template": "re.sub(EVIL, 'x', SUBJECT)",
    "sub callable": "re.sub(EVIL, lambda m: 'x', SUBJECT)",
    "subn": "re.compile(EVIL).subn('x', SUBJECT)",
    "split": "re.split(EVIL, SUBJECT)",
    "finditer": "[m.span() for m in re.finditer(EVIL, SUBJECT)]",
    "fullmatch": "re.fullmatch(EVIL, SUBJECT)",
}


def _evil_script(expression: str) -> str:
    return (
        "import re\n"
        f"EVIL = {EVIL!r}\n"
        "def main(inputs):\n"
        "    SUBJECT = inputs['subject']\n"
        "    if not inputs['evil']:\n"
        "        return re.findall('a+', SUBJECT)\n"
        "    try:\n"
        f"        return {expression}\n"
        "    except Exception as exc:  # the timeout is not the script's to catch\n"
        "        return 'caught ' + repr(exc)\n"
    )


@pytest.mark.parametrize("name", sorted(CATASTROPHIC))
def test_catastrophic_backtracking_times_out(container, deploy, name):
    task = deploy(_evil_script(CATASTROPHIC[name]), timeout=5.0)
    start, cpu_start = time.monotonic(), time.process_time()
    with pytest.raises(TaskTimeout, match="regex"):
        container.invoke(task, {"subject": EVIL_SUBJECT, "evil": True}, timeout=TIMEOUT)
    elapsed, cpu = time.monotonic() - start, time.process_time() - cpu_start
    # This thread only waits, so the process's CPU time is the worker's.
    assert cpu < TIMEOUT + OVERSHOOT, f"{name}: {cpu:.3f}s CPU, {elapsed:.3f}s wall"
    assert elapsed < TIMEOUT + STARVED, f"{name}: {cpu:.3f}s CPU, {elapsed:.3f}s wall"
    # The worker is free again: the next call runs normally.
    assert container.invoke(task, {"subject": EVIL_SUBJECT, "evil": False}) == ["a" * 40]


def test_run_script_catastrophic_times_out():
    source = f"import re\ndef main(s):\n    return re.match({EVIL!r}, s)\n"
    start = time.monotonic()
    with pytest.raises(TaskTimeout):
        run_script(source, EVIL_SUBJECT, timeout=TIMEOUT)
    # run_script builds and installs a container too, so allow for that.
    assert time.monotonic() - start < TIMEOUT + OVERSHOOT + STARVED
    assert run_script("import re\ndef main(s):\n    return re.findall('b', s)\n",
                      EVIL_SUBJECT, timeout=TIMEOUT) == ["b"]


def test_callable_replacement_runs_as_script_code(container, deploy):
    # The script's function runs under its own checkpoints: a slow one times out too.
    task = deploy("import re\n"
                  "def slow(m):\n"
                  "    while True:\n"
                  "        pass\n"
                  "def main(inputs):\n"
                  "    return re.sub('a', slow, 'aaa')\n", timeout=5.0)
    with pytest.raises(TaskTimeout):
        container.invoke(task, None, timeout=TIMEOUT)
    task = deploy("import re\n"
                  "def main(inputs):\n"
                  "    return re.sub('a', lambda m: m.undefined, 'a')\n")
    with pytest.raises(TaskError, match="AttributeError"):
        container.invoke(task, None)


def test_outside_a_call_the_default_limit_applies():
    start = time.monotonic()
    with pytest.raises(Interrupt) as info:
        R.match(EVIL, EVIL_SUBJECT)
    assert info.value.kind == "timeout"
    assert time.monotonic() - start < modules.REGEX_DEFAULT_TIMEOUT + STARVED


class _EarlyTimeouts:
    """Stands in for a regex Pattern whose first scans stop early, as they do when other
    threads advance regex's CPU-time clock: each of the first ``fails`` scans raises
    TimeoutError after ``after`` matches."""

    def __init__(self, rx, fails: int, after: int):
        self.rx, self.fails, self.after = rx, fails, after
        self.calls = 0

    def __getattr__(self, name):
        return getattr(self.rx, name)

    def finditer(self, *args, timeout):
        assert timeout > 0
        self.calls += 1
        scan = self.rx.finditer(*args, timeout=timeout)
        if self.calls > self.fails:
            return scan
        return self._failing(scan)

    def _failing(self, scan):
        for i, m in enumerate(scan):
            if i == self.after:
                raise TimeoutError("regex timed out")
            yield m

    def search(self, *args, timeout):
        self.calls += 1
        if self.calls <= self.fails:
            raise TimeoutError("regex timed out")
        return self.rx.search(*args, timeout=timeout)


def _with_early_timeouts(pattern: str, fails: int, after: int = 0):
    real = R.compile(pattern)
    fake = object.__new__(R.Pattern)
    for slot in ("_vm_flags", "_vm_groupindex", "_vm_pattern"):
        setattr(fake, slot, getattr(real, slot))
    fake._vm_rx = _EarlyTimeouts(real._vm_rx, fails, after)
    return fake


@pytest.mark.parametrize("after", [0, 1, 2, 3, 4])
@pytest.mark.parametrize(("pattern", "subject"), [
    (r"x*", "abxd"), (r"\b", "ab cd"), (r"a|", "aab"), (r"(?<=a)x?", "aaxa"),
])
def test_finditer_resumes_after_an_early_timeout(pattern, subject, after):
    fake = _with_early_timeouts(pattern, fails=2, after=after)
    expected = [(m.span(), m.pos) for m in re.finditer(pattern, subject)]
    assert [(m.span(), m.pos) for m in fake.finditer(subject)] == expected
    expected_sub = re.sub(pattern, lambda m: f"<{m.group()}>", subject)
    fake = _with_early_timeouts(pattern, fails=2, after=after)
    assert fake.sub(lambda m: f"<{m.group()}>", subject) == expected_sub


def test_match_retries_after_an_early_timeout():
    fake = _with_early_timeouts(r"b+", fails=3)
    assert fake.search("abb").span() == (1, 3)
    assert fake._vm_rx.calls == 4


# --- nothing leads to a module or the engine ------------------------------------------


def _reachable(root: object, depth: int = 3):
    seen: dict[int, object] = {}
    queue = [(root, "root", 0)]
    while queue:
        obj, path, level = queue.pop()
        if id(obj) in seen:
            continue
        seen[id(obj)] = obj
        yield obj, path
        if level >= depth:
            continue
        for name in dir(obj):
            if name.startswith("_"):
                continue
            try:
                value = getattr(obj, name)
            except Exception:
                continue
            queue.append((value, f"{path}.{name}", level + 1))


def _regex_values():
    pattern = R.compile(r"(?P<x>a)(b)?")
    seen = []
    R.sub(r"a", lambda m: seen.append(m) or "", "a")
    return {
        "facade": R,
        "pattern": pattern,
        "match": pattern.match("ab"),
        "finditer": pattern.finditer("ab ab"),
        "match from finditer": next(pattern.finditer("ab")),
        "match in sub callable": seen[0],
        "bytes match": R.match(rb"a", b"a"),
    }


@pytest.mark.parametrize("name", sorted(_regex_values()))
def test_regex_values_reach_no_module_and_no_engine_object(name):
    root = _regex_values()[name]
    assert walk(root) == []
    for obj, path in _reachable(root):
        assert obj is not regex and obj is not re, path
        modname = str(getattr(type(obj), "__module__", ""))
        assert not modname.startswith(("regex", "_regex")), f"{path}: {type(obj)!r}"
        assert not isinstance(obj, (regex.Pattern, regex.Match, re.Pattern, re.Match)), path


def test_template_subclass_cannot_bring_its_own_regex():
    from vmcontainer import SandboxViolation

    src = (
        "import string\n"
        "class T(string.Template):\n"
        "    idpattern = r'(?:a|aa)+$'\n"
        "def main(inputs):\n"
        "    return T('$' + 'a' * 40 + 'b').safe_substitute({})\n"
    )
    with pytest.raises(SandboxViolation, match="idpattern"):
        run_script(src, None, timeout=2)
