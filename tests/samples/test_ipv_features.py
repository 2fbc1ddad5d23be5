"""The ipv_features sample runs in the real sandbox (through the pytest plugin's ``run_task``),
matches the unsandboxed reference, and its intent model says sensible things."""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
import random

import pytest

from sample_tasks.ipv_features import model as ipv

# The plugin is normally loaded through its pytest11 entry point; a checkout that has not
# been re-installed since the entry point was added loads it here (never twice: pytest
# refuses a plugin registered under two names).
if os.environ.get("PYTEST_DISABLE_PLUGIN_AUTOLOAD") or not any(
    ep.value == "vmcontainer.pytest_plugin"
    for ep in importlib.metadata.entry_points(group="pytest11")
):
    pytest_plugins = ["vmcontainer.pytest_plugin"]

T0 = ipv.SESSION_START


@pytest.fixture(scope="module")
def model_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return ipv.build_intent_model(tmp_path_factory.mktemp("m") / "intent.onnx")


@pytest.fixture(scope="module")
def run_ipv(run_task, model_bytes):
    def run(inputs: dict) -> dict:
        return run_task(ipv.TASK_PATH, inputs, models={"intent": model_bytes}, timeout=1.0)

    return run


def page(item: str, enter: float, dwell: float, *actions: dict, category: str = "shoes") -> list:
    """Events of one page view: enter, actions at enter + 1 s, + 2 s, ..., leave."""
    events = [{"ts": enter, "type": "page_enter", "item": item, "category": category,
               "source": "feed"}]
    events += [{"ts": enter + 1.0 + i, **a} for i, a in enumerate(actions)]
    return [*events, {"ts": enter + dwell, "type": "page_leave"}]


def test_example_matches_reference(run_ipv, model_bytes):
    inputs = json.loads(ipv.EXAMPLE_INPUTS_PATH.read_text())
    got = run_ipv(inputs)
    assert got == ipv.reference_features(inputs, model_bytes)
    assert got["feature_names"] == ipv.FEATURES
    views = got["page_views"]
    assert len(views) == inputs["max_page_views"] == 20
    assert got["session"]["page_views"] == 20
    assert all(0.0 <= pv["intent"] <= 1.0 for pv in views)
    assert got["session"]["add_to_cart"] == sum(e["type"] == "add_to_cart"
                                                for e in inputs["events"])


def test_example_inputs_are_the_generated_session():
    assert json.loads(ipv.EXAMPLE_INPUTS_PATH.read_text()) == ipv.make_example_inputs()
    assert 180 <= len(ipv.make_example_inputs()["events"]) <= 260


def test_model_beats_the_add_to_cart_rule(model_bytes):
    meta = ipv.model_metadata(model_bytes)
    assert float(meta["test_auc"]) > 0.72
    assert float(meta["test_auc"]) > float(meta["cart_rule_auc"]) + 0.1
    assert meta["features"].split(",") == ipv.FEATURES == ipv.task_feature_names()


def test_engaged_view_scores_above_bounce_and_idle(run_ipv):
    engaged = page("shoes-1", T0, 95.0, {"type": "scroll", "depth": 0.4},
                   {"type": "scroll", "depth": 0.9}, {"type": "click", "target": "image"},
                   {"type": "click", "target": "sku"}, {"type": "click", "target": "review"},
                   {"type": "add_to_cart"})
    bounce = page("shoes-2", T0 + 200, 3.0)
    idle = page("shoes-3", T0 + 300, 400.0)  # long dwell, nothing done: the phone was put down
    out = run_ipv({"events": engaged + bounce + idle, "now": T0 + 800})
    intent = {pv["item"]: pv["intent"] for pv in out["page_views"]}
    assert intent["shoes-1"] > 0.5 > intent["shoes-2"]
    assert intent["shoes-1"] > intent["shoes-3"]
    assert out["session"]["high_intent_items"] == ["shoes-1"]


def test_page_view_features(run_ipv):
    events = [
        {"ts": T0, "type": "exposure", "item": "a", "category": "books", "position": 0},
        {"ts": T0 + 1, "type": "exposure", "item": "b", "category": "toys", "position": 1},
        *page("a", T0 + 10, 30.0, {"type": "scroll", "depth": 0.5}, {"type": "scroll", "depth": 0.3},
              {"type": "click", "target": "image"}, {"type": "favorite"}, category="books"),
        {"ts": T0 + 50, "type": "add_to_cart", "item": "x"},  # no page open: session only
        {"ts": T0 + 60, "type": "page_enter", "item": "b", "category": "toys"},
        {"ts": T0 + 70, "type": "page_enter", "item": "a", "category": "books"},  # closes "b"
        {"ts": T0 + 71, "type": "app_background"},  # unknown: ignored
    ]
    shuffled = list(events)
    random.Random(0).shuffle(shuffled)  # any order: sorted by ts inside
    out = run_ipv({"events": shuffled, "now": T0 + 100})
    a1, b, a2 = out["page_views"]
    assert (a1["dwell_s"], b["dwell_s"], a2["dwell_s"]) == (30.0, 10.0, 30.0)
    assert (a1["open"], b["open"], a2["open"]) == (False, False, True)
    assert a1["exposure_to_click_s"] == 10.0 and b["exposure_to_click_s"] == 59.0
    f = a1["features"]
    assert f["scroll_depth"] == 0.5 and f["log_scrolls"] == round(math.log1p(2), 6)
    assert f["image_views"] == 0.2 and f["favorited"] == 1.0 and f["added_to_cart"] == 0.0
    assert f["log_exposures"] == round(math.log1p(1), 6) and f["is_revisit"] == 0.0
    assert a2["features"]["is_revisit"] == 1.0 and a2["features"]["session_depth"] > 0
    # before entering "a" the only interest is two exposures, one second apart
    assert f["category_interest"] == pytest.approx(0.5, abs=1e-3)
    s = out["session"]
    assert (s["page_views"], s["unique_items"], s["exposures"], s["add_to_cart"]) == (3, 2, 2, 1)
    assert s["top_category"] == "books" and s["duration_s"] == 100.0


def test_empty_and_limits(run_ipv):
    empty = run_ipv({"events": [], "now": T0})
    assert empty["page_views"] == [] and empty["session"]["page_views"] == 0
    assert empty["session"]["top_category"] is None
    events = [e for i in range(8) for e in page(f"i{i}", T0 + 60 * i, 20.0)]
    out = run_ipv({"events": events, "now": T0 + 600, "max_page_views": 3})
    assert [pv["item"] for pv in out["page_views"]] == ["i5", "i6", "i7"]
    assert out["session"]["page_views"] == 8


# A task downstream of ipv_features in a task graph (built with --requires ipv_features).
FOLLOW_UP = """
def main(inputs, upstream):
    session = upstream["ipv_features"]["session"]
    return {"push_coupon_for": session["high_intent_items"][: inputs["max_items"]],
            "category": session["top_category"]}
"""


def test_downstream_task_consumes_the_features(run_task, model_bytes):
    inputs = json.loads(ipv.EXAMPLE_INPUTS_PATH.read_text())
    features = ipv.reference_features(inputs, model_bytes)
    out = run_task(FOLLOW_UP, {"max_items": 2}, upstream={"ipv_features": features})
    assert out == {"push_coupon_for": features["session"]["high_intent_items"][:2],
                   "category": features["session"]["top_category"]}
