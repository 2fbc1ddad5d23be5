"""The script-side model API: signatures, exact input checks, explicit conversion."""

from __future__ import annotations

import numpy as np
import pytest

from tests.inference import zoo
from vmcontainer import ModelInputError, ResourceLimitExceeded

CALL = """
import vm
import numpy as np
def main(inputs):
    m = vm.model("two")
    return m.run({FEEDS}{EXTRA})
"""


def _deploy_two(deploy, feeds: str, extra: str = "") -> str:
    return deploy(CALL.replace("{FEEDS}", feeds).replace("{EXTRA}", extra),
                  models={"two": zoo.two_inputs()})


def test_inputs_and_outputs_describe_names_dtypes_shapes(container, deploy):
    name = deploy("""
import vm
def main(inputs):
    m = vm.model("two")
    return [m.name, m.inputs, m.outputs]
""", models={"two": zoo.two_inputs()})
    model_name, inputs, outputs = container.invoke(name)
    assert model_name == "two"
    assert inputs == [{"name": "ids", "dtype": "int64", "shape": ["N", 3]},
                      {"name": "weights", "dtype": "float32", "shape": ["N", 3]}]
    assert outputs == [{"name": "score", "dtype": "float32", "shape": ["N"]}]


@pytest.mark.parametrize("feeds,match", [
    ('{"ids": np.zeros((2, 3), dtype=np.int64)}',
     r"expected inputs \['ids', 'weights'\], got \['ids'\]"),
    ('{"ids": np.zeros((2, 3), dtype=np.int32), "weights": np.zeros((2, 3), dtype=np.float32)}',
     "input 'ids' expects dtype int64, got int32"),
    ('{"ids": np.zeros((2, 4), dtype=np.int64), "weights": np.zeros((2, 4), dtype=np.float32)}',
     r"input 'ids' expects shape \['N', 3\], got \[2, 4\]"),
    ('{"ids": np.zeros((3,), dtype=np.int64), "weights": np.zeros((2, 3), dtype=np.float32)}',
     r"expects shape \['N', 3\], got \[3\]"),
    ('[np.zeros((2, 3))]', "feeds must be a dict"),
    ('{"ids": [[1, 2, 3]], "weights": np.zeros((1, 3), dtype=np.float32)}',
     "must be a numpy array of int64, got list"),
])
def test_wrong_inputs_say_what_was_expected_and_what_came(container, deploy, feeds, match):
    name = _deploy_two(deploy, feeds)
    with pytest.raises(ModelInputError, match=match):
        container.invoke(name)


def test_mismatched_batch_sizes_are_a_model_input_error(container, deploy):
    name = _deploy_two(deploy, '{"ids": np.zeros((2, 3), dtype=np.int64), '
                               '"weights": np.zeros((5, 3), dtype=np.float32)}')
    with pytest.raises(ModelInputError, match="dimension 'N' is 2 in input 'ids' but 5 in "
                                               "input 'weights'"):
        container.invoke(name)


def test_convert_true_is_explicit_and_safe(container, deploy):
    ok = _deploy_two(deploy, '{"ids": [[1, 2, 3]], "weights": np.ones((1, 3))}',
                     ", convert=True")
    out = container.invoke(ok)
    np.testing.assert_allclose(out["score"], [6.0])
    assert out["score"].dtype == np.float32
    lossy = _deploy_two(deploy, '{"ids": np.ones((1, 3)), "weights": np.ones((1, 3))}',
                        ", convert=True")
    with pytest.raises(ModelInputError, match="float64 does not convert safely"):
        container.invoke(lossy)
    ragged = _deploy_two(deploy, '{"ids": [[1, 2], [3]], "weights": np.ones((2, 3))}',
                         ", convert=True")
    with pytest.raises(ModelInputError, match="not a regular array"):
        container.invoke(ragged)
    not_without = _deploy_two(deploy, '{"ids": [[1, 2, 3]], "weights": np.ones((1, 3))}')
    with pytest.raises(ModelInputError, match="or pass convert=True"):
        container.invoke(not_without)


def test_run_batch_checks_every_item_and_splits(container, deploy):
    name = deploy("""
import vm
import numpy as np
def main(inputs):
    m = vm.model("two")
    items = [{"ids": np.full((k, 3), k, dtype=np.int64),
              "weights": np.ones((k, 3), dtype=np.float32)} for k in (1, 2, 3)]
    return [r["score"] for r in m.run_batch(items)]
""", models={"two": zoo.two_inputs()})
    a, b, c = container.invoke(name)
    assert a.tolist() == [3.0] and b.tolist() == [6.0, 6.0] and c.tolist() == [9.0] * 3
    bad = deploy("""
import vm
import numpy as np
def main(inputs):
    return vm.model("two").run_batch([{"ids": np.zeros((1, 3), dtype=np.int64)}])
""", models={"two": zoo.two_inputs()})
    with pytest.raises(ModelInputError, match="expected inputs"):
        container.invoke(bad)


def test_model_run_cap_still_applies(container, deploy):
    from vmcontainer.sandbox.limits import ResourceLimits
    from vmcontainer.testing import build_test_bundle, test_container

    src = """
import vm
import numpy as np
def main(inputs):
    m = vm.model("two")
    feeds = {"ids": np.zeros((1, 3), dtype=np.int64), "weights": np.zeros((1, 3), dtype=np.float32)}
    for i in range(5):
        m.run(feeds)
"""
    with test_container(workers=1, limits=ResourceLimits(max_model_runs=3)) as box:
        box.install(build_test_bundle(src, name="capped", models={"two": zoo.two_inputs()}))
        with pytest.raises(ResourceLimitExceeded, match="more than 3 model runs"):
            box.invoke("capped")


def test_handles_are_read_only_and_hide_the_session(container, deploy):
    from vmcontainer import SandboxViolation, TaskError

    name = deploy("""
import vm
def main(inputs):
    m = vm.model("two")
    return getattr(m, inputs)
""", models={"two": zoo.two_inputs()})
    for attr in ("_model", "_scope", "_ro"):
        with pytest.raises(SandboxViolation):
            container.invoke(name, attr)
    with pytest.raises(TaskError, match="AttributeError"):
        container.invoke(name, "session")
