# Item-page-view (IPV) features: runs inside the vmcontainer sandbox.
#
# Scenario: a shopping app produces features on the device (as Walle does for
# Mobile Taobao) from the raw stream of user events, instead of uploading the
# stream. Each visit of an item's detail page is one "page view"; this script
# turns the stream into per-page-view features plus session aggregates, and
# scores each page view's purchase intent with the "intent" ONNX model.
#
# inputs = {
#     "events": [                       # any order; sorted by ts (stable)
#         {"ts": float, "type": "exposure", "item": str, "category": str,
#          "position": int},            # the item was shown in a list or feed
#         {"ts": float, "type": "page_enter", "item": str, "category": str,
#          "source": str},              # the item's detail page opened
#         {"ts": float, "type": "scroll", "depth": float},     # 0..1, on the open page
#         {"ts": float, "type": "click", "target": str},       # "image" | "sku" | "review" | ...
#         {"ts": float, "type": "add_to_cart"},                # on the open page
#         {"ts": float, "type": "favorite"},                   # on the open page
#         {"ts": float, "type": "page_leave"},
#         ...
#     ],
#     "now": float,                     # seconds, same clock as ts
#     "max_page_views": int,            # optional (default 50): return only the latest ones
# }
#
# returns {
#     "page_views": [                   # oldest first
#         {"item", "category", "source", "enter_ts", "leave_ts", "dwell_s",
#          "open": bool,                # still open at "now" (no leave yet)
#          "exposure_to_click_s": float or None,
#          "features": {name: value},   # FEATURE_NAMES, rounded to 6 decimals
#          "intent": float},            # model score in [0, 1], rounded to 6 decimals
#         ...
#     ],
#     "session": {"page_views", "unique_items", "exposures", "ctr", "add_to_cart",
#                 "favorites", "total_dwell_s", "mean_dwell_s", "duration_s",
#                 "category_interest": {category: share at now, top 5},
#                 "top_category", "high_intent_items": [items with intent >= 0.5, best first]},
#     "feature_names": FEATURE_NAMES,
# }
#
# A page_enter while another page is open closes that one first. Interactions
# with no page open, and unknown event types, count only towards the session.

import collections
import math

import numpy as np
import vm

# Column order of the model's "features" input (must match model.FEATURES on the host).
FEATURE_NAMES = [
    "log_dwell",  # log1p(seconds on the page), dwell capped at MAX_DWELL_S
    "scroll_depth",  # deepest scroll position, 0..1
    "log_scrolls",  # log1p(number of scroll events)
    "log_clicks",  # log1p(number of clicks on the page)
    "sku_clicked",  # 1 if a variant (SKU) was picked
    "review_viewed",  # 1 if the reviews were opened
    "image_views",  # image clicks / 5, capped at 1
    "added_to_cart",  # 1 if added to cart from this page
    "favorited",  # 1 if favorited from this page
    "log_exposures",  # log1p(times the item was shown in lists before this view)
    "exposure_recency",  # exp(-(enter - last exposure) / 60 s); 0 if never shown
    "category_interest",  # the category's share of time-decayed interest, before entering
    "is_revisit",  # 1 if the item's page was viewed earlier in the session
    "session_depth",  # log1p(page views earlier in the session)
]

MAX_DWELL_S = 600.0
EXPOSURE_SCALE_S = 60.0
INTEREST_HALF_LIFE_S = 600.0
# How much one event says about interest in its category.
INTEREST_WEIGHTS = {
    "exposure": 0.1,
    "page_enter": 1.0,
    "scroll": 0.05,
    "click": 0.3,
    "favorite": 2.0,
    "add_to_cart": 3.0,
}
HIGH_INTENT = 0.5
DEFAULT_MAX_PAGE_VIEWS = 50


class Interest:
    """Per-category interest that halves every INTEREST_HALF_LIFE_S seconds."""

    def __init__(self):
        self.value = {}
        self.at = {}

    def add(self, category, weight, ts):
        self.value[category] = self.get(category, ts) + weight
        self.at[category] = ts

    def get(self, category, ts):
        if category not in self.value:
            return 0.0
        age = max(0.0, ts - self.at[category])
        return self.value[category] * 0.5 ** (age / INTEREST_HALF_LIFE_S)

    def shares(self, ts):
        decayed = {c: self.get(c, ts) for c in self.value}
        total = sum(decayed.values())
        if total <= 0:
            return {}
        return {c: v / total for c, v in decayed.items()}


class PageView:
    """One visit of an item page: what happened on it, and the context it opened in."""

    def __init__(self, event, context):
        self.item = str(event.get("item", ""))
        self.category = str(event.get("category", ""))
        self.source = str(event.get("source", ""))
        self.enter_ts = float(event["ts"])
        self.context = context
        self.leave_ts = None
        self.open = False
        self.max_depth = 0.0
        self.scrolls = 0
        self.clicks = collections.Counter()
        self.cart = False
        self.favorite = False

    def close(self, ts, still_open):
        self.leave_ts = max(ts, self.enter_ts)
        self.open = still_open

    @property
    def dwell(self):
        return min(MAX_DWELL_S, self.leave_ts - self.enter_ts)

    def features(self):
        c = self.context
        return [
            math.log1p(self.dwell),
            self.max_depth,
            math.log1p(self.scrolls),
            math.log1p(sum(self.clicks.values())),
            1.0 if self.clicks["sku"] else 0.0,
            1.0 if self.clicks["review"] else 0.0,
            min(1.0, self.clicks["image"] / 5.0),
            1.0 if self.cart else 0.0,
            1.0 if self.favorite else 0.0,
            math.log1p(c["exposures"]),
            c["exposure_recency"],
            c["category_interest"],
            1.0 if c["revisit"] else 0.0,
            math.log1p(c["earlier_views"]),
        ]


class Session:
    """Consumes the sorted event stream; collects page views and session counters."""

    def __init__(self):
        self.interest = Interest()
        self.exposures = collections.Counter()
        self.last_exposed = {}
        self.viewed = set()
        self.views = []
        self.page = None
        self.counts = collections.Counter()

    def consume(self, e):
        kind = e.get("type")
        ts = float(e["ts"])
        page = self.page
        if kind == "exposure":
            item = str(e.get("item", ""))
            self.exposures[item] += 1
            self.last_exposed[item] = ts
            self.interest.add(str(e.get("category", "")), INTEREST_WEIGHTS["exposure"], ts)
        elif kind == "page_enter":
            self.enter(e, ts)
        elif kind == "page_leave":
            if page is not None:
                page.close(ts, False)
                self.page = None
        elif kind not in INTEREST_WEIGHTS:
            return  # unknown event type
        elif page is None:
            self.counts["off_page_" + kind] += 1
        else:
            if kind == "scroll":
                page.scrolls += 1
                page.max_depth = max(page.max_depth, min(1.0, max(0.0, float(e.get("depth", 0.0)))))
            elif kind == "click":
                page.clicks[str(e.get("target", "other"))] += 1
            elif kind == "add_to_cart":
                page.cart = True
            elif kind == "favorite":
                page.favorite = True
            self.interest.add(page.category, INTEREST_WEIGHTS[kind], ts)
        if kind in ("exposure", "add_to_cart", "favorite"):
            self.counts[kind] += 1

    def enter(self, e, ts):
        if self.page is not None:
            self.page.close(ts, False)
        item = str(e.get("item", ""))
        category = str(e.get("category", ""))
        last = self.last_exposed.get(item)
        context = {
            "exposures": self.exposures[item],
            "exposure_to_click_s": None if last is None else ts - last,
            "exposure_recency": 0.0 if last is None else math.exp(-(ts - last) / EXPOSURE_SCALE_S),
            "category_interest": self.interest.shares(ts).get(category, 0.0),
            "revisit": item in self.viewed,
            "earlier_views": len(self.views),
        }
        self.page = PageView(e, context)
        self.views.append(self.page)
        self.viewed.add(item)
        self.interest.add(category, INTEREST_WEIGHTS["page_enter"], ts)

    def finish(self, now):
        if self.page is not None:
            self.page.close(now, True)
            self.page = None


def run_session(events, now):
    """The Session after every event (sorted by time, stable) and the end of the stream."""
    session = Session()
    for e in sorted(events, key=lambda e: float(e.get("ts", now))):
        if "ts" in e:
            session.consume(e)
    session.finish(now)
    return session


def page_view_features(events, now):
    """Rows of FEATURE_NAMES values, one per page view, oldest first (also used for training)."""
    return [pv.features() for pv in run_session(events, now).views]


def session_summary(session, intents, now, first_ts):
    views = session.views
    total_dwell = sum(pv.dwell for pv in views)
    exposed_views = sum(1 for pv in views if pv.context["exposure_to_click_s"] is not None)
    shares = session.interest.shares(now)
    top = sorted(shares.items(), key=lambda kv: (-kv[1], kv[0]))[:5]
    best = {}
    for pv, p in zip(views, intents):
        if p >= HIGH_INTENT and p > best.get(pv.item, -1.0):
            best[pv.item] = p
    return {
        "page_views": len(views),
        "unique_items": len(session.viewed),
        "exposures": session.counts["exposure"],
        "ctr": round(exposed_views / session.counts["exposure"], 6) if session.counts["exposure"] else 0.0,
        "add_to_cart": session.counts["add_to_cart"],
        "favorites": session.counts["favorite"],
        "total_dwell_s": round(total_dwell, 3),
        "mean_dwell_s": round(total_dwell / len(views), 3) if views else 0.0,
        "duration_s": round(max(0.0, now - first_ts), 3) if first_ts is not None else 0.0,
        "category_interest": {c: round(s, 6) for c, s in top},
        "top_category": top[0][0] if top else None,
        "high_intent_items": [i for i, p in sorted(best.items(), key=lambda kv: (-kv[1], kv[0]))],
    }


def main(inputs):
    events = inputs.get("events", [])
    now = float(inputs.get("now", 0.0))
    limit = int(inputs.get("max_page_views", DEFAULT_MAX_PAGE_VIEWS))

    session = run_session(events, now)
    rows = [pv.features() for pv in session.views]
    intents = []
    if rows:
        out = vm.model("intent").run({"features": np.array(rows, dtype=np.float32)})
        intents = np.asarray(out["intent"], dtype=np.float64).reshape(-1).tolist()

    page_views = []
    for pv, row, p in zip(session.views, rows, intents):
        gap = pv.context["exposure_to_click_s"]
        page_views.append({
            "item": pv.item,
            "category": pv.category,
            "source": pv.source,
            "enter_ts": pv.enter_ts,
            "leave_ts": pv.leave_ts,
            "dwell_s": round(pv.dwell, 3),
            "open": pv.open,
            "exposure_to_click_s": None if gap is None else round(gap, 3),
            "features": {name: round(v, 6) for name, v in zip(FEATURE_NAMES, row)},
            "intent": round(p, 6),
        })
    timestamps = [float(e["ts"]) for e in events if "ts" in e]
    first_ts = min(timestamps) if timestamps else None
    return {
        "page_views": page_views[-limit:] if limit > 0 else [],
        "session": session_summary(session, intents, now, first_ts),
        "feature_names": list(FEATURE_NAMES),
    }
