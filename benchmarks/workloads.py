"""The scripts and inputs the benchmarks run.

``FEATURE_SCRIPT`` is the sandbox-slowdown workload: the kind of feature
engineering a task does over a session's events - per-category counting with
``dict.get`` and ``counts[k] += 1``, a small class updating ``self.x += ...``,
``math`` calls, ``sorted(key=lambda ...)``, comprehensions and f-strings.  It
uses only what the sandbox allows, so the very same text runs under the
sandbox and under plain ``exec``.
"""

from __future__ import annotations

import ast
import json
import random
from typing import Any

from sample_tasks.ranker import model as ranker_model

TRIVIAL = "def main(i):\n    return i\n"

SPIN = "def main(i):\n    while True:\n        pass\n"

# ~0.1-0.3 ms per iteration: a checkpoint runs once per loop body, between matmuls.
NUMPY_SPIN = """\
import numpy as np

def main(i):
    m = np.full((128, 128), 0.5)
    while True:
        m = np.tanh(m @ m) * 0.01
"""

# One ranker inference (batch 50) per iteration; the watchdog covers the run itself.
ONNX_SPIN = """\
import numpy as np
import vm

def main(i):
    model = vm.model("ranker")
    x = np.full((50, 8), 0.5, dtype=np.float32)
    while True:
        model.run({"features": x})
"""

FEATURE_SCRIPT = '''\
import math

WEIGHTS = {"view": 1.0, "click": 2.0, "add_to_cart": 4.0, "purchase": 6.0}


class RunningStats:
    def __init__(self):
        self.n = 0
        self.total = 0.0
        self.squares = 0.0

    def add(self, x):
        self.n += 1
        self.total += x
        self.squares += x * x

    def mean(self):
        return self.total / self.n if self.n else 0.0

    def std(self):
        if self.n < 2:
            return 0.0
        m = self.mean()
        return math.sqrt(max(0.0, self.squares / self.n - m * m))


def main(events):
    counts = {}
    by_kind = {}
    dwell = {}
    last_ts = {}
    prices = {}
    purchased = []
    weighted_total = 0.0
    for e in events:
        cat = e["category"]
        kind = e["type"]
        counts[cat] = counts.get(cat, 0) + 1
        key = (cat, kind)
        if key not in by_kind:
            by_kind[key] = 0
        by_kind[key] += 1
        w = WEIGHTS.get(kind, 0.0)
        weighted_total += w
        dwell[cat] = dwell.get(cat, 0.0) + e.get("dwell", 0.0) * w
        stats = prices.get(cat)
        if stats is None:
            stats = prices[cat] = RunningStats()
        stats.add(math.log1p(e["price"]))
        if e["ts"] > last_ts.get(cat, 0.0):
            last_ts[cat] = e["ts"]
        if kind == "purchase":
            purchased.append(e["item"])

    now = max(last_ts.values())
    rows = []
    for cat, n in counts.items():
        stats = prices[cat]
        clicks = by_kind.get((cat, "click"), 0)
        views = by_kind.get((cat, "view"), 0)
        rows.append({
            "category": cat,
            "n": n,
            "ctr": min(1.0, clicks / (views + 1)),
            "price_mean": stats.mean(),
            "price_std": stats.std(),
            "recency": math.exp(-(now - last_ts[cat]) / 900.0),
            "dwell_share": dwell[cat] / weighted_total if weighted_total else 0.0,
        })
    rows = sorted(rows, key=lambda r: (-r["n"], r["category"]))
    labels = [f"{r['category']}:{r['n']}:{r['ctr']:.3f}:{r['price_std']:.2f}" for r in rows]
    top = {r["category"]: round(r["recency"] * r["dwell_share"], 6) for r in rows[:5]}
    return {"labels": labels, "top": top, "purchased": len(set(purchased)), "rows": len(rows)}
'''

_KINDS = ("view", "view", "view", "view", "click", "click", "add_to_cart", "purchase", "share")


def session_events(n: int = 10_000, seed: int = 7) -> list[dict[str, Any]]:
    """``n`` synthetic session events over 24 categories (deterministic for ``seed``)."""
    rng = random.Random(seed)
    cats = [f"cat_{i:02d}" for i in range(24)]
    ts = 1_732_500_000.0
    events = []
    for _ in range(n):
        ts += rng.expovariate(1 / 3.0)
        events.append({
            "type": rng.choice(_KINDS),
            "item": f"item-{rng.randrange(800)}",
            "category": cats[min(23, int(rng.expovariate(1 / 5.0)))],
            "ts": round(ts, 3),
            "dwell": round(rng.expovariate(1 / 12.0), 2),
            "price": round(rng.lognormvariate(3.0, 0.8), 2),
        })
    return events


def ranker_inputs(scale: int = 1) -> dict[str, Any]:
    """The ranker's example inputs; ``scale`` > 1 repeats events and candidates
    (with distinct candidate ids) to make a session ``scale`` times larger."""
    base = json.loads(ranker_model.EXAMPLE_INPUTS_PATH.read_text(encoding="utf-8"))
    if scale == 1:
        return base
    out = dict(base)
    out["events"] = [dict(e) for _ in range(scale) for e in base["events"]]
    out["candidates"] = [
        dict(c, id=f"{c['id']}#{k}") for k in range(scale) for c in base["candidates"]
    ]
    return out


class _SplitAugAssign(ast.NodeTransformer):
    """``a[k] += v`` / ``a.x += v`` -> ``a[k] = a[k] + v`` (stock RestrictedPython
    refuses augmented assignment to items and attributes)."""

    def visit_AugAssign(self, node: ast.AugAssign) -> ast.AST:
        if isinstance(node.target, (ast.Subscript, ast.Attribute)):
            load = ast.parse(ast.unparse(node.target), mode="eval").body
            new = ast.Assign(targets=[node.target], value=ast.BinOp(load, node.op, node.value))
            return ast.copy_location(new, node)
        return node


def stock_rp_variant(source: str) -> str:
    """The same script with item/attribute ``+=`` spelled out, for stock RestrictedPython."""
    tree = _SplitAugAssign().visit(ast.parse(source))
    return ast.unparse(ast.fix_missing_locations(tree))
