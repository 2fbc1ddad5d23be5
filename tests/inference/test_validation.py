"""Model validation at build and at load, forged models, and device profiles."""

from __future__ import annotations

import dataclasses
import json
import random
import sys
import time

import numpy as np
import pytest

from tests.inference import zoo
from tests.onnx_models import linear_model
from vmcontainer import DeviceProfile, ModelError, TaskTimeout
from vmcontainer.inference.onnx_wire import scan_model
from vmcontainer.inference.profile import ProfileError
from vmcontainer.inference.validate import ModelLimits, validate_model_bytes
from vmcontainer.testing import build_test_bundle, test_container

RUN_X = """
import vm
import numpy as np
def main(inputs):
    return vm.model("m").run({"x": np.ones((1,), dtype=np.float32)})
"""


def test_wire_scanner_reads_what_onnx_reads():
    blob = zoo.two_inputs()
    facts = scan_model(blob)
    assert facts.inputs == ["ids", "weights"] and facts.outputs == ["score"]
    assert facts.opsets == {"": 17} and facts.initializers == {"axes"}
    assert facts.small_ints == {"axes": (1,)} and not facts.external_tensors


def test_external_data_is_refused_without_onnx_installed(monkeypatch, container):
    blob = zoo.external_data(zoo.mlp())
    monkeypatch.setitem(sys.modules, "onnx", None)  # the device: no onnx package
    with pytest.raises(ImportError):
        import onnx  # noqa: F401
    with pytest.raises(ModelError, match="external data"):
        validate_model_bytes("m", blob)
    bundle = build_test_bundle("def main(i):\n    return 1\n", name="extdata", models={"m": blob})
    with pytest.raises(ModelError, match="external data"):
        container.install(bundle)
    assert "extdata" not in {t.name for t in container.tasks()}


@pytest.mark.parametrize("blob,match", [
    (zoo.with_opset(6), "opset 6"),
    (zoo.with_opset(22), "opset 22"),
    (zoo.custom_domain(), "custom op domain"),
    (b"", "not a valid ONNX"),
    (b"\x0a\xff\xff\xff\xff\x0f", "not a valid ONNX"),
    (b"\x08\x09\x3a\x00", "declares no graph inputs"),  # ir_version + an empty graph
])
def test_refused_models(blob, match):
    with pytest.raises(ModelError, match=match):
        validate_model_bytes("m", blob)


def test_size_cap_and_opset_range_come_from_the_profile(deploy, container):
    blob, _, _ = linear_model()
    with pytest.raises(ModelError, match="cap is 100"):
        validate_model_bytes("m", blob, limits=ModelLimits(max_bytes=100))
    with pytest.raises(ModelError, match=r"supports 18\.\.21"):
        validate_model_bytes("m", blob, limits=ModelLimits(min_opset=18))
    assert DeviceProfile(max_model_bytes=100).model_limits().max_bytes == 100


def test_build_time_check_also_runs_the_onnx_checker():
    from bytecode_tools.models import check_model

    with pytest.raises(ModelError, match="ONNX checker"):
        check_model("m", _checker_only_bad())
    validate_model_bytes("m", _checker_only_bad())  # the device leaves that to ORT


def _checker_only_bad() -> bytes:
    """Valid on the wire and for our rules, but a node reads an undefined tensor."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["nowhere"], ["y"])], "bad",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N"])])
    return zoo.finish(graph, check=False)


def test_forged_constant_of_shape_is_refused_at_install(container):
    bomb = zoo.constant_of_shape_bomb()
    assert len(bomb) < 200
    with pytest.raises(ModelError, match=r"ConstantOfShape would allocate 40,000,000,000 bytes"):
        container.install(build_test_bundle(RUN_X, name="bomb", models={"m": bomb}))


def test_input_driven_allocation_hits_the_memory_cap_not_the_process():
    blob = zoo.dynamic_bomb()
    src = """
import vm
import numpy as np
def main(inputs):
    return vm.model("m").run({"shape": np.array([inputs], dtype=np.int64)})["total"]
"""
    with test_container(workers=1, profile=DeviceProfile(memory_limit_mb=64)) as box:
        box.install(build_test_bundle(src, name="dyn", models={"m": blob}))
        assert box.invoke("dyn", 1000) == 0.0
        with pytest.raises(ModelError, match="memory budget of 64 MB"):
            box.invoke("dyn", 10_000_000_000)  # 40 GB
        with pytest.raises(ModelError, match="memory budget"):
            box.invoke("dyn", 100_000_000)  # 400 MB: would fit in RAM, not in the budget
        assert box.invoke("dyn", 1000) == 0.0  # the session and the process carry on


def test_loop_with_1e15_trips_is_contained_by_the_deadline(deploy, container):
    name = deploy("""
import vm
import numpy as np
def main(inputs):
    m = vm.model("slow")
    return m.run({"x": np.ones((1, 64), dtype=np.float32),
                  "trips": np.array([10**15], dtype=np.int64)})
""", models={"slow": zoo.slow_batched()})
    start = time.monotonic()
    with pytest.raises(TaskTimeout):
        container.invoke(name, timeout=0.2)
    assert time.monotonic() - start < 0.45


def test_scanner_survives_mutated_models():
    """Random byte flips and truncations: accepted or ModelError, never anything else."""
    base = zoo.mlp(n_in=4, hidden=4)
    rng = random.Random(7)
    for _ in range(300):
        data = bytearray(base)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        if rng.random() < 0.3:
            data = data[:rng.randrange(len(data))]
        try:
            validate_model_bytes("m", bytes(data))
        except ModelError:
            pass


# -- device profiles ---------------------------------------------------------------------


@pytest.mark.parametrize("data,match", [
    ({"custom_op_libraries": ["libevil.so"]}, "custom op libraries"),
    ({"enable_profiling": True}, "profiling writes files"),
    ({"optimized_model_filepath": "/tmp/x.onnx"}, "optimized-model files"),
    ({"provider_options": {"CUDAExecutionProvider": {}}}, "only provider names"),
    ({"providers": ["AzureExecutionProvider"]}, "remote endpoint"),
    ({"session_config": {"ep.context_enable": "1"}}, "not allowed"),
    ({"session_config": {"session.load_model_format": "ORT"}}, "not allowed"),
    ({"intra_threads": 2}, "unknown profile keys"),
    ({"graph_optimization": "max"}, "graph_optimization"),
    ({"micro_batch": {"m": {"window_ms": 0}}}, "window_ms"),
    ({"memory_limit_mb": 1}, "memory_limit_mb"),
])
def test_refused_profile_options(data, match):
    with pytest.raises(ProfileError, match=match):
        DeviceProfile.from_dict(data)
    assert issubclass(ProfileError, ModelError)


def test_profile_from_file_round_trips(tmp_path):
    path = tmp_path / "device.json"
    path.write_text(json.dumps({
        "intra_op_threads": 2, "graph_optimization": "extended", "memory_limit_mb": 256,
        "providers": ["NoSuchExecutionProvider", "CPUExecutionProvider"],
        "micro_batch": {"ranker": {"window_ms": 1.5, "max_batch": 32}},
        "session_config": {"session.set_denormal_as_zero": "1"},
    }))
    profile = DeviceProfile.from_file(path)
    assert profile.intra_op_threads == 2 and profile.memory_limit_mb == 256
    assert profile.available_providers() == ["CPUExecutionProvider"]  # CPU fallback
    assert profile.batching_for("ranker").max_batch == 32 and profile.batching_for("x") is None
    so = profile.session_options()
    assert so.intra_op_num_threads == 2 and not so.enable_profiling
    assert so.optimized_model_filepath == ""
    # Plain data: crosses to worker processes as asdict and back.
    assert DeviceProfile(**dataclasses.asdict(profile)) == profile
    hash(profile)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ProfileError, match=r"cannot read device profile bad\.json"):
        DeviceProfile.from_file(tmp_path / "bad.json")


def test_lazy_sessions_are_created_at_first_use():
    blob = zoo.mlp(seed=11)
    src = """
import vm
import numpy as np
def main(inputs):
    return vm.model("m").run({"features": np.ones((2, 8), dtype=np.float32)})["scores"]
"""
    with test_container(workers=1, profile=DeviceProfile(preload=False)) as box:
        box.install(build_test_bundle(src, name="lazy", models={"m": blob}))
        model = next(iter(box._hub._models.values()))
        assert model.session is None  # validated at install, not loaded
        out = box.invoke("lazy")
        assert model.session is not None and model.create_ms is not None
        np.testing.assert_allclose(out, zoo.mlp_reference(blob, np.ones((2, 8), np.float32)),
                                   rtol=1e-4, atol=1e-6)
