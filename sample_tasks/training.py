"""Shared build-time helpers for the samples' model.py files (host side, never sandboxed).

What the three samples have in common: the numpy helpers for the 2-layer MLP
(``sigmoid``, ``mlp_predict``, ``init_mlp``, ``roc_auc``), the ONNX export of
that MLP (``export_mlp_onnx``) and of any graph (``finish_onnx``),
``model_metadata``, and the unsandboxed reference run of a ``task.py``
(``OrtModel``, ``VmShim``, ``load_task``, ``task_feature_names``).

``onnx`` and ``onnxruntime`` are imported only when used, so importing a
sample's ``model`` module stays cheap.
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

OPSET = 17
IR_VERSION = 9  # onnxruntime 1.32 loads IR <= 11; 9 is enough for opset 17


def single_threaded_blas() -> contextlib.AbstractContextManager:
    """Keep BLAS on one thread while training, if ``threadpoolctl`` is installed.

    The matrices are small: extra BLAS threads only add overhead, and on a busy
    2-core build machine spinning OpenBLAS threads made training 10-50x slower.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(1, user_api="blas")


# --------------------------------------------------------------------------- the MLP in numpy


def sigmoid(z: np.ndarray) -> np.ndarray:
    """The logistic function, with ``z`` clipped to [-40, 40] so ``exp`` cannot overflow."""
    return 1.0 / (1.0 + np.exp(-np.clip(z, -40.0, 40.0)))


def mlp_predict(weights: dict[str, np.ndarray], X: np.ndarray) -> np.ndarray:
    """The F -> hidden ReLU -> 1 sigmoid MLP in numpy (the same maths as the ONNX graph
    written by ``export_mlp_onnx``); returns [n] probabilities."""
    h = np.maximum(X @ weights["W1"] + weights["b1"], 0.0)
    return sigmoid(h @ weights["W2"] + weights["b2"]).reshape(-1)


def init_mlp(rng: np.random.Generator, f: int, hidden: int) -> dict[str, np.ndarray]:
    """Initial float64 MLP weights: He-normal ``W1`` [f, hidden], ``b1`` 0.01,
    ``W2`` [hidden, 1] with variance 1/hidden, ``b2`` 0 (draws ``W1`` then ``W2``)."""
    return {
        "W1": rng.normal(0.0, np.sqrt(2.0 / f), (f, hidden)),
        "b1": np.full(hidden, 0.01),
        "W2": rng.normal(0.0, np.sqrt(1.0 / hidden), (hidden, 1)),
        "b2": np.zeros(1),
    }


def roc_auc(y: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC by the rank-sum (Mann-Whitney) formula, with average ranks for ties.

    ``nan`` when ``y`` holds a single class.
    """
    y = np.asarray(y).reshape(-1) > 0.5
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    upper = np.cumsum(counts)
    ranks = (upper - (counts - 1) / 2.0)[inverse]  # average 1-based rank of each tie group
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


# --------------------------------------------------------------------------- ONNX


def finish_onnx(model: Any, path: str | Path | None, metadata: dict[str, str]) -> bytes:
    """Set IR ``IR_VERSION`` and the (sorted) ``metadata`` on an ONNX ``model``, check it
    with ``onnx.checker`` (full check), and return its deterministic bytes, also
    written to ``path`` unless that is None.  Same model and metadata, same bytes."""
    import onnx
    from onnx import helper

    model.ir_version = IR_VERSION
    helper.set_model_props(model, dict(sorted(metadata.items())))
    onnx.checker.check_model(model, full_check=True)
    data = model.SerializeToString(deterministic=True)
    if path is not None:
        Path(path).write_bytes(data)
    return data


def export_mlp_onnx(
    weights: dict[str, np.ndarray],
    path: str | Path | None,
    *,
    input_name: str,
    output_name: str,
    graph_name: str,
    producer_name: str,
    doc_string: str,
    metadata: dict[str, str],
) -> bytes:
    """Write the MLP as ONNX (Gemm, Relu, Gemm, Sigmoid) and return its bytes.

    Input ``input_name`` float32 [N, F] (dynamic batch ``N``); output
    ``output_name`` float32 [N, 1].  Opset ``OPSET``, IR ``IR_VERSION``; see
    ``finish_onnx``.  ``weights``: ``W1`` [F, hidden], ``b1`` [hidden], ``W2``
    [hidden, 1], ``b2`` [1] (cast to float32); other shapes raise ``ValueError``.
    """
    from onnx import TensorProto, helper, numpy_helper

    w1 = np.asarray(weights["W1"], dtype=np.float32)
    b1 = np.asarray(weights["b1"], dtype=np.float32).reshape(-1)
    w2 = np.asarray(weights["W2"], dtype=np.float32)
    b2 = np.asarray(weights["b2"], dtype=np.float32).reshape(-1)
    f, hidden = w1.shape
    if w2.shape != (hidden, 1) or b1.shape != (hidden,) or b2.shape != (1,):
        raise ValueError(
            f"bad weight shapes: W1 {w1.shape} b1 {b1.shape} W2 {w2.shape} b2 {b2.shape}"
        )
    inits = [
        numpy_helper.from_array(w1, "W1"),
        numpy_helper.from_array(b1, "b1"),
        numpy_helper.from_array(w2, "W2"),
        numpy_helper.from_array(b2, "b2"),
    ]
    nodes = [
        helper.make_node("Gemm", [input_name, "W1", "b1"], ["hidden_pre"], name="dense1"),
        helper.make_node("Relu", ["hidden_pre"], ["hidden"], name="relu1"),
        helper.make_node("Gemm", ["hidden", "W2", "b2"], ["logit"], name="dense2"),
        helper.make_node("Sigmoid", ["logit"], [output_name], name="sigmoid"),
    ]
    graph = helper.make_graph(
        nodes,
        graph_name,
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["N", f])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["N", 1])],
        initializer=inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name=producer_name,
        producer_version="1",
        doc_string=doc_string,
    )
    return finish_onnx(model, path, metadata)


def model_metadata(model_bytes: bytes) -> dict[str, str]:
    """The metadata written by ``finish_onnx`` (read back with onnxruntime)."""
    import onnxruntime as ort

    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    return dict(session.get_modelmeta().custom_metadata_map)


# --------------------------------------------------------------------------- reference runs


class OrtModel:
    """What ``vm.model(name)`` returns in the shim: ``run(feeds) -> {output name: ndarray}``
    on a raw single-threaded onnxruntime session."""

    def __init__(self, model_bytes: bytes) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        self._session = ort.InferenceSession(
            model_bytes, sess_options=opts, providers=["CPUExecutionProvider"]
        )
        self._outputs = [o.name for o in self._session.get_outputs()]

    def run(self, feeds: dict[str, Any]) -> dict[str, np.ndarray]:
        return dict(zip(self._outputs, self._session.run(self._outputs, dict(feeds))))


class VmShim:
    """A minimal stand-in for the container's ``vm`` module: only ``model(name)``."""

    def __init__(self, models: dict[str, bytes]) -> None:
        self._models = models
        self._loaded: dict[str, OrtModel] = {}

    def model(self, name: str) -> OrtModel:
        if name not in self._models:
            raise KeyError(f"no model named {name!r}")
        if name not in self._loaded:
            self._loaded[name] = OrtModel(self._models[name])
        return self._loaded[name]


def load_task(task_path: Path, vm_module: Any, module_name: str) -> dict[str, Any]:
    """Exec a ``task.py`` unsandboxed with ``import vm`` resolving to ``vm_module``.

    Returns the task's global namespace (``main``, ``FEATURE_NAMES``, ...), whose
    ``__name__`` is ``module_name``.
    ``sys.modules`` is not touched: ``import`` is redirected through the
    namespace's own ``__builtins__``.
    """
    real_import = builtins.__import__

    def shim_import(name, globals=None, locals=None, fromlist=(), level=0):
        return vm_module if name == "vm" else real_import(name, globals, locals, fromlist, level)

    source = Path(task_path).read_text(encoding="utf-8")
    ns: dict[str, Any] = {"__builtins__": {**vars(builtins), "__import__": shim_import},
                          "__name__": module_name}
    exec(compile(source, str(task_path), "exec"), ns)
    return ns


def task_feature_names(task_path: Path) -> list[str]:
    """``FEATURE_NAMES`` as written in a task.py (read with ``ast``, nothing executed)."""
    for node in ast.parse(Path(task_path).read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "FEATURE_NAMES" for t in node.targets
        ):
            return list(ast.literal_eval(node.value))
    raise LookupError(f"{Path(task_path).name} defines no FEATURE_NAMES")


def model_cli(
    argv: list[str] | None,
    *,
    module: str,
    train_and_evaluate: Callable[[int], tuple[Any, dict[str, float]]],
    export: Callable[..., bytes],
    metadata: Callable[[int, dict[str, float]], dict[str, str]],
    write_example: Callable[[], None],
    summary: Callable[[bytes, dict[str, float]], str],
) -> int:
    """The samples' ``python -m sample_tasks.X.model OUT.onnx [SEED] | --write-example``."""
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["--write-example"]:  # regenerate the checked-in example_inputs.json
        write_example()
        return 0
    if len(argv) not in (1, 2) or argv[0].startswith("-"):
        print(f"usage: python -m {module} OUT.onnx [SEED]\n"
              f"       python -m {module} --write-example", file=sys.stderr)
        return 2
    seed = int(argv[1]) if len(argv) == 2 else 0
    t0 = time.perf_counter()
    weights, metrics = train_and_evaluate(seed)
    t1 = time.perf_counter()
    data = export(weights, argv[0], metadata=metadata(seed, metrics))
    print(f"wrote {argv[0]} ({len(data)} bytes); {summary(data, metrics)}; "
          f"{t1 - t0:.2f}s to train, {time.perf_counter() - t1:.2f}s to export")
    return 0
