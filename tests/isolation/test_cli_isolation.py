"""``vmc run --isolation process``: crashes and C-level hangs cost a worker, not the host."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from vmcontainer.testing import run_script

CRASH = "def main(i):\n    t = ()\n    for _ in range(10 ** 6):\n        t = (t,)\n    return hash(t)\n"
C_HANG = "def main(i):\n    return sum(range(10 ** 11))\n"


def vmc(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vmcontainer.cli", *args],
                          capture_output=True, text=True, timeout=60)


def test_vmc_run_process_mode_contains_a_segfault(tmp_path):
    script = tmp_path / "crash.py"
    script.write_text(CRASH)
    proc = vmc("run", str(script), "--isolation", "process", "--timeout", "20", "--json")
    out = json.loads(proc.stdout)
    assert out["ok"] is False
    assert out["error"]["type"] in ("WorkerCrashed", "ResourceLimitExceeded")
    assert proc.returncode == 1


def test_vmc_run_process_mode_kills_a_c_level_hang(tmp_path):
    script = tmp_path / "hang.py"
    script.write_text(C_HANG)
    proc = vmc("run", str(script), "--isolation", "process", "--timeout", "0.5", "--json")
    assert json.loads(proc.stdout)["error"]["type"] == "TaskTimeout"
    assert proc.returncode == 5


@pytest.mark.parametrize("isolation", ["thread", "process"])
def test_run_script_same_result_in_both_modes(isolation):
    src = "import numpy as np\ndef main(i):\n    return {'s': float(np.arange(i).sum()), 'n': i}\n"
    assert run_script(src, 10, isolation=isolation) == {"s": 45.0, "n": 10}
