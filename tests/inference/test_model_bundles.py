"""Model bundles: one model shared by several tasks, updated without touching scripts."""

from __future__ import annotations

import numpy as np
import pytest

from bytecode_tools.models import compatible_ref, pin_ref
from tests.inference import zoo
from vmcontainer import BundleIntegrityError, BundleRollback, ModelError
from vmcontainer.inference.refs import ModelIncompatible, ModelNotInstalled
from vmcontainer.inference.store import ModelInfo
from vmcontainer.testing import build_test_bundle, test_container

SCORE = """
import vm
import numpy as np
def main(inputs):
    return vm.model("ranker").run({"features": inputs})["scores"]
"""
X = np.linspace(-1, 1, 24, dtype=np.float32).reshape(3, 8)


@pytest.fixture
def box():
    with test_container(workers=2) as c:
        yield c


def _expect(blob: bytes) -> np.ndarray:
    return zoo.mlp_reference(blob, X)


def test_model_shared_by_two_tasks_and_updated_alone(box):
    v1, v2 = zoo.mlp(seed=1), zoo.mlp(seed=2)
    info = box.install(zoo.model_bundle("ranker", v1, release=1))
    assert isinstance(info, ModelInfo) and (info.name, info.model, info.release) == (
        "model:ranker", "ranker", 1)
    box.install(build_test_bundle(SCORE, name="pinned",
                                  model_refs={"ranker": pin_ref("ranker", v1)}))
    box.install(build_test_bundle(SCORE, name="follows",
                                  model_refs={"ranker": compatible_ref("ranker", v1)}))
    assert box._hub.loaded() == 1  # one session for the model bundle and both tasks
    for task in ("pinned", "follows"):
        np.testing.assert_allclose(box.invoke(task, X), _expect(v1), rtol=1e-4, atol=1e-6)

    box.install(zoo.model_bundle("ranker", v2, release=2))  # no script rebuilt or reinstalled
    np.testing.assert_allclose(box.invoke("follows", X), _expect(v2), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(box.invoke("pinned", X), _expect(v1), rtol=1e-4, atol=1e-6)
    assert box._hub.loaded() == 2  # v1 stays loaded for the pinned task only
    assert [(m.model, m.release) for m in box.models()] == [("ranker", 2)]
    assert {t.name: t.release for t in box.tasks()} == {"pinned": 1, "follows": 1}

    box.uninstall("pinned")
    assert box._hub.loaded() == 1  # released when unused


def test_missing_and_incompatible_references_fail_at_install(box):
    v1 = zoo.mlp(seed=1)
    with pytest.raises(ModelNotInstalled, match=r"needs model 'ranker'.*not installed"):
        box.install(build_test_bundle(SCORE, name="early",
                                      model_refs={"ranker": compatible_ref("ranker", v1)}))
    box.install(zoo.model_bundle("ranker", v1, release=1))
    with pytest.raises(ModelNotInstalled, match=r"pins model 'ranker'.*installed: release 1"):
        box.install(build_test_bundle(SCORE, name="other-pin", model_refs={
            "ranker": pin_ref("ranker", zoo.mlp(seed=9))}))
    wider = zoo.mlp(n_in=10, seed=3)
    with pytest.raises(ModelIncompatible, match="axis 1 size 10 -> 8"):
        box.install(build_test_bundle(SCORE, name="wide", model_refs={
            "ranker": compatible_ref("ranker", wider)}))
    renamed = zoo.mlp(seed=4, out_name="probs")
    with pytest.raises(ModelIncompatible, match="output 'probs' is gone"):
        box.install(build_test_bundle(SCORE, name="renamed", model_refs={
            "ranker": compatible_ref("ranker", renamed)}))
    with pytest.raises(ModelIncompatible, match="min_release 3"):
        box.install(build_test_bundle(SCORE, name="newer", model_refs={
            "ranker": compatible_ref("ranker", v1, min_release=3)}))
    assert box.tasks() == []
    assert issubclass(ModelNotInstalled, ModelError)


def test_incompatible_update_leaves_running_tasks_on_their_model(box):
    v1 = zoo.mlp(seed=1)
    box.install(zoo.model_bundle("ranker", v1, release=1))
    box.install(build_test_bundle(SCORE, name="follows",
                                  model_refs={"ranker": compatible_ref("ranker", v1)}))
    box.install(zoo.model_bundle("ranker", zoo.mlp(n_in=10, seed=5), release=2))
    np.testing.assert_allclose(box.invoke("follows", X), _expect(v1), rtol=1e-4, atol=1e-6)
    with pytest.raises(ModelIncompatible):
        box.install(build_test_bundle(SCORE, name="late",
                                      model_refs={"ranker": compatible_ref("ranker", v1)}))
    box.install(zoo.model_bundle("ranker", zoo.mlp(seed=6), release=3))  # compatible again
    np.testing.assert_allclose(box.invoke("follows", X), _expect(zoo.mlp(seed=6)), rtol=1e-4,
                               atol=1e-6)


def test_model_rollback_is_refused_and_namespaces_are_apart(box):
    box.install(build_test_bundle("def main(i):\n    return 1\n", name="ranker", release=5))
    box.install(zoo.model_bundle("ranker", zoo.mlp(seed=1), release=2))  # not blocked by task 5
    with pytest.raises(BundleRollback, match="model:ranker"):
        box.install(zoo.model_bundle("ranker", zoo.mlp(seed=2), release=1))
    box.install(zoo.model_bundle("ranker", zoo.mlp(seed=2), release=1), allow_rollback=True)
    assert box.models()[0].release == 1
    with pytest.raises(BundleIntegrityError, match="may not start with 'model:'"):
        box.install(build_test_bundle("def main(i):\n    return 1\n", name="model:x"))


def test_uninstalled_model_keeps_serving_its_tasks(box):
    v1 = zoo.mlp(seed=1)
    box.install(zoo.model_bundle("ranker", v1, release=1))
    box.install(build_test_bundle(SCORE, name="user",
                                  model_refs={"ranker": pin_ref("ranker", v1)}))
    box.uninstall("model:ranker")
    assert box.models() == []
    np.testing.assert_allclose(box.invoke("user", X), _expect(v1), rtol=1e-4, atol=1e-6)
    # Pinned bytes still loaded for a task: a second pin to them resolves.
    box.install(build_test_bundle(SCORE, name="user2",
                                  model_refs={"ranker": pin_ref("ranker", v1)}))
    with pytest.raises(ModelNotInstalled):
        box.install(build_test_bundle(SCORE, name="user3",
                                      model_refs={"ranker": compatible_ref("ranker", v1)}))


def test_declared_signature_must_match_the_model(box):
    v1 = zoo.mlp(seed=1)
    lie = {"inputs": [{"name": "features", "dtype": "float32", "shape": ["N", 9]}],
           "outputs": [{"name": "scores", "dtype": "float32", "shape": ["N", 1]}]}
    with pytest.raises(ModelError, match="does not match its declared signature"):
        box.install(zoo.model_bundle("ranker", v1, release=1, signature=lie))
    assert box.models() == [] and box._hub.loaded() == 0


def test_a_model_bundle_is_validated_like_any_model(box):
    with pytest.raises(ModelError, match="ConstantOfShape would allocate"):
        box.install(zoo.model_bundle("bomb", zoo.constant_of_shape_bomb(), release=1,
                                     signature={"inputs": [], "outputs": []}))


def test_embedded_and_referenced_models_side_by_side(box):
    v1 = zoo.mlp(seed=1)
    box.install(zoo.model_bundle("ranker", v1, release=1))
    src = """
import vm
import numpy as np
def main(inputs):
    a = vm.model("ranker").run({"features": inputs})["scores"]
    b = vm.model("local").run({"features": inputs})["scores"]
    return [a, b, sorted([m["name"] for m in vm.model("ranker").inputs])]
"""
    local = zoo.mlp(seed=7)
    box.install(build_test_bundle(src, name="both", models={"local": local},
                                  model_refs={"ranker": pin_ref("ranker", v1)}))
    a, b, names = box.invoke("both", X)
    np.testing.assert_allclose(a, _expect(v1), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(b, _expect(local), rtol=1e-4, atol=1e-6)
    assert names == ["features"]
    assert box.tasks()[0].models == ("local", "ranker")
