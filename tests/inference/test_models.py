"""Host-owned ONNX Runtime sessions through ``vm.model``: results, input checks, deadlines."""

from __future__ import annotations

import time

import numpy as np
import pytest

from tests.onnx_models import linear_model, slow_loop_model
from vmcontainer import ModelInputError, SandboxViolation, TaskTimeout
from vmcontainer.testing import build_test_bundle

RUN = """
import vm
import numpy as np
def main(inputs):
    m = vm.model("lin")
    out = m.run({"x": inputs["x"]})
    return {"y": out["y"], "inputs": m.inputs, "outputs": m.outputs}
"""


def test_model_run_matches_raw_numpy(container, deploy):
    blob, w, b = linear_model()
    name = deploy(RUN, models={"lin": blob})
    x = np.random.default_rng(1).normal(size=(5, 4)).astype(np.float32)
    out = container.invoke(name, {"x": x})
    np.testing.assert_allclose(out["y"], x @ w + b, rtol=1e-5)
    assert out["inputs"] == [{"name": "x", "dtype": "float32", "shape": ["N", 4]}]
    assert out["outputs"] == [{"name": "y", "dtype": "float32", "shape": ["N", 2]}]


@pytest.mark.parametrize("feeds,match", [
    ('{"z": np.zeros((1, 4), dtype=np.float32)}', "expected inputs"),
    ('{"x": np.zeros((1, 4), dtype=np.float64)}', "expects dtype float32"),
    ('{"x": np.zeros((1, 3), dtype=np.float32)}', "expects shape"),
    ('{"x": [[1.0, 2.0, 3.0, 4.0]]}', "must be a numpy array"),
])
def test_wrong_inputs_raise_model_input_error(container, deploy, feeds, match):
    blob, _, _ = linear_model()
    name = deploy(f"import vm\nimport numpy as np\ndef main(i):\n    return vm.model('lin').run({feeds})\n",
                  models={"lin": blob})
    with pytest.raises(ModelInputError, match=match):
        container.invoke(name)


def test_undeclared_model_is_refused(container, deploy):
    blob, _, _ = linear_model()
    name = deploy("import vm\ndef main(i):\n    return vm.model('other')\n", models={"lin": blob})
    with pytest.raises(SandboxViolation, match="not declared"):
        container.invoke(name)


def test_run_batch_splits_back(container, deploy):
    blob, _w, b = linear_model()
    name = deploy("""
import vm
import numpy as np
def main(inputs):
    feeds = [{"x": inputs["a"]}, {"x": inputs["b"]}]
    return [r["y"] for r in vm.model("lin").run_batch(feeds)]
""", models={"lin": blob})
    a = np.ones((2, 4), np.float32)
    b_ = np.zeros((3, 4), np.float32)
    ya, yb = container.invoke(name, {"a": a, "b": b_})
    assert ya.shape == (2, 2) and yb.shape == (3, 2)
    np.testing.assert_allclose(yb, np.tile(b, (3, 1)), rtol=1e-6)


def test_inference_is_terminated_at_the_deadline_and_session_stays_usable(container, deploy):
    slow = slow_loop_model()
    name = deploy("""
import vm
import numpy as np
def main(inputs):
    return vm.model("slow").run({"x": np.ones((1, 256), dtype=np.float32)})
""", models={"slow": slow})
    start = time.monotonic()
    with pytest.raises(TaskTimeout):
        container.invoke(name, None, timeout=0.3)
    elapsed = time.monotonic() - start
    assert elapsed < 0.3 + 0.25, elapsed
    # The same shared session still serves another task afterwards.
    quick = deploy("""
import vm
import numpy as np
def main(inputs):
    m = vm.model("slow")
    return len(m.inputs)
""", models={"slow": slow})
    assert container.invoke(quick) == 1


def test_model_shared_by_digest_across_tasks(container):
    blob, _, _ = linear_model(seed=5)
    before = container._hub.loaded()
    container.install(build_test_bundle(RUN, name="share-a", models={"lin": blob}))
    container.install(build_test_bundle(RUN, name="share-b", models={"lin": blob}))
    assert container._hub.loaded() == before + 1
    container.uninstall("share-a")
    assert container._hub.loaded() == before + 1
    container.uninstall("share-b")
    assert container._hub.loaded() == before
