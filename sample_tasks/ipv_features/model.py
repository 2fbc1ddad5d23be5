"""Host-side tooling for the ``ipv_features`` sample: simulated sessions, training, ONNX, reference.

Not run inside the sandbox.  It builds the ONNX model that ``task.py`` calls as
``vm.model("intent")`` and offers ``reference_features`` so tests can compare
the sandboxed task with an unsandboxed run of the very same code.

Scenario: on-device feature production from a shopping app's event stream
(Walle-style item-page-view features).  ``simulate_session`` plays a shopper:
lists of items are shown (exposures), some are opened (page views) and, on the
page, the shopper scrolls, clicks images / variants / reviews, adds to cart or
favorites, then leaves.  Every page view has a hidden purchase intent that
drives that behaviour and the label "bought the item".

The training features are **not** re-implemented here: the simulated events go
through ``task.py``'s own ``page_view_features`` (exec'd unsandboxed), so the
model is trained on exactly what the device computes.

Usage::

    python -m sample_tasks.ipv_features.model intent.onnx [SEED]   # writes the model, prints metrics

Nothing here downloads anything; everything is generated from a seed.
"""

from __future__ import annotations

import json
import math
import random
import sys
from pathlib import Path
from typing import Any

import numpy as np

from sample_tasks import training
from sample_tasks.training import init_mlp, model_cli, roc_auc, sigmoid, single_threaded_blas
from sample_tasks.training import mlp_predict as predict_numpy  # the module's public name
from sample_tasks.training import model_metadata as model_metadata  # re-exported for callers

TASK_PATH = Path(__file__).with_name("task.py")
EXAMPLE_INPUTS_PATH = Path(__file__).with_name("example_inputs.json")
MODEL_NAME = "intent"
INPUT_NAME = "features"
OUTPUT_NAME = "intent"
HIDDEN = 16

# Column order of the "features" input.  Must equal FEATURE_NAMES in task.py
# (checked by ``task_feature_names`` and ``reference_features``).
FEATURES: list[str] = [
    "log_dwell",
    "scroll_depth",
    "log_scrolls",
    "log_clicks",
    "sku_clicked",
    "review_viewed",
    "image_views",
    "added_to_cart",
    "favorited",
    "log_exposures",
    "exposure_recency",
    "category_interest",
    "is_revisit",
    "session_depth",
]
N_FEATURES = len(FEATURES)

CATEGORIES = ["shoes", "phones", "snacks", "books", "toys", "beauty", "kitchen", "sports"]
SOURCES = ["feed", "search", "recommend", "cart"]
TRAIN_SESSIONS = 1_000  # ~6k page views
TEST_SESSIONS = 600
EPOCHS = 150
SESSION_START = 1_732_500_000.0  # a fixed epoch second: timestamps look real and stay reproducible


# --------------------------------------------------------------------------- simulation


def _logistic(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-max(-40.0, min(40.0, z))))


def _poisson(rng: random.Random, lam: float) -> int:
    """Knuth's method: fine for the small rates used here, and much faster than numpy per draw."""
    limit, k, p = math.exp(-lam), 0, rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k


def _page_events(rng: random.Random, t: float, q: float, idle: bool) -> tuple[list[dict], float, bool]:
    """What a shopper with intent ``q`` does on one item page opened at ``t``.

    Returns (events after the enter, dwell seconds, added to cart).  An ``idle``
    visit is a long dwell with nothing done (the phone was put down), which a
    dwell-only rule would take for interest.
    """
    if idle:
        return [], rng.lognormvariate(5.0, 0.5), False
    dwell = rng.lognormvariate(2.2 + 1.3 * q, 0.6)
    actions: list[dict] = []
    n_scrolls = _poisson(rng, 0.5 + 5.0 * q)
    actions += [{"type": "click", "target": "image"}] * _poisson(rng, 0.4 + 2.0 * q)
    if rng.random() < 0.2:
        actions.append({"type": "click", "target": rng.choice(["detail", "shop"])})
    if rng.random() < 0.04 + 0.6 * q:
        actions.append({"type": "click", "target": "sku"})
    if rng.random() < 0.06 + 0.45 * q:
        actions.append({"type": "click", "target": "review"})
    cart = rng.random() < 0.01 + 0.55 * q * q
    if cart:
        actions.append({"type": "add_to_cart"})
    if rng.random() < 0.02 + 0.15 * q:
        actions.append({"type": "favorite"})
    events = [{"ts": round(t + rng.uniform(0.2, dwell), 3), **a} for a in actions]
    depth = 0.0
    for ts in sorted(rng.uniform(0.2, dwell) for _ in range(n_scrolls)):
        depth = min(1.0, depth + rng.uniform(0.05, 0.35))  # deeper as time goes on
        events.append({"ts": round(t + ts, 3), "type": "scroll", "depth": round(depth, 3)})
    events.sort(key=lambda e: e["ts"])
    return events, dwell, cart


def simulate_session(
    rng: random.Random, t0: float = SESSION_START, n_views: int | None = None
) -> tuple[list[dict], list[float], float]:
    """One shopping session: (events in time order, a 0/1 label per page view, now).

    Most page views open from a list of exposed items; some come straight
    from a push message, some go back to an item seen before.  The hidden
    intent of a view rises with the shopper's taste for the category, a
    session-level "buying mood" and revisits, and drops when the shopper is
    distracted (an idle page).  The label is drawn
    from that intent (and an add-to-cart), so the features only see it through
    behaviour.
    """
    gammas = [rng.gammavariate(0.5, 1.0) for _ in CATEGORIES]
    taste = [g / sum(gammas) for g in gammas]
    mood = rng.gauss(0.0, 0.8)
    n_views = 1 + _poisson(rng, 5.0) if n_views is None else n_views
    events: list[dict] = []
    labels: list[float] = []
    intent_of: dict[str, float] = {}
    category_of: dict[str, str] = {}
    t = t0
    for _ in range(n_views):
        r = rng.random()
        if intent_of and r < 0.15:  # back to an item seen before
            item = rng.choice(sorted(intent_of))
            source = rng.choice(["cart", "feed"])
            z = intent_of[item] + 0.6 + rng.gauss(0.0, 0.5)
        elif r < 0.25:  # straight from a push message or a link: never shown in a list
            c = rng.choices(range(len(CATEGORIES)), weights=taste)[0]
            item, source = f"{CATEGORIES[c]}-{rng.randint(100, 999)}", "push"
            category_of[item] = CATEGORIES[c]
            t += rng.expovariate(1 / 20.0)
            z = -2.5 + 4.0 * taste[c] + mood + rng.gauss(0.0, 0.9)
        else:
            shown = rng.randint(3, 9)
            cats = rng.choices(range(len(CATEGORIES)), weights=taste, k=shown)
            items = [f"{CATEGORIES[c]}-{rng.randint(100, 999)}" for c in cats]
            for pos, (it, c) in enumerate(zip(items, cats)):
                category_of[it] = CATEGORIES[c]
                events.append({"ts": round(t + 0.25 * pos, 3), "type": "exposure", "item": it,
                               "category": CATEGORIES[c], "position": pos})
            t += 0.25 * shown + rng.expovariate(1 / 4.0)
            pick = rng.choices(range(shown), weights=[taste[c] + 0.05 for c in cats])[0]
            item, source = items[pick], rng.choice(["feed", "search", "recommend"])
            z = -2.0 + 4.0 * taste[cats[pick]] + mood + rng.gauss(0.0, 0.9)
        intent_of[item] = z
        idle = rng.random() < 0.1  # distracted: little chance of buying now
        q = _logistic(z) * (0.3 if idle else 1.0)
        events.append({"ts": round(t, 3), "type": "page_enter", "item": item,
                       "category": category_of[item], "source": source})
        page, dwell, cart = _page_events(rng, t, q, idle)
        events += page
        if rng.random() < 0.9:  # otherwise the next page_enter (or "now") closes it
            events.append({"ts": round(t + dwell, 3), "type": "page_leave"})
        labels.append(float(rng.random() < _logistic(-3.0 + 5.0 * q + 1.0 * cart)))
        t += dwell + rng.expovariate(1 / 3.0)
    return events, labels, round(t + rng.expovariate(1 / 5.0), 3)


def generate_dataset(n_sessions: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Simulate ``n_sessions`` and turn them into (X float32 [n, F], y float32 [n]).

    Features come from task.py's own ``page_view_features``.  Deterministic for
    a given ``seed``.
    """
    features = load_task(training.VmShim({}))["page_view_features"]
    rng = random.Random(seed)
    rows: list[list[float]] = []
    labels: list[float] = []
    for s in range(n_sessions):
        events, y, now = simulate_session(rng, SESSION_START + 3600.0 * s)
        x = features(events, now)
        if len(x) != len(y):
            raise AssertionError(f"session {s}: {len(x)} page views, {len(y)} labels")
        rows += x
        labels += y
    return np.asarray(rows, dtype=np.float32), np.asarray(labels, dtype=np.float32)


# --------------------------------------------------------------------------- training


def train_mlp(X: np.ndarray, y: np.ndarray, *, hidden: int = HIDDEN, epochs: int = EPOCHS,
              seed: int = 0, lr: float = 0.05, l2: float = 1e-4) -> dict[str, np.ndarray]:
    """F -> ``hidden`` ReLU -> 1 sigmoid, full-batch Adam on logistic loss (float64 inside).

    Inputs are standardised for training and the scaling is folded back into
    ``W1``/``b1``, so the exported model takes the raw features.
    """
    with single_threaded_blas():
        return _train_mlp(X, y, hidden, epochs, seed, lr, l2)


def _train_mlp(X: np.ndarray, y: np.ndarray, hidden: int, epochs: int, seed: int, lr: float,
               l2: float) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    mu, sd = X.mean(axis=0), X.std(axis=0) + 1e-6
    Xd = (np.asarray(X, dtype=np.float64) - mu) / sd
    yd = np.asarray(y, dtype=np.float64).reshape(-1, 1)
    n, f = Xd.shape
    p = init_mlp(rng, f, hidden)
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(w) for k, w in p.items()}
    for step in range(1, epochs + 1):
        pre = Xd @ p["W1"] + p["b1"]
        h = np.maximum(pre, 0.0)
        dz = (sigmoid(h @ p["W2"] + p["b2"]) - yd) / n
        dh = (dz @ p["W2"].T) * (pre > 0.0)
        grads = {"W2": h.T @ dz + l2 * p["W2"], "b2": dz.sum(axis=0),
                 "W1": Xd.T @ dh + l2 * p["W1"], "b1": dh.sum(axis=0)}
        for k, g in grads.items():
            m[k] = 0.9 * m[k] + 0.1 * g
            v[k] = 0.999 * v[k] + 0.001 * g * g
            p[k] -= lr * (m[k] / (1 - 0.9**step)) / (np.sqrt(v[k] / (1 - 0.999**step)) + 1e-8)
    w1 = p["W1"] / sd[:, None]
    b1 = p["b1"] - (mu / sd) @ p["W1"]
    out = {"W1": w1, "b1": b1, "W2": p["W2"], "b2": p["b2"]}
    return {k: np.ascontiguousarray(w, dtype=np.float32) for k, w in out.items()}


def train_and_evaluate(seed: int = 0) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Simulate train and held-out sessions, train, and return (weights, metrics).

    ``metrics``: ``test_auc``, ``test_accuracy``, ``test_base_rate``,
    ``train_auc``, ``rows``, and ``cart_rule_auc`` - the AUC of "added to cart"
    alone, the obvious hand-written rule the model has to beat.
    """
    X, y = generate_dataset(TRAIN_SESSIONS, seed)
    Xt, yt = generate_dataset(TEST_SESSIONS, seed + 1_000_003)
    weights = train_mlp(X, y, seed=seed)
    pt = predict_numpy(weights, Xt)
    cart = Xt[:, FEATURES.index("added_to_cart")]
    return weights, {
        "test_auc": roc_auc(yt, pt),
        "test_accuracy": float(np.mean((pt >= 0.5) == (yt > 0.5))),
        "test_base_rate": float(yt.mean()),
        "train_auc": roc_auc(y, predict_numpy(weights, X)),
        "cart_rule_auc": roc_auc(yt, cart),
        "rows": float(len(y)),
    }


# --------------------------------------------------------------------------- ONNX


def export_onnx(weights: dict[str, np.ndarray], path: str | Path | None,
                metadata: dict[str, str] | None = None) -> bytes:
    """Write Gemm -> Relu -> Gemm -> Sigmoid as ONNX and return the bytes.

    Input ``features`` float32 [N, F] (dynamic ``N``), output ``intent`` float32
    [N, 1]; opset 17, IR 9, checked with ``onnx.checker``.  Same weights, same bytes.
    """
    return training.export_mlp_onnx(
        weights, path, input_name=INPUT_NAME, output_name=OUTPUT_NAME,
        graph_name="ipv_intent_mlp", producer_name="vmcontainer.sample_tasks.ipv_features",
        doc_string="Purchase intent of an item page view: features [N, F] -> P(buy) [N, 1]",
        metadata={"features": ",".join(FEATURES), **(metadata or {})},
    )


def _metadata(seed: int, metrics: dict[str, float]) -> dict[str, str]:
    return {"seed": str(seed), "test_auc": f"{metrics['test_auc']:.4f}",
            "test_accuracy": f"{metrics['test_accuracy']:.4f}",
            "cart_rule_auc": f"{metrics['cart_rule_auc']:.4f}"}


def build_intent_model(path: str | Path | None, seed: int = 0) -> bytes:
    """Simulate, train, export: write the ONNX model to ``path`` (or not) and return its bytes.

    Deterministic for a given seed on one numpy/BLAS build; about 2 s on 2 cores.
    The held-out metrics are in the model's metadata (``test_auc``,
    ``test_accuracy``, ``cart_rule_auc``; see ``model_metadata``).
    """
    weights, metrics = train_and_evaluate(seed)
    return export_onnx(weights, path, metadata=_metadata(seed, metrics))


# --------------------------------------------------------------------------- reference


def load_task(vm_module: Any) -> dict[str, Any]:
    """Exec ``task.py`` unsandboxed, ``import vm`` resolving to ``vm_module``; return its globals.

    See ``sample_tasks.training.load_task``.
    """
    return training.load_task(TASK_PATH, vm_module, "ipv_features_task")


def task_feature_names() -> list[str]:
    """``FEATURE_NAMES`` as written in task.py (read with ``ast``; nothing executed)."""
    return training.task_feature_names(TASK_PATH)


def reference_features(inputs: dict, model_bytes: bytes) -> dict:
    """``task.py``'s ``main(inputs)`` outside the sandbox, on a raw onnxruntime session.

    One implementation: this execs the task's own source, so comparing it with
    the container's result checks that the sandbox (compiler, guards, facades,
    boundary, inference wrapper) changes nothing.
    """
    names = task_feature_names()
    if names != FEATURES:
        raise AssertionError(f"task.py FEATURE_NAMES {names} != model.FEATURES {FEATURES}")
    return load_task(training.VmShim({MODEL_NAME: model_bytes}))["main"](inputs)


def make_example_inputs(seed: int = 4) -> dict:
    """The checked-in ``example_inputs.json``: one long simulated session (~200 events)."""
    events, _, now = simulate_session(random.Random(seed), SESSION_START, n_views=20)
    return {"now": now, "max_page_views": 20, "events": events}


def example_json(inputs: dict) -> str:
    """JSON with one event per line: diff-friendly and easy to read."""
    head = {k: v for k, v in inputs.items() if k != "events"}
    lines = [f"  {json.dumps(k)}: {json.dumps(v)}," for k, v in head.items()]
    events = ",\n".join(f"    {json.dumps(e)}" for e in inputs["events"])
    return "{\n" + "\n".join(lines) + '\n  "events": [\n' + events + "\n  ]\n}\n"


# --------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    return model_cli(
        argv,
        module="sample_tasks.ipv_features.model",
        train_and_evaluate=train_and_evaluate,
        export=export_onnx,
        metadata=_metadata,
        write_example=lambda: EXAMPLE_INPUTS_PATH.write_text(example_json(make_example_inputs())),
        summary=lambda data, m: (
            f"{N_FEATURES} features, {int(m['rows'])} training page views; test AUC {m['test_auc']:.3f} "
            f"(add-to-cart rule {m['cart_rule_auc']:.3f}), accuracy {m['test_accuracy']:.3f} "
            f"(base rate {m['test_base_rate']:.3f}), train AUC {m['train_auc']:.3f}"),
    )


if __name__ == "__main__":
    sys.exit(main())
