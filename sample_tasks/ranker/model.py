"""Host-side tooling for the ``ranker`` sample: data, training, ONNX export, reference.

This module is *not* run inside the sandbox.  It builds the tiny ONNX model that
``task.py`` calls as ``vm.model("ranker")``, and offers ``reference_rank`` so
tests can compare the sandboxed task against an unsandboxed run.

Scenario: a fantasy-sports / e-commerce style app re-ranks a list of candidate
contests (items) on device, using the user's in-session events.  Each candidate
gets ``len(FEATURES)`` features (see ``task.py`` for how they are extracted from
the raw events); a 2-layer MLP (F -> 16 ReLU -> 1 sigmoid) scores them.

The training data is synthetic: ``generate_sessions`` draws feature vectors with
the same ranges and correlations that ``task.py`` produces from real sessions,
and labels them with a hidden, non-linear relevance function plus noise.

Usage::

    python -m sample_tasks.ranker.model ranker.onnx     # writes the model, prints metrics

Nothing here downloads anything; everything is generated from a seed.
"""

from __future__ import annotations

import ast
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from sample_tasks.training import single_threaded_blas

# Order matters: it is the column order of the "features" input.  Must equal
# FEATURE_NAMES in task.py (checked by ``task_feature_names`` / ``reference_rank``).
FEATURES: list[str] = [
    "price_z",  # z-score of log1p(price) across the candidate list, clipped to [-3, 3]
    "popularity",  # global popularity of the item, in [0, 1]
    "category_affinity",  # share of the session's weighted interactions in the item's category
    "category_recency",  # exp(-(now - last event in category) / 900 s); 0 if never seen
    "category_ctr",  # clicks / (views + 1) in the item's category, capped at 1
    "dwell_share",  # share of the session's total dwell time spent in the category
    "is_new",  # 1.0 if the item is flagged new, else 0.0
    "discount",  # fractional discount in [0, 1]
]
N_FEATURES = len(FEATURES)

TASK_PATH = Path(__file__).with_name("task.py")
EXAMPLE_INPUTS_PATH = Path(__file__).with_name("example_inputs.json")
MODEL_NAME = "ranker"
INPUT_NAME = "features"
OUTPUT_NAME = "scores"
OPSET = 17
IR_VERSION = 9  # onnxruntime 1.32 loads IR <= 11; 9 is enough for opset 17

# Defaults used by build_ranker_model (kept small so a build takes about half a second).
TRAIN_SAMPLES = 8_000
TEST_SAMPLES = 8_000
EPOCHS = 300


# --------------------------------------------------------------------------- data


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -40.0, 40.0)))


def generate_sessions(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``n`` (candidate, session) feature rows and binary "engaged" labels.

    The session-derived features are zero together when the candidate's category
    was not seen in the session (as ``task.py`` produces them), and correlated
    when it was.  The hidden relevance is non-linear (affinity x recency,
    a quadratic price preference, discounts mattering more on expensive items,
    "new" mattering more for unseen categories), so a small MLP beats a linear
    model.  Deterministic for a given ``seed``.

    Returns ``X`` float32 [n, F] in ``FEATURES`` order and ``y`` float32 [n] in {0, 1}.
    """
    rng = np.random.default_rng(seed)
    seen = rng.random(n) < 0.55
    affinity = np.where(seen, rng.beta(1.5, 4.0, n), 0.0)
    age = rng.exponential(1200.0, n)
    recency = np.where(seen, np.exp(-age / 900.0), 0.0)
    ctr = np.where(seen, np.clip(0.5 * affinity + 0.5 * rng.beta(1.2, 3.0, n), 0.0, 1.0), 0.0)
    dwell = np.where(seen, np.clip(affinity + rng.normal(0.0, 0.12, n), 0.0, 1.0), 0.0)
    price_z = np.clip(rng.normal(0.0, 1.0, n), -3.0, 3.0)
    popularity = rng.beta(2.0, 5.0, n)
    is_new = (rng.random(n) < 0.2).astype(np.float64)
    discount = np.where(rng.random(n) < 0.35, rng.uniform(0.05, 0.5, n), 0.0)

    logit = (
        -1.7
        + 2.5 * affinity
        + 1.2 * recency
        + 1.8 * ctr
        + 0.8 * dwell
        + 2.0 * affinity * recency
        - 0.5 * price_z
        - 0.35 * price_z**2
        + 1.8 * popularity
        + 0.3 * is_new
        + 0.6 * is_new * (1.0 - seen)
        + 0.8 * discount
        + 2.5 * discount * (price_z > 0)
        + rng.normal(0.0, 0.5, n)
    )
    y = (rng.random(n) < _sigmoid(logit)).astype(np.float32)
    X = np.stack(
        [price_z, popularity, affinity, recency, ctr, dwell, is_new, discount], axis=1
    ).astype(np.float32)
    return X, y


# --------------------------------------------------------------------------- training


def predict_numpy(weights: dict[str, np.ndarray], X: np.ndarray) -> np.ndarray:
    """The MLP forward pass in numpy (same maths as the ONNX graph); returns [n] probabilities."""
    h = np.maximum(X @ weights["W1"] + weights["b1"], 0.0)
    return _sigmoid(h @ weights["W2"] + weights["b2"]).reshape(-1)


def roc_auc(y: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC by the rank-sum (Mann-Whitney) formula, with average ranks for ties."""
    y = np.asarray(y).reshape(-1) > 0.5
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_s = s[order]
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def evaluate(weights: dict[str, np.ndarray], X: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """AUC, accuracy at 0.5, log loss, and the base rate of ``y``."""
    p = predict_numpy(weights, X).astype(np.float64)
    yy = np.asarray(y, dtype=np.float64).reshape(-1)
    eps = 1e-7
    logloss = -np.mean(yy * np.log(p + eps) + (1 - yy) * np.log(1 - p + eps))
    return {
        "auc": roc_auc(yy, p),
        "accuracy": float(np.mean((p >= 0.5) == (yy > 0.5))),
        "logloss": float(logloss),
        "base_rate": float(yy.mean()),
    }


def train_mlp(
    X: np.ndarray,
    y: np.ndarray,
    hidden: int = 16,
    epochs: int = EPOCHS,
    seed: int = 0,
    lr: float = 0.03,
    l2: float = 1e-4,
) -> dict[str, np.ndarray]:
    """Train F -> ``hidden`` ReLU -> 1 sigmoid with full-batch Adam on logistic loss.

    Plain numpy, float64 internally, deterministic for a given ``seed`` and data.
    ``epochs`` is the number of full-batch steps (300 on 8k rows takes ~0.3 s on
    2 cores).  Returns float32 arrays: ``W1`` [F, hidden], ``b1`` [hidden],
    ``W2`` [hidden, 1], ``b2`` [1].
    """
    rng = np.random.default_rng(seed)
    Xd = np.asarray(X, dtype=np.float64)
    yd = np.asarray(y, dtype=np.float64).reshape(-1, 1)
    n, f = Xd.shape
    params = {
        "W1": rng.normal(0.0, np.sqrt(2.0 / f), (f, hidden)),
        "b1": np.full(hidden, 0.01),
        "W2": rng.normal(0.0, np.sqrt(1.0 / hidden), (hidden, 1)),
        "b2": np.zeros(1),
    }
    m = {k: np.zeros_like(v) for k, v in params.items()}
    v = {k: np.zeros_like(w) for k, w in params.items()}
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    for step in range(1, epochs + 1):
        pre = Xd @ params["W1"] + params["b1"]
        h = np.maximum(pre, 0.0)
        p = _sigmoid(h @ params["W2"] + params["b2"])
        dz = (p - yd) / n  # d(mean logistic loss)/d(logit)
        grads = {
            "W2": h.T @ dz + l2 * params["W2"],
            "b2": dz.sum(axis=0),
        }
        dh = (dz @ params["W2"].T) * (pre > 0.0)
        grads["W1"] = Xd.T @ dh + l2 * params["W1"]
        grads["b1"] = dh.sum(axis=0)
        for k, g in grads.items():
            m[k] = beta1 * m[k] + (1 - beta1) * g
            v[k] = beta2 * v[k] + (1 - beta2) * g**2
            mhat = m[k] / (1 - beta1**step)
            vhat = v[k] / (1 - beta2**step)
            params[k] = params[k] - lr * mhat / (np.sqrt(vhat) + eps)
    return {k: np.ascontiguousarray(w, dtype=np.float32) for k, w in params.items()}


def train_and_evaluate(seed: int = 0) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Generate train/test data from ``seed``, train, and return (weights, metrics).

    ``metrics`` has ``test_auc``, ``test_accuracy``, ``test_logloss``,
    ``test_base_rate`` (on a held-out set drawn from a different seed) and
    ``train_auc``.
    """
    X, y = generate_sessions(TRAIN_SAMPLES, seed)
    Xt, yt = generate_sessions(TEST_SAMPLES, seed + 1_000_003)
    with single_threaded_blas():
        weights = train_mlp(X, y, hidden=16, epochs=EPOCHS, seed=seed)
    test = evaluate(weights, Xt, yt)
    train = evaluate(weights, X, y)
    metrics = {f"test_{k}": v for k, v in test.items()}
    metrics["train_auc"] = train["auc"]
    return weights, metrics


# --------------------------------------------------------------------------- ONNX


def export_onnx(
    weights: dict[str, np.ndarray],
    path: str | Path | None,
    metadata: dict[str, str] | None = None,
) -> bytes:
    """Write the MLP as an ONNX model (Gemm, Relu, Gemm, Sigmoid) and return its bytes.

    Input ``features`` float32 [N, F] (dynamic batch ``N``); output ``scores``
    float32 [N, 1].  Opset 17, IR version 9.  The graph is validated with
    ``onnx.checker.check_model``.  Same weights (and metadata) -> byte-identical
    output.  ``path`` may be None to only return the bytes.
    """
    import onnx
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
        helper.make_node("Gemm", [INPUT_NAME, "W1", "b1"], ["hidden_pre"], name="dense1"),
        helper.make_node("Relu", ["hidden_pre"], ["hidden"], name="relu1"),
        helper.make_node("Gemm", ["hidden", "W2", "b2"], ["logit"], name="dense2"),
        helper.make_node("Sigmoid", ["logit"], [OUTPUT_NAME], name="sigmoid"),
    ]
    graph = helper.make_graph(
        nodes,
        "ranker_mlp",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", f])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N", 1])],
        initializer=inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="vmcontainer.sample_tasks.ranker",
        producer_version="1",
        doc_string="Contest/item re-ranker: features [N, F] -> engagement probability [N, 1]",
    )
    model.ir_version = IR_VERSION
    meta = {"features": ",".join(FEATURES) if f == N_FEATURES else str(f)}
    meta.update(metadata or {})
    helper.set_model_props(model, dict(sorted(meta.items())))
    onnx.checker.check_model(model, full_check=True)
    data = model.SerializeToString(deterministic=True)
    if path is not None:
        Path(path).write_bytes(data)
    return data


def build_ranker_model(path: str | Path | None, seed: int = 0) -> bytes:
    """Generate data, train, export: write the ONNX model to ``path`` and return its bytes.

    Deterministic: the same ``seed`` gives byte-identical bytes (on the same
    numpy/BLAS build).  Test metrics are stored in the model's metadata
    (``test_auc``, ``test_accuracy``).  Takes about 0.5-1 s on 2 cores.
    """
    weights, metrics = train_and_evaluate(seed)
    return export_onnx(weights, path, metadata=_model_metadata(seed, metrics))


def _model_metadata(seed: int, metrics: dict[str, float]) -> dict[str, str]:
    return {
        "seed": str(seed),
        "test_auc": f"{metrics['test_auc']:.4f}",
        "test_accuracy": f"{metrics['test_accuracy']:.4f}",
    }


# --------------------------------------------------------------------------- reference


def task_source() -> str:
    """The source of ``task.py`` (the script that runs in the sandbox)."""
    return TASK_PATH.read_text(encoding="utf-8")


class _OrtModel:
    """What ``vm.model(name)`` returns in the shim: ``run(feeds) -> {output name: ndarray}``."""

    def __init__(self, model_bytes: bytes):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        self._session = ort.InferenceSession(
            model_bytes, sess_options=opts, providers=["CPUExecutionProvider"]
        )
        self._outputs = [o.name for o in self._session.get_outputs()]

    def run(self, feeds: dict[str, Any]) -> dict[str, np.ndarray]:
        results = self._session.run(self._outputs, dict(feeds))
        return dict(zip(self._outputs, results))


class _VmShim:
    """A minimal stand-in for the container's ``vm`` module: only ``model(name)``."""

    def __init__(self, models: dict[str, bytes]):
        self._models = models
        self._loaded: dict[str, _OrtModel] = {}

    def model(self, name: str) -> _OrtModel:
        if name not in self._models:
            raise KeyError(f"no model named {name!r}")
        if name not in self._loaded:
            self._loaded[name] = _OrtModel(self._models[name])
        return self._loaded[name]


def load_task(vm_module: Any) -> dict[str, Any]:
    """Exec ``task.py`` unsandboxed with ``import vm`` resolving to ``vm_module``.

    Returns the task's global namespace (``main``, ``FEATURE_NAMES``, ...).
    ``sys.modules`` is not touched: ``import`` is redirected through the
    namespace's own ``__builtins__``.
    """
    import builtins

    real_import = builtins.__import__

    def shim_import(name, globals=None, locals=None, fromlist=(), level=0):
        if name == "vm":
            return vm_module
        return real_import(name, globals, locals, fromlist, level)

    ns_builtins = dict(vars(builtins))
    ns_builtins["__import__"] = shim_import
    ns: dict[str, Any] = {"__builtins__": ns_builtins, "__name__": "ranker_task"}
    exec(compile(task_source(), str(TASK_PATH), "exec"), ns)
    return ns


def task_feature_names() -> list[str]:
    """``FEATURE_NAMES`` as written in task.py (read with ``ast``, nothing executed)."""
    tree = ast.parse(task_source())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "FEATURE_NAMES" for t in node.targets
        ):
            return list(ast.literal_eval(node.value))
    raise LookupError("task.py defines no FEATURE_NAMES")


def reference_rank(inputs: dict, model_bytes: bytes) -> dict:
    """Reference result for ``task.py``'s ``main(inputs)``, computed outside the sandbox.

    To keep a single feature-extraction implementation, this does not
    re-implement the task: it execs ``task.py``'s own source with plain
    ``exec`` (no sandbox, no RestrictedPython) and a tiny ``vm`` shim whose
    ``vm.model("ranker").run(feeds)`` runs ``model_bytes`` on a raw
    ``onnxruntime.InferenceSession``.  It is host-side test tooling: the
    comparison checks that the container (compiler, guards, numpy facade,
    inference wrapper) does not change the task's results.

    Returns ``{"ranking": [ids], "scores": [floats], "features_used": int}``.
    """
    names = task_feature_names()
    if names != FEATURES:
        raise AssertionError(f"task.py FEATURE_NAMES {names} != model.FEATURES {FEATURES}")
    ns = load_task(_VmShim({MODEL_NAME: model_bytes}))
    return ns["main"](inputs)


# --------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) not in (1, 2) or argv[0] in ("-h", "--help"):
        print("usage: python -m sample_tasks.ranker.model OUT.onnx [SEED]", file=sys.stderr)
        return 2
    seed = int(argv[1]) if len(argv) == 2 else 0
    t0 = time.perf_counter()
    weights, metrics = train_and_evaluate(seed)
    t1 = time.perf_counter()
    data = export_onnx(weights, argv[0], metadata=_model_metadata(seed, metrics))
    t2 = time.perf_counter()
    print(
        f"wrote {argv[0]} ({len(data)} bytes, {N_FEATURES} features); "
        f"test AUC {metrics['test_auc']:.3f}, accuracy {metrics['test_accuracy']:.3f} "
        f"(base rate {metrics['test_base_rate']:.3f}), train AUC {metrics['train_auc']:.3f}; "
        f"train {t1 - t0:.2f}s, export {t2 - t1:.2f}s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
