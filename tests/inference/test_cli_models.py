"""``vmtool`` model commands end to end, as subprocesses: quantize, bench-model, build-model,
and ``build --model-ref`` installing against the model bundle."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.inference import zoo
from vmcontainer.bundle.keys import private_pem, public_pem
from vmcontainer.testing import ephemeral_keys, test_container


def vmtool(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bytecode_tools.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    (d / "float.onnx").write_bytes(zoo.mlp(n_in=8, hidden=32, n_out=4, seed=1))
    rng = np.random.default_rng(0)
    np.savez(d / "data.npz", features=rng.standard_normal((40, 8)).astype(np.float32))
    publisher, device = ephemeral_keys()
    (d / "publisher.key").write_bytes(private_pem(publisher))
    (d / "device.pub").write_bytes(public_pem(device.public_key()))
    return d


def test_quantize_dynamic_and_static_then_bench_against_the_float_model(work):
    dyn = vmtool("quantize", "float.onnx", "-o", "dyn.onnx", cwd=work)
    assert dyn.returncode == 0, dyn.stderr
    assert "dynamic int8" in dyn.stdout and (work / "dyn.onnx").exists()
    static = vmtool("quantize", "float.onnx", "-o", "static.onnx", "--static",
                    "--calibration", "data.npz", cwd=work)
    assert static.returncode == 0, static.stderr
    assert "static int8" in static.stdout
    no_data = vmtool("quantize", "float.onnx", "-o", "x.onnx", "--static", cwd=work)
    assert no_data.returncode == 4 and "--calibration" in no_data.stderr

    bench = vmtool("bench-model", "static.onnx", "--reference", "float.onnx", "--batch", "8",
                   "--inputs", "data.npz", "--runs", "200", "--json", cwd=work)
    assert bench.returncode == 0, bench.stderr
    report = json.loads(bench.stdout)
    assert report["device_check"] == "ok" and report["inputs_from"] == "data.npz"
    assert set(report["latency_us"]) == {"1", "8"}
    assert all(v["p50"] > 0 and v["p99"] >= v["p50"] for v in report["latency_us"].values())
    drift = report["drift"]["scores"]
    assert 0 < drift["rel_l2"] < 0.2 and drift["max_abs"] < 0.5
    assert report["reference_size"] > 0 and report["size"] > 0

    table = vmtool("bench-model", "dyn.onnx", "--reference", "float.onnx", "--runs", "100",
                   cwd=work)
    assert table.returncode == 0, table.stderr
    assert "| batch | p50 (us) | p99 (us)" in table.stdout and "random inputs" in table.stdout


def test_build_model_then_a_task_referencing_it(work):
    built = vmtool("build-model", "ranker", "float.onnx", "--release", "3", "--sign",
                   "publisher.key", "--to", "device.pub", "-o", "ranker.vmb",
                   "--micro-batch", "2,16", cwd=work)
    assert built.returncode == 0, built.stderr
    assert "model ranker release 3" in built.stdout
    inspected = vmtool("inspect", "ranker.vmb", "--json", cwd=work)
    assert json.loads(inspected.stdout)["header"]["task"] == "model:ranker"

    (work / "task.py").write_text(
        "import vm\n"
        "def main(inputs):\n"
        "    return vm.model('scorer').run({'features': inputs})['scores']\n")
    task = vmtool("build", "task.py", "--name", "scoring", "--release", "1", "--sign",
                  "publisher.key", "--to", "device.pub", "-o", "task.vmb",
                  "--model-ref", "scorer=float.onnx,name=ranker,policy=compatible", cwd=work)
    assert task.returncode == 0, task.stderr
    bad = vmtool("build", "task.py", "--name", "x", "--release", "1", "--sign", "publisher.key",
                 "--to", "device.pub", "-o", "x.vmb", "--model-ref", "scorer=float.onnx,oops=1",
                 cwd=work)
    assert bad.returncode == 2 and "--model-ref option" in bad.stderr

    refused = vmtool("build-model", "bomb", "float.onnx", "--release", "1", "--sign",
                     "publisher.key", "--to", "device.pub", "-o", "b.vmb", "--micro-batch",
                     "0", cwd=work)
    assert refused.returncode == 4 and "window_ms" in refused.stderr

    x = np.ones((2, 8), np.float32)
    with test_container(workers=1) as box:
        info = box.install(work / "ranker.vmb")
        assert (info.model, info.release, info.micro_batch) == (
            "ranker", 3, {"window_ms": 2.0, "max_batch": 16})
        box.install(work / "task.vmb")
        blob = (work / "float.onnx").read_bytes()
        np.testing.assert_allclose(box.invoke("scoring", x), zoo.mlp_reference(blob, x),
                                   rtol=1e-4, atol=1e-6)
