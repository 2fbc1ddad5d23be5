"""ONNX Runtime: never exposed; models only by declared name; forged models refused or contained."""

from __future__ import annotations

import pytest

from vmcontainer import (
    CompileError,
    ModelError,
    ModelInputError,
    ResourceLimitExceeded,
    SandboxViolation,
    TaskError,
    TaskTimeout,
)
from vmcontainer.testing import build_test_bundle

from . import _models
from ._harness import body

HEAD = "import vm\nimport numpy as np\n"


@pytest.fixture(scope="module")
def lin():
    return {"lin": _models.linear()}


def X(n: int = 1) -> str:
    return f"np.zeros(({n}, 4), dtype=np.float32)"


# --- no onnxruntime, no session -----------------------------------------------------------

@pytest.mark.parametrize("source", [
    "import onnxruntime\ndef main(i):\n    return 1\n",
    "from onnxruntime import InferenceSession\ndef main(i):\n    return 1\n",
    "import onnx\ndef main(i):\n    return 1\n",
    "def main(i):\n    return __import__('onnxruntime')\n",
])
def test_onnxruntime_cannot_be_imported(sandbox, source):
    sandbox.compile_refused(source)


HANDLE_ROUTES = [
    ("return vm.model('lin').session", (TaskError, "AttributeError"), "handle-session"),
    ("return getattr(vm.model('lin'), '_model')", SandboxViolation, "handle-private-model"),
    ("return vm.onnxruntime", (TaskError, "AttributeError"), "vm-onnxruntime"),
    ("return getattr(vm, '_task')", SandboxViolation, "vm-private-task"),
    ("m = vm.model('lin')\nm.run = len", SandboxViolation, "handle-write"),
    ("vm.model = len", SandboxViolation, "vm-write"),
    ("return vm.model('nope')", SandboxViolation, "undeclared-name"),
    ("return vm.model('../lin')", SandboxViolation, "relative-path"),
    ("return vm.model('/etc/passwd')", SandboxViolation, "absolute-path"),
    ("return vm.model('lin/../lin')", SandboxViolation, "traversal"),
    ("class S(str):\n    pass\nreturn vm.model(S('lin'))", SandboxViolation, "str-subclass-name"),
    ("return vm.model(('lin',))", SandboxViolation, "non-str-name"),
    # feeds: exact dict of exact arrays with the declared dtype, rank and dims
    (f"a = np.add({X()}, 1, dtype=object)\nreturn vm.model('lin').run({{'x': a}})", SandboxViolation,
     "object-array"),
    (f"return vm.model('lin').run({{'x': {X()}.tolist()}})", ModelInputError, "list-feed"),
    ("return vm.model('lin').run({'x': np.zeros((1, 4))})", ModelInputError, "float64-feed"),
    ("return vm.model('lin').run({'x': np.zeros((1, 5), dtype=np.float32)})", ModelInputError, "wrong-dim"),
    ("return vm.model('lin').run({'x': np.zeros(4, dtype=np.float32)})", ModelInputError, "wrong-rank"),
    (f"return vm.model('lin').run({{'x': {X()}, 'evil': {X()}}})", ModelInputError, "extra-input"),
    ("return vm.model('lin').run({})", ModelInputError, "missing-input"),
    (f"import collections\nreturn vm.model('lin').run(collections.OrderedDict(x={X()}))", ModelInputError,
     "dict-subclass-feeds"),
    ("return vm.model('lin').run_batch([])", ModelInputError, "empty-batch"),
    ("return vm.model('lin').run_batch(({'x': np.zeros((1,4), dtype=np.float32)},))", ModelInputError,
     "tuple-batch"),
    ("return vm.model('lin').run({'x': np.zeros((10**8, 4), dtype=np.float32)})", ResourceLimitExceeded,
     "huge-feed-capped"),
]


@pytest.mark.parametrize("code,error", [pytest.param(c, e, id=i) for c, e, i in HANDLE_ROUTES])
def test_model_handle_routes(sandbox, lin, code, error):
    exc_type = None
    if isinstance(error, tuple):
        error, exc_type = error
    sandbox.refused(body(code, imports=HEAD), error, exc_type=exc_type, models=lin)


def test_outputs_are_the_scripts_own_copies(sandbox, lin):
    src = body("""
        m = vm.model('lin')
        a = m.run({'x': np.ones((1, 4), dtype=np.float32)})['y']
        before = a.tolist()
        a[0, 0] = 1e9
        b = m.run({'x': np.ones((1, 4), dtype=np.float32)})['y']
        return before == b.tolist(), m.inputs, m.name
    """, imports=HEAD)
    same, inputs, name = sandbox.ok(src, models=lin)
    assert same and name == "lin" and inputs[0]["name"] == "x"


# --- forged models ------------------------------------------------------------------------------

@pytest.mark.parametrize("blob", [
    pytest.param(_models.constant_of_shape_bomb, id="constant-of-shape-40GB"),
    pytest.param(lambda: _models.external_data("/etc/passwd"), id="external-data-absolute"),
    pytest.param(lambda: _models.external_data("../../../etc/passwd"), id="external-data-traversal"),
    pytest.param(lambda: _models.external_data("weights.bin"), id="external-data-relative"),
    pytest.param(_models.no_inputs, id="no-inputs"),
    pytest.param(_models.custom_domain, id="custom-op-domain"),
    pytest.param(lambda: b"\x08\x09" + b"\xff" * 64, id="garbage-bytes"),
])
def test_forged_models_are_refused_at_install(sandbox, blob):
    data = blob()
    with pytest.raises(ModelError):
        sandbox.container.install(build_test_bundle(body("return 1"), name="forged-model",
                                                    models={"m": data}))
    sandbox.assert_alive()


def test_constant_of_shape_bomb_is_small(sandbox):
    assert len(_models.constant_of_shape_bomb()) < 200
    sandbox.assert_alive()


def test_constant_of_shape_from_feed_is_contained(sandbox):
    src = body("return vm.model('b').run({'s': np.array([10**10])})['y'].shape", imports=HEAD)
    sandbox.refused(src, (ModelError, ResourceLimitExceeded), models={"b": _models.constant_of_shape_from_input()})


def test_loop_bomb_is_terminated_at_the_deadline(sandbox):
    src = body("return vm.model('loop').run({'x': np.zeros((1, 4), dtype=np.float32)})['y']", imports=HEAD)
    sandbox.refused(src, TaskTimeout, timeout=0.3, within=2.0, models={"loop": _models.loop_bomb()})


def test_model_names_cannot_be_paths_in_the_manifest(sandbox, lin):
    sandbox.ok(body("return vm.model('lin').name", imports=HEAD), models=lin)  # bytes already loaded
    with pytest.raises((ModelError, ValueError, CompileError)):
        sandbox.container.install(build_test_bundle(body("return 1"), name="pathmodel",
                                                    models={"../lin": lin["lin"]}))
    sandbox.assert_alive()


def test_run_batch_concatenation_is_capped(sandbox, lin):
    src = body("x = np.zeros((250000, 4), dtype=np.float32)\nreturn len(vm.model('lin').run_batch([{'x': x}] * 60))",
               imports=HEAD)
    sandbox.refused(src, ResourceLimitExceeded, models=lin, timeout=5.0)
