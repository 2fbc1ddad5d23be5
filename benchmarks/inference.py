"""Inference benchmarks: each figure next to a baseline measured in the same run.

Usage::

    python -m benchmarks.inference [--quick] [--json OUT.json]

Figures (same small MLP unless noted; targets in brackets):

1. ``vm.model().run`` from a sandboxed script vs a raw ``InferenceSession.run``
   at batch 1 [<= 1.1x].  The script runs N model calls inside ONE invocation
   so the per-call thread hand-off does not dominate; both loops build the feed
   dict each time.  Two raw baselines: ``session.run(names, feeds)`` as most
   code writes it, and the tuned ``session.run(names, feeds, run_options)``
   with a reused ``RunOptions``;
2. session creation: raw ``InferenceSession()`` vs the container's load
   (validation scan + session + warm-up run);
3. the first call after install, with and without preload (install-time
   session creation and warm-up), vs a steady-state call;
4. micro-batching throughput: 2 workers, each calling a 50-item ranking model
   (the ranker sample's architecture) in a loop, with and without
   ``micro_batch``.

Variant and baseline run interleaved round by round (``benchmarks.timing``)
and ratios are medians of per-round ratios: the reference machine is noisy.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import onnxruntime as ort

from sample_tasks.ranker import model as ranker_model
from vmcontainer import DeviceProfile
from vmcontainer.inference.loaded import LoadedModel
from vmcontainer.inference.validate import validate_model_bytes
from vmcontainer.testing import build_test_bundle, test_container

from .timing import Case, RatioStats, interleave, paired_ratios

MLP_IN, MLP_HIDDEN, MLP_OUT = 32, 64, 8
RANK_ROWS = 50


@dataclass(frozen=True)
class Config:
    quick: bool
    run_rounds: int  # rounds of the batch-1 comparison
    runs_per_call: int  # model runs inside one invocation
    create_rounds: int
    first_call_reps: int
    batch_rounds: int
    batch_runs: int  # runs per worker per round (micro-batching)


FULL = Config(False, run_rounds=61, runs_per_call=2000, create_rounds=100, first_call_reps=41,
              batch_rounds=15, batch_runs=2000)
QUICK = Config(True, run_rounds=9, runs_per_call=1000, create_rounds=20, first_call_reps=9,
               batch_rounds=5, batch_runs=600)


@dataclass
class Row:
    figure: str
    unit: str
    value: float
    baseline_name: str = ""
    baseline: float | None = None
    ratio: RatioStats | None = None
    target: str = ""
    note: str = ""


# -- models ---------------------------------------------------------------------------------


def small_mlp(seed: int = 0) -> bytes:
    """x float32 [N, 32] -> Gemm 64 -> Relu -> Gemm 8 -> y [N, 8]."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.normal(size=s).astype(np.float32), n) for n, s in (
        ("W1", (MLP_IN, MLP_HIDDEN)), ("b1", (MLP_HIDDEN,)), ("W2", (MLP_HIDDEN, MLP_OUT)),
        ("b2", (MLP_OUT,)))]
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "W1", "b1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("Gemm", ["r", "W2", "b2"], ["y"])], "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", MLP_IN])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", MLP_OUT])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model.SerializeToString()


def ranking_model() -> bytes:
    """The ranker sample's MLP (8 features -> 16 ReLU -> 1 sigmoid), untrained weights."""
    rng = np.random.default_rng(0)
    f = ranker_model.N_FEATURES
    weights = {"W1": rng.normal(size=(f, 16)), "b1": rng.normal(size=16),
               "W2": rng.normal(size=(16, 1)), "b2": rng.normal(size=1)}
    return ranker_model.export_onnx({k: v.astype(np.float32) for k, v in weights.items()}, None)


def raw_session(blob: bytes) -> ort.InferenceSession:
    """A session as an app would make it by hand: the device profile's options."""
    return ort.InferenceSession(blob, sess_options=DeviceProfile().session_options(),
                                providers=["CPUExecutionProvider"])


# -- 1. vm.model().run vs raw run at batch 1 --------------------------------------------------

def _run_loop(model: str, input_name: str) -> str:
    """A script that runs ``model`` ``inputs["n"]`` times on ``inputs["x"]``."""
    return f"""
import vm
def main(inputs):
    x = inputs["x"]
    m = vm.model("{model}")
    for i in range(inputs["n"]):
        m.run({{"{input_name}": x}})
    return inputs["n"]
"""


LOOP = _run_loop("mlp", "x")

LOOP_HOISTED = """
import vm
def main(inputs):
    x = inputs["x"]
    run = vm.model("mlp").run
    for i in range(inputs["n"]):
        run({"x": x})
    return inputs["n"]
"""


def bench_run(cfg: Config) -> list[Row]:
    blob = small_mlp()
    x = np.random.default_rng(1).standard_normal((1, MLP_IN)).astype(np.float32)
    n = cfg.runs_per_call
    session = raw_session(blob)
    names = [o.name for o in session.get_outputs()]
    ro = ort.RunOptions()

    def raw_default() -> None:
        run = session.run
        for _ in range(n):
            run(names, {"x": x})

    def raw_tuned() -> None:
        run = session.run
        for _ in range(n):
            run(names, {"x": x}, ro)

    with test_container(workers=1) as box:
        box.install(build_test_bundle(LOOP, name="loop", models={"mlp": blob}))
        box.install(build_test_bundle(LOOP_HOISTED, name="hoisted", models={"mlp": blob}))
        inputs = {"x": x, "n": n}
        np.testing.assert_allclose(session.run(names, {"x": x})[0],
                                   _vm_once(box, blob, x), rtol=1e-5)
        series = interleave([
            Case("vm", lambda: box.invoke("loop", inputs)),
            Case("vm_hoisted", lambda: box.invoke("hoisted", inputs)),
            Case("raw", raw_default),
            Case("raw_tuned", raw_tuned),
        ], rounds=cfg.run_rounds, warmup=2)
    per = {k: [t / n for t in s.rounds] for k, s in series.items()}
    med = {k: statistics.median(v) for k, v in per.items()}
    rows = []
    for variant, label in (("vm", "`vm.model().run` in a script loop, batch 1"),
                           ("vm_hoisted", "same, `run = m.run` hoisted out of the loop")):
        rows.append(Row(label, "us", med[variant] * 1e6, "raw `session.run(names, feeds)`",
                        med["raw"] * 1e6, RatioStats.of(paired_ratios(per[variant], per["raw"])),
                        "<= 1.1x" if variant == "vm" else ""))
        rows.append(Row(label, "us", med[variant] * 1e6,
                        "raw `session.run(names, feeds, run_options)`", med["raw_tuned"] * 1e6,
                        RatioStats.of(paired_ratios(per[variant], per["raw_tuned"]))))
    return rows


def _vm_once(box: Any, blob: bytes, x: np.ndarray) -> np.ndarray:
    src = 'import vm\ndef main(i):\n    return vm.model("mlp").run({"x": i})["y"]\n'
    box.install(build_test_bundle(src, name="once", models={"mlp": blob}))
    return box.invoke("once", x)


# -- 2. session creation ------------------------------------------------------------------------


def bench_create(cfg: Config) -> list[Row]:
    blob = small_mlp()
    profile = DeviceProfile()

    def container_load() -> None:
        LoadedModel("mlp", "digest", blob, profile)

    series = interleave([
        Case("raw", lambda: raw_session(blob)),
        Case("load", container_load),
        Case("scan", lambda: validate_model_bytes("mlp", blob)),
    ], rounds=cfg.create_rounds, warmup=3)
    raw = series["raw"].rounds
    return [
        Row("model load: validation scan + session + warm-up run", "ms",
            series["load"].median * 1e3, "raw `InferenceSession()`", series["raw"].median * 1e3,
            RatioStats.of(paired_ratios(series["load"].rounds, raw))),
        Row("  of which the wire-format validation scan", "ms", series["scan"].median * 1e3,
            "raw `InferenceSession()`", series["raw"].median * 1e3,
            RatioStats.of(paired_ratios(series["scan"].rounds, raw))),
    ]


# -- 3. first call with and without preload ------------------------------------------------------

FIRST = """
import vm
def main(inputs):
    return vm.model("mlp").run({"x": inputs})["y"]
"""


def bench_first_call(cfg: Config) -> list[Row]:
    x = np.ones((1, MLP_IN), np.float32)
    times: dict[str, list[float]] = {"preload": [], "lazy": [], "steady": []}
    seed = 100
    with test_container(workers=1) as eager, \
            test_container(workers=1, profile=DeviceProfile(preload=False)) as lazy:
        for rep in range(cfg.first_call_reps):
            for key, box in (("preload", eager), ("lazy", lazy)):
                seed += 1  # new weights, new digest: no session to share
                box.install(build_test_bundle(FIRST, name=f"{key}{rep}",
                                              models={"mlp": small_mlp(seed)}))
                t0 = time.perf_counter()
                box.invoke(f"{key}{rep}", x)
                times[key].append(time.perf_counter() - t0)
                if key == "preload":
                    t0 = time.perf_counter()
                    box.invoke(f"{key}{rep}", x)
                    times["steady"].append(time.perf_counter() - t0)
                box.uninstall(f"{key}{rep}")
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    return [
        Row("first call after install, preloaded (session + warm-up at install)", "ms",
            med["preload"], "a steady-state call", med["steady"],
            RatioStats.of(paired_ratios(times["preload"], times["steady"]))),
        Row("first call after install, lazy (session made at first use)", "ms", med["lazy"],
            "a steady-state call", med["steady"],
            RatioStats.of(paired_ratios(times["lazy"], times["steady"]))),
    ]


# -- 4. micro-batching throughput -----------------------------------------------------------------

RANK_LOOP = _run_loop("ranker", "features")


def deep_ranking_model(layers: int = 30, width: int = 16) -> bytes:
    """A deep, narrow ranker (30 Gemm+Relu layers of 16): ~60 small nodes, so a run's
    fixed cost (~120 us here) dwarfs its per-row cost - where merging runs pays."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    f = ranker_model.N_FEATURES
    nodes, inits, prev, d = [], [], "features", f
    for i in range(layers):
        inits += [numpy_helper.from_array((rng.normal(size=(d, width)) / np.sqrt(d)).astype(
            np.float32), f"W{i}"), numpy_helper.from_array(np.zeros(width, np.float32), f"b{i}")]
        nodes += [helper.make_node("Gemm", [prev, f"W{i}", f"b{i}"], [f"g{i}"]),
                  helper.make_node("Relu", [f"g{i}"], [f"r{i}"])]
        prev, d = f"r{i}", width
    inits += [numpy_helper.from_array(rng.normal(size=(d, 1)).astype(np.float32), "Wo"),
              numpy_helper.from_array(np.zeros(1, np.float32), "bo")]
    nodes += [helper.make_node("Gemm", [prev, "Wo", "bo"], ["logit"]),
              helper.make_node("Sigmoid", ["logit"], ["scores"])]
    graph = helper.make_graph(
        nodes, "deep_ranker",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", f])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 1])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model.SerializeToString()


def _batching_row(cfg: Config, label: str, blob: bytes, workers: int, runs: int,
                  target: str = "") -> Row:
    x = np.random.default_rng(2).standard_normal((RANK_ROWS, ranker_model.N_FEATURES)).astype(
        np.float32)
    batched_profile = DeviceProfile(micro_batch={"ranker": {"window_ms": 2, "max_batch": 16}})
    with test_container(workers=workers) as plain, \
            test_container(workers=workers, profile=batched_profile) as batched:
        for box in (plain, batched):
            box.install(build_test_bundle(RANK_LOOP, name="rank", models={"ranker": blob}))

        def all_workers(box: Any) -> Callable[[], None]:
            def go() -> None:
                futures = [box.submit("rank", {"x": x, "n": runs}) for _ in range(workers)]
                for fut in futures:
                    fut.result()
            return go

        series = interleave([Case("plain", all_workers(plain)),
                             Case("batched", all_workers(batched))],
                            rounds=cfg.batch_rounds, warmup=1)
        batcher = next(iter(batched._hub._models.values())).batcher
        merged = batcher.requests / max(1, batcher.runs)
    total = workers * runs
    tput = {k: [total / t for t in s.rounds] for k, s in series.items()}
    gain = RatioStats.of([b / p for b, p in zip(tput["batched"], tput["plain"])])
    return Row(f"{label}: throughput with micro-batching", "runs/s",
               statistics.median(tput["batched"]), "same, no micro-batching",
               statistics.median(tput["plain"]), gain, target,
               f"{merged:.2f} requests merged per ORT run")


def bench_batching(cfg: Config) -> list[Row]:
    return [
        _batching_row(cfg, f"2 workers x ranking model ({RANK_ROWS} items/run)",
                      ranking_model(), 2, cfg.batch_runs, target="gain > 1x"),
        _batching_row(cfg, f"8 workers x deep ranking model ({RANK_ROWS} items/run)",
                      deep_ranking_model(), 8, cfg.batch_runs // 20),
    ]


# -- report ---------------------------------------------------------------------------------------


def _value(v: float, unit: str) -> str:
    if unit == "runs/s":
        return f"{v:,.0f} runs/s"
    return f"{v:.3f} ms" if unit == "ms" else f"{v:.2f} us"


def markdown(rows: list[Row], cfg: Config, elapsed: float) -> str:
    lines = [
        f"Inference benchmarks ({'quick' if cfg.quick else 'full'}; Python "
        f"{sys.version.split()[0]}, onnxruntime {ort.__version__}, numpy {np.__version__}; "
        f"{elapsed:.0f} s)", "",
        "| figure | value | baseline | baseline value | ratio (median [p25-p75]) | target |",
        "|---|---|---|---|---|---|"]
    for r in rows:
        ratio = "" if r.ratio is None else (
            f"{r.ratio.median:.2f}x [{r.ratio.p25:.2f}-{r.ratio.p75:.2f}]")
        target = r.target
        if r.target.startswith("<=") and r.ratio is not None:
            target += " met" if r.ratio.median <= float(r.target[2:].strip(" x")) else " MISSED"
        if r.target.startswith("gain") and r.ratio is not None:
            target += " met" if r.ratio.median > 1 else " not met"
        note = f" ({r.note})" if r.note else ""
        base = "" if r.baseline is None else _value(r.baseline, r.unit)
        lines.append(f"| {r.figure}{note} | {_value(r.value, r.unit)} | {r.baseline_name} | "
                     f"{base} | {ratio} | {target} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.inference", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer rounds (about 5 s)")
    parser.add_argument("--json", metavar="OUT.json")
    args = parser.parse_args(argv)
    cfg = QUICK if args.quick else FULL
    start = time.perf_counter()
    rows: list[Row] = []
    for bench in (bench_run, bench_create, bench_first_call, bench_batching):
        print(f"... {bench.__name__}", file=sys.stderr, flush=True)
        rows += bench(cfg)
    elapsed = time.perf_counter() - start
    print(markdown(rows, cfg, elapsed))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump([asdict(r) for r in rows], fh, indent=2, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
