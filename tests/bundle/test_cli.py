"""``vmtool`` and ``vmc`` as subprocesses: files written, exit codes, one JSON object,
and no host paths in ``vmc``'s error output."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vmcontainer.bundle import format as fmt
from vmcontainer.bundle.keys import key_id, load_device_public, load_publisher_public

REPO = Path(__file__).resolve().parents[2]
SUM = 'def main(inputs):\n    return {"sum": sum(inputs["xs"])}\n'
KEY_FILES = ("publisher.key", "publisher.pub", "device.key", "device.pub")


def _run(module: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


def vmtool(*args: str) -> subprocess.CompletedProcess:
    return _run("bytecode_tools.cli", *args)


def vmc(*args: str) -> subprocess.CompletedProcess:
    return _run("vmcontainer.cli", *args)


def assert_no_host_paths(proc: subprocess.CompletedProcess, *more: Path) -> None:
    out = proc.stdout + proc.stderr
    for needle in (str(REPO), "/work/main", "site-packages", *map(str, more)):
        assert needle not in out, f"{needle!r} leaked into:\n{out}"


def one_json_object(proc: subprocess.CompletedProcess) -> dict:
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, proc.stdout
    obj = json.loads(lines[0])
    assert isinstance(obj, dict)
    return obj


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="module")
def keydir(work) -> Path:
    d = work / "keys"
    proc = vmtool("keygen", "--out", d)
    assert proc.returncode == 0, proc.stderr
    return d


@pytest.fixture(scope="module")
def bundle(work, keydir) -> Path:
    src = work / "sum.py"
    src.write_text(SUM)
    out = work / "sum.vmb"
    proc = vmtool("build", src, "--name", "adder", "--release", "4",
                  "--sign", keydir / "publisher.key", "--to", keydir / "device.pub", "-o", out)
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {out}" in proc.stdout
    return out


def script(work: Path, name: str, source: str) -> Path:
    path = work / name
    path.write_text(source)
    return path


# --- vmtool ----------------------------------------------------------------------------


def test_keygen_writes_four_files_private_ones_0600(keydir):
    assert sorted(p.name for p in keydir.iterdir()) == sorted(KEY_FILES)
    for name in KEY_FILES:
        mode = stat.S_IMODE((keydir / name).stat().st_mode)
        if name.endswith(".key"):
            assert mode == 0o600, (name, oct(mode))
            assert b"PRIVATE KEY" in (keydir / name).read_bytes()
        else:
            assert mode & 0o077 != 0o077 and not mode & 0o022, (name, oct(mode))
            assert b"PUBLIC KEY" in (keydir / name).read_bytes()
    load_publisher_public(keydir / "publisher.pub")
    load_device_public(keydir / "device.pub")


def test_keygen_device_key_types(tmp_path):
    """X25519 by default; ``--device-key p256`` for hardware keystores."""
    from vmcontainer.bundle.keys import device_key_type, load_device_private

    assert vmtool("keygen", "--out", tmp_path / "a").returncode == 0
    assert device_key_type(load_device_private(tmp_path / "a" / "device.key")) == "x25519"
    assert vmtool("keygen", "--out", tmp_path / "b", "--device-key", "p256").returncode == 0
    assert device_key_type(load_device_private(tmp_path / "b" / "device.key")) == "p256"
    assert device_key_type(load_device_public(tmp_path / "b" / "device.pub")) == "p256"


def test_keygen_refuses_to_overwrite(keydir):
    before = {n: (keydir / n).read_bytes() for n in KEY_FILES}
    proc = vmtool("keygen", "--out", keydir)
    assert proc.returncode == 2
    assert "refusing to overwrite" in proc.stderr
    assert {n: (keydir / n).read_bytes() for n in KEY_FILES} == before


def test_build_writes_a_bundle(bundle, keydir):
    raw = fmt.parse_bundle(bundle.read_bytes())
    assert (raw.header["task"], raw.header["release"]) == ("adder", 4)
    assert raw.signatures[0][0] == key_id(load_publisher_public(keydir / "publisher.pub"))
    assert raw.recipients[0][0] == key_id(load_device_public(keydir / "device.pub"))


def test_build_policy_violation_prints_diagnostics_and_writes_nothing(work, keydir):
    bad = script(work, "bad.py",
                 "import os\n\n\ndef main(inputs):\n    return inputs.__class__\n")
    out = work / "bad.vmb"
    proc = vmtool("build", bad, "--name", "bad", "--release", "1",
                  "--sign", keydir / "publisher.key", "--to", keydir / "device.pub", "-o", out)
    assert proc.returncode == 4
    assert not out.exists()
    assert "wrote" not in proc.stdout
    lines = proc.stderr.strip().splitlines()
    pattern = re.compile(rf"^{re.escape(str(bad))}:(\d+):(\d+): (.+)$")
    matches = [pattern.match(line) for line in lines]
    assert lines and all(matches), proc.stderr
    assert [int(m.group(1)) for m in matches] == [1, 5]
    assert '"os"' in matches[0].group(3)
    assert "__class__" in matches[1].group(3)


def test_build_syntax_error_writes_nothing(work, keydir):
    bad = script(work, "syntax.py", "def main(inputs):\n    return (\n")
    out = work / "syntax.vmb"
    proc = vmtool("build", bad, "--name", "bad", "--release", "1",
                  "--sign", keydir / "publisher.key", "--to", keydir / "device.pub", "-o", out)
    assert proc.returncode == 4
    assert not out.exists()
    assert re.match(rf"^{re.escape(str(bad))}:\d+:\d+: SyntaxError", proc.stderr)


def test_inspect_json_prints_the_clear_header_without_keys(bundle, keydir):
    proc = vmtool("inspect", bundle, "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    raw = fmt.parse_bundle(bundle.read_bytes())
    assert info == {
        "header": raw.header,
        "signatures": [raw.signatures[0][0].hex()],
        "recipients": [raw.recipients[0][0].hex()],
        "size": bundle.stat().st_size,
    }
    assert "PRIVATE" not in proc.stdout and "BEGIN" not in proc.stdout


# --- vmc ---------------------------------------------------------------------------------


def test_invoke_json_prints_exactly_one_object(bundle, keydir):
    proc = vmc("invoke", bundle, "--trust", keydir / "publisher.pub",
               "--key", keydir / "device.key", "--input", '{"xs":[1,2]}', "--json")
    assert proc.returncode == 0, proc.stderr
    obj = one_json_object(proc)
    assert set(obj) == {"ok", "result", "elapsed_ms"}
    assert obj["ok"] is True and obj["result"] == {"sum": 3}
    assert isinstance(obj["elapsed_ms"], (int, float)) and obj["elapsed_ms"] >= 0


def test_run_timeout_exits_5(work):
    loop = script(work, "loop.py", "def main(inputs):\n    while True:\n        pass\n")
    start = time.monotonic()
    proc = vmc("run", loop, "--timeout", "0.2", "--json")
    assert time.monotonic() - start < 30
    assert proc.returncode == 5, proc.stderr
    obj = one_json_object(proc)
    assert obj["ok"] is False
    assert obj["error"]["type"] == "TaskTimeout"
    assert isinstance(obj["error"]["message"], str)
    assert_no_host_paths(proc, work)


@pytest.mark.parametrize("as_json", [True, False], ids=["json", "text"])
def test_invoke_tampered_bundle_exits_3(work, bundle, keydir, as_json):
    data = bytearray(bundle.read_bytes())
    data[-1] ^= 0x01  # GCM tag: its digest is signed
    tampered = work / "tampered.vmb"
    tampered.write_bytes(bytes(data))
    proc = vmc("invoke", tampered, "--trust", keydir / "publisher.pub",
               "--key", keydir / "device.key", "--input", '{"xs":[1]}',
               *(["--json"] if as_json else []))
    assert proc.returncode == 3
    if as_json:
        obj = one_json_object(proc)
        assert obj["ok"] is False and obj["error"]["type"] == "BundleSignatureInvalid"
    else:
        assert proc.stdout == ""
        assert "BundleSignatureInvalid: ciphertext does not match" in proc.stderr
    assert_no_host_paths(proc, work)


def test_invoke_bundle_for_another_device_exits_3(work, bundle, keydir):
    other = work / "other-keys"
    assert vmtool("keygen", "--out", other).returncode == 0
    proc = vmc("invoke", bundle, "--trust", keydir / "publisher.pub",
               "--key", other / "device.key", "--json")
    assert proc.returncode == 3
    assert one_json_object(proc)["error"]["type"] == "BundleNotForThisDevice"
    assert_no_host_paths(proc, work)


def test_run_compile_error_exits_4(work):
    bad = script(work, "policy.py", "import os\n\n\ndef main(inputs):\n    return 1\n")
    proc = vmc("run", bad)
    assert proc.returncode == 4
    assert "CompileError: policy.py:1:" in proc.stderr  # base name only
    assert '"os"' in proc.stderr
    assert_no_host_paths(proc, work)


def test_run_sandbox_violation_exits_4(work):
    bad = script(work, "violation.py",
                 'def main(inputs):\n    return getattr(inputs, "__cl" + "ass__")\n')
    proc = vmc("run", bad, "--input", "{}", "--json")
    assert proc.returncode == 4
    assert one_json_object(proc)["error"]["type"] == "SandboxViolation"
    assert_no_host_paths(proc, work)


@pytest.mark.parametrize("body, message", [
    ('    raise ValueError("bad input")\n', "ValueError: bad input"),
    ("    return np.array([1, 2]).reshape(3)\n", "ValueError: cannot reshape"),  # in numpy
])
def test_run_task_raising_exits_1(work, body, message):
    src = script(work, "raises.py", "import numpy as np\n\n\ndef main(inputs):\n" + body)
    proc = vmc("run", src, "--json")
    assert proc.returncode == 1
    obj = one_json_object(proc)
    assert obj["ok"] is False and obj["error"]["type"] == "TaskError"
    assert obj["error"]["message"].startswith(message)
    assert_no_host_paths(proc, work)

    text = vmc("run", src)
    assert text.returncode == 1
    assert any(ln.startswith(f"TaskError: {message}") for ln in text.stderr.splitlines())
    frames = [ln for ln in text.stderr.splitlines() if ln.strip().startswith("File ")]
    assert frames == ['  File "raises.py", line 5, in main']  # script frames only
    assert_no_host_paths(text, work)


@pytest.mark.parametrize("argv", [
    ("run", "no-such-script.py"),
    ("run", "no-such-script.py", "--json"),
    ("invoke", "no-such-bundle.vmb", "--trust", "keys/publisher.pub", "--key", "keys/device.key"),
    ("invoke", "some.vmb", "--trust", "keys/publisher.pub"),  # --key missing
    ("frobnicate",),
], ids=["run-missing", "run-missing-json", "invoke-missing", "invoke-no-key", "bad-command"])
def test_usage_errors_exit_2(argv):
    proc = vmc(*argv)
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert proc.stderr
    assert_no_host_paths(proc)


def test_bad_input_json_is_a_usage_error(work):
    src = script(work, "ok.py", SUM)
    proc = vmc("run", src, "--input", "{not json")
    assert proc.returncode == 2
    assert_no_host_paths(proc, work)


def test_printing_task_keeps_stdout_to_one_json_object(work):
    src = script(work, "printer.py", 'def main(inputs):\n    print("hello")\n'
                 '    print(\'{"ok": false}\')\n    return [1, "two"]\n')
    proc = vmc("run", src, "--json")
    assert proc.returncode == 0, proc.stderr
    assert one_json_object(proc)["result"] == [1, "two"]
    assert "hello" in proc.stderr  # printed output goes to the log, not stdout


def test_keygen_does_not_write_through_a_symlink(work):
    """A dangling ``publisher.key`` symlink in --out must not receive the private key."""
    d = work / "symlinked"
    d.mkdir()
    target = work / "planted-target.key"
    (d / "publisher.key").symlink_to(target)
    proc = vmtool("keygen", "--out", d)
    assert not target.exists(), "private key written through a planted symlink"
    assert proc.returncode == 2


@pytest.mark.parametrize("command", ["run", "invoke"])
@pytest.mark.parametrize("value", ["0", "-1"])
def test_non_positive_timeout_is_a_usage_error(work, bundle, keydir, command, value):
    if command == "run":
        argv = ["run", script(work, "ok2.py", SUM)]
    else:
        argv = ["invoke", bundle, "--trust", keydir / "publisher.pub", "--key", keydir / "device.key"]
    proc = vmc(*argv, "--input", '{"xs":[1]}', "--timeout", value, "--json")
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)


def test_json_output_is_strict_json(work):
    """``--json`` promises one JSON object; NaN/Infinity are not JSON (RFC 8259)."""
    src = script(work, "nan.py", 'def main(inputs):\n    return {"x": float("nan")}\n')
    proc = vmc("run", src, "--json")

    def reject(token):
        raise ValueError(f"non-JSON token {token}")

    json.loads(proc.stdout, parse_constant=reject)
