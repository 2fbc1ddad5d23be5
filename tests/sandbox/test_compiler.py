"""The compiler: diagnostics with positions, policy at compile time, reproducible output."""

from __future__ import annotations

import hashlib

import pytest

from vmcontainer import CompileError
from vmcontainer.bundle.sealer import code_bytes, pack_task
from vmcontainer.sandbox.compiler import compile_task


@pytest.mark.parametrize("source,line,col,fragment", [
    ("def main(i):\n    return i.__class__\n", 2, 12, '"__class__"'),
    ("import os\ndef main(i): pass\n", 1, 1, 'import of "os"'),
    ("from subprocess import run\ndef main(i): pass\n", 1, 1, 'import from "subprocess"'),
    ("from . import x\ndef main(i): pass\n", 1, 1, "relative imports"),
    ("def main(i):\n    return eval('1')\n", 2, 12, "eval()"),
    ("def main(i):\n    g = (x for x in i)\n    return g.gi_frame\n", 3, 12, '"gi_frame"'),
    ("def main(i):\n    async def f():\n        pass\n", 2, 5, "AsyncFunctionDef"),
    ("def main(i):\n    match i:\n        case 1:\n            pass\n", 2, 5, "Match"),
    ("def main(i):\n    try:\n        pass\n    except* ValueError:\n        pass\n", 2, 5, "TryStar"),
    ("class A(metaclass=type):\n    pass\ndef main(i): pass\n", 1, 1, "metaclass"),
    ("def main(i, _getattr_=None):\n    pass\n", 1, 1, '"_getattr_"'),
    ("def main(i, /, _write_=None):\n    pass\n", 1, 1, '"_write_"'),
    ("def main(i):\n    print = 1\n", 2, 5, '"print" is a reserved name'),
    ("def helper(i):\n    return 1\n", 1, 1, 'entry function "main"'),
    ("def main(i)\n    return 1\n", 1, 12, "SyntaxError"),
])
def test_violations_are_reported_with_positions(source, line, col, fragment):
    with pytest.raises(CompileError) as info:
        compile_task(source, "/build/secret/path/job.py")
    diags = info.value.diagnostics
    assert any(d.line == line and d.col == col and fragment in d.message for d in diags), diags
    assert all(d.filename == "job.py" for d in diags)  # no build-machine paths
    assert str(info.value).startswith("job.py:")


def test_all_violations_reported_at_once():
    with pytest.raises(CompileError) as info:
        compile_task("import os\ndef main(i):\n    return i.__dict__, i._x\n")
    assert len(info.value.diagnostics) == 3


def test_pathological_sources_are_refused_cleanly():
    with pytest.raises(CompileError):
        compile_task("def main(i):\n    return " + "-" * 100000 + "1\n")
    with pytest.raises(CompileError):
        compile_task("x" * (2 << 20))
    with pytest.raises(CompileError, match="UTF-8"):
        compile_task(b"\xff\xfe def main(i): pass")


def test_same_source_gives_same_manifest_and_code_bytes():
    src = "import math\ndef main(i):\n    return [math.sqrt(x) for x in i]\n"
    digests = set()
    manifests = set()
    for _ in range(3):
        payload = pack_task(compile_task(src).code, name="t", release=1)
        digests.add(hashlib.sha256(payload.code).hexdigest())
        manifests.add(repr(sorted(payload.manifest.items())))
    assert len(digests) == 1 and len(manifests) == 1
    assert code_bytes(compile_task(src).code) == payload.code


def test_code_filename_is_the_base_name_only():
    assert compile_task("def main(i): pass\n", "/home/alice/work/x.py").code.co_filename == "x.py"
