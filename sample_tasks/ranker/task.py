# Contest/item re-ranker: runs inside the vmcontainer sandbox.
#
# Scenario: the app shows a list of candidate contests (or items). On device,
# this script turns the user's in-session events into per-candidate features,
# scores every candidate with the "ranker" ONNX model and returns the best ones.
#
# inputs = {
#     "events": [                      # the session so far, any order
#         {"type": "view" | "click" | "add_to_cart" | "purchase",
#          "item": str, "category": str,
#          "ts": float,                # seconds (same clock as "now")
#          "dwell": float},            # seconds spent on the item (optional, default 0)
#         ...
#     ],
#     "candidates": [                  # what to rank
#         {"id": str, "category": str,
#          "price": float,             # > 0
#          "popularity": float,        # 0..1
#          "is_new": bool,
#          "discount": float},         # fraction 0..1 (optional, default 0)
#         ...
#     ],
#     "now": float,                    # seconds
#     "top_k": int,                    # optional, default 10
# }
#
# returns {
#     "ranking": [candidate ids, best first, at most top_k],
#     "scores": [model score per ranked id, rounded to 6 decimals],
#     "features_used": 8,
# }
#
# Ties in score keep the candidates' input order. Unknown event types are ignored.

import collections
import math

import numpy as np
import vm

# Column order of the model's "features" input (must match model.FEATURES on the host).
FEATURE_NAMES = [
    "price_z",
    "popularity",
    "category_affinity",
    "category_recency",
    "category_ctr",
    "dwell_share",
    "is_new",
    "discount",
]

# How much each kind of event says about interest in its category.
EVENT_WEIGHTS = {"view": 1.0, "click": 2.0, "add_to_cart": 4.0, "purchase": 6.0}

RECENCY_SCALE_S = 900.0  # recency feature = exp(-age / 15 min)
PRICE_Z_CLIP = 3.0
DEFAULT_TOP_K = 10


def clip(x, lo, hi):
    return max(lo, min(hi, x))


def session_stats(events, now):
    """Per-category aggregates of the session events."""
    known = [e for e in events if e.get("type") in EVENT_WEIGHTS]
    counts = {
        t: collections.Counter(e.get("category", "") for e in known if e.get("type") == t)
        for t in EVENT_WEIGHTS
    }
    weighted = collections.Counter()
    for t, weight in EVENT_WEIGHTS.items():
        weighted.update({c: weight * k for c, k in counts[t].items()})

    dwell = collections.defaultdict(float)
    last_ts = {}
    for e in known:
        cat = e.get("category", "")
        dwell[cat] = dwell[cat] + max(0.0, float(e.get("dwell", 0.0)))
        ts = float(e.get("ts", now))
        if cat not in last_ts or ts > last_ts[cat]:
            last_ts[cat] = ts

    return {
        "counts": counts,
        "weighted": weighted,
        "weighted_total": sum(weighted.values()),
        "dwell": dwell,
        "dwell_total": sum(dwell.values()),
        "last_ts": last_ts,
    }


def price_z_scores(candidates):
    """z-score of log1p(price) across the candidate list, clipped."""
    logs = [math.log1p(max(0.0, float(c.get("price", 0.0)))) for c in candidates]
    n = len(logs)
    mean = sum(logs) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in logs) / n)
    if std < 1e-9:
        return [0.0 for v in logs]
    return [clip((v - mean) / std, -PRICE_Z_CLIP, PRICE_Z_CLIP) for v in logs]


def candidate_features(cand, price_z, stats, now):
    cat = cand.get("category", "")
    counts = stats["counts"]

    affinity = 0.0
    if stats["weighted_total"] > 0:
        affinity = stats["weighted"][cat] / stats["weighted_total"]

    recency = 0.0
    if cat in stats["last_ts"]:
        age = max(0.0, now - stats["last_ts"][cat])
        recency = math.exp(-age / RECENCY_SCALE_S)

    ctr = min(1.0, counts["click"][cat] / (counts["view"][cat] + 1.0))

    dwell_share = 0.0
    if stats["dwell_total"] > 0:
        dwell_share = stats["dwell"].get(cat, 0.0) / stats["dwell_total"]

    return [
        price_z,
        clip(float(cand.get("popularity", 0.0)), 0.0, 1.0),
        affinity,
        recency,
        ctr,
        dwell_share,
        1.0 if cand.get("is_new", False) else 0.0,
        clip(float(cand.get("discount", 0.0)), 0.0, 1.0),
    ]


def main(inputs):
    events = inputs.get("events", [])
    candidates = inputs.get("candidates", [])
    now = float(inputs.get("now", 0.0))
    top_k = int(inputs.get("top_k", DEFAULT_TOP_K))
    n = len(candidates)
    if n == 0 or top_k <= 0:
        return {"ranking": [], "scores": [], "features_used": len(FEATURE_NAMES)}

    stats = session_stats(events, now)
    zs = price_z_scores(candidates)
    rows = [candidate_features(candidates[i], zs[i], stats, now) for i in range(n)]
    feats = np.array(rows, dtype=np.float32)

    out = vm.model("ranker").run({"features": feats})
    scores = np.asarray(out["scores"], dtype=np.float32).reshape(-1).tolist()

    order = sorted(range(n), key=lambda i: (-scores[i], i))[: min(top_k, n)]
    return {
        "ranking": [str(candidates[i].get("id", "")) for i in order],
        "scores": [round(float(scores[i]), 6) for i in order],
        "features_used": len(FEATURE_NAMES),
    }
