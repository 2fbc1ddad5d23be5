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

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from sample_tasks import training
from sample_tasks.training import init_mlp, roc_auc, sigmoid, single_threaded_blas
from sample_tasks.training import mlp_predict as predict_numpy  # the module's public name

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

# Defaults used by build_ranker_model (kept small so a build takes about half a second).
TRAIN_SAMPLES = 8_000
TEST_SAMPLES = 8_000
EPOCHS = 300


# --------------------------------------------------------------------------- data


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
    y = (rng.random(n) < sigmoid(logit)).astype(np.float32)
    X = np.stack(
        [price_z, popularity, affinity, recency, ctr, dwell, is_new, discount], axis=1
    ).astype(np.float32)
    return X, y


# --------------------------------------------------------------------------- training


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
    params = init_mlp(rng, f, hidden)
    m = {k: np.zeros_like(v) for k, v in params.items()}
    v = {k: np.zeros_like(w) for k, w in params.items()}
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    for step in range(1, epochs + 1):
        pre = Xd @ params["W1"] + params["b1"]
        h = np.maximum(pre, 0.0)
        p = sigmoid(h @ params["W2"] + params["b2"])
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
    f = np.asarray(weights["W1"]).shape[0]
    meta = {"features": ",".join(FEATURES) if f == N_FEATURES else str(f)}
    meta.update(metadata or {})
    return training.export_mlp_onnx(
        weights,
        path,
        input_name=INPUT_NAME,
        output_name=OUTPUT_NAME,
        graph_name="ranker_mlp",
        producer_name="vmcontainer.sample_tasks.ranker",
        doc_string="Contest/item re-ranker: features [N, F] -> engagement probability [N, 1]",
        metadata=meta,
    )


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


def load_task(vm_module: Any) -> dict[str, Any]:
    """Exec ``task.py`` unsandboxed with ``import vm`` resolving to ``vm_module``.

    Returns the task's global namespace (``main``, ``FEATURE_NAMES``, ...); see
    ``sample_tasks.training.load_task``.
    """
    return training.load_task(TASK_PATH, vm_module, "ranker_task")


def task_feature_names() -> list[str]:
    """``FEATURE_NAMES`` as written in task.py (read with ``ast``, nothing executed)."""
    return training.task_feature_names(TASK_PATH)


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
    ns = load_task(training.VmShim({MODEL_NAME: model_bytes}))
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
