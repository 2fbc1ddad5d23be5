"""vmcontainer benchmarks: each figure next to a baseline measured in the same run.

Usage::

    python -m benchmarks.run [--quick] [--json OUT.json] [--markdown OUT.md] [--profile]

Figures (targets in brackets):

1. invoke overhead of a trivial task vs a bare ``ThreadPoolExecutor`` round trip [<= 1.3x];
2. sandbox slowdown of a feature-engineering script vs plain ``exec`` [<= 1.5x],
   with stock RestrictedPython for context;
3. install time vs the bundle's unavoidable cryptography [<= 0.5 ms without models];
4. timeout overshoot past the deadline [p99 <= 2 ms];
5. the ranker sample end to end vs its own code on a raw ORT session.

Variant and baseline run interleaved round by round (``benchmarks.timing``), and
ratios are medians of per-round ratios: the reference machine is noisy.
``--profile`` runs cProfile over the variant of every missed target.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import platform
import pstats
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

from sample_tasks.ranker import model as ranker_model
from vmcontainer.bundle import format as fmt
from vmcontainer.errors import TaskTimeout
from vmcontainer.sandbox.boundary import copy_plain
from vmcontainer.sandbox.compiler import compile_task
from vmcontainer.scheduler.scope import CallScope
from vmcontainer.testing import build_test_bundle, test_container

from . import baselines, workloads
from .timing import Case, RatioStats, interleave, paired_ratios, percentile

# -- configuration ---------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    """Repetitions per benchmark.  Quick mode keeps every figure, with fewer rounds."""

    quick: bool
    invoke_rounds: int
    invoke_inner: int
    sandbox_rounds: int
    sandbox_inner: int
    install_rounds: int
    install_inner: int
    model_install_rounds: int
    model_install_inner: int
    timeout_runs: int
    ranker_rounds: int
    ranker_inner: int
    timeout: float = 0.05
    events: int = 10_000


FULL = Config(quick=False, invoke_rounds=400, invoke_inner=50, sandbox_rounds=41,
              sandbox_inner=3, install_rounds=200, install_inner=10, model_install_rounds=100,
              model_install_inner=3, timeout_runs=100, ranker_rounds=100, ranker_inner=10)
QUICK = Config(quick=True, invoke_rounds=100, invoke_inner=30, sandbox_rounds=11,
               sandbox_inner=3, install_rounds=50, install_inner=5, model_install_rounds=25,
               model_install_inner=3, timeout_runs=15, ranker_rounds=40, ranker_inner=10)

# -- results ---------------------------------------------------------------------------


@dataclass
class Row:
    """One line of the report.  Times are in seconds; ``unit`` is only for display."""

    benchmark: str
    unit: str
    value: float | None
    baseline: float | None
    baseline_name: str
    ratio: float | None = None
    ratio_iqr: tuple[float, float] | None = None
    target: str = ""
    met: bool | None = None
    note: str = ""
    error: str = ""
    profile_fn: Callable[[], Any] | None = field(default=None, repr=False)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("profile_fn")
        return out


_SCALE = {"µs": 1e6, "ms": 1e3}


def _fmt_time(seconds: float | None, unit: str) -> str:
    if seconds is None:
        return "—"
    value = seconds * _SCALE[unit]
    return f"{value:.3g} {unit}" if value < 10 else f"{value:.1f} {unit}"


def _fmt_ratio(row: Row) -> str:
    if row.ratio is None:
        return "—"
    text = f"{row.ratio:.2f}×"
    if row.ratio_iqr is not None:
        text += f" [{row.ratio_iqr[0]:.2f}–{row.ratio_iqr[1]:.2f}]"
    return text


def _fmt_target(row: Row) -> str:
    if not row.target:
        return "context"
    return f"{row.target} {'✅' if row.met else '❌ missed'}"


def markdown(rows: list[Row], config: Config) -> str:
    """The report: one table, then the notes the table's cells refer to."""
    lines = [
        "| benchmark | value | baseline | ratio | target |",
        "|---|---|---|---|---|",
    ]
    notes = []
    for row in rows:
        name = row.benchmark
        if row.note:
            notes.append(row.note)
            name += f" [{len(notes)}]"
        if row.error:
            lines.append(f"| {name} | **failed**: {row.error} | — | — | — |")
            continue
        baseline = f"{_fmt_time(row.baseline, row.unit)} ({row.baseline_name})"
        lines.append(f"| {name} | {_fmt_time(row.value, row.unit)} | {baseline} | "
                     f"{_fmt_ratio(row)} | {_fmt_target(row)} |")
    lines.append("")
    lines.append("Ratio: median of per-round ratios (a round's figure is the median of its "
                 "calls), [25th–75th percentile]; "
                 f"{'quick' if config.quick else 'full'} run, Python {platform.python_version()}.")
    lines += [f"[{i}] {note}" for i, note in enumerate(notes, 1)]
    return "\n".join(lines) + "\n"


def _ratio_fields(variant: list[float], baseline: list[float]) -> dict[str, Any]:
    stats = RatioStats.of(paired_ratios(variant, baseline))
    return {"ratio": stats.median, "ratio_iqr": (stats.p25, stats.p75)}


# -- fixtures --------------------------------------------------------------------------


class Fixtures:
    """What several benchmarks share: one container (workers=1, so its hand-off is
    comparable with a 1-worker pool), a bare 1-worker pool and the ranker model.

    The circuit breaker is set out of reach: the timeout benchmark times a task
    out on purpose, dozens of times in a row."""

    def __init__(self) -> None:
        self.container = test_container(workers=1, breaker_threshold=1 << 30)
        self.pool = ThreadPoolExecutor(max_workers=1)
        self.model_bytes = ranker_model.build_ranker_model(None)

    def install(self, name: str, source: str, **kwargs: Any) -> None:
        self.container.install(build_test_bundle(source, name=name, timeout=60.0, **kwargs))

    def close(self) -> None:
        self.pool.shutdown()
        self.container.close()


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _check_agree(what: str, **results: Any) -> None:
    """A benchmark compares like with like only if variant and baseline compute the same;
    the first keyword is the reference."""
    (ref_name, ref), *others = results.items()
    wrong = [name for name, result in others if result != ref]
    if wrong:
        raise RuntimeError(f"{what}: {', '.join(wrong)} returned a different result than {ref_name}")


# -- 1. invoke overhead ----------------------------------------------------------------


def bench_invoke(fx: Fixtures, cfg: Config) -> list[Row]:
    """``invoke`` of ``def main(i): return i`` vs a bare ThreadPoolExecutor round trip:
    both are one cross-thread hand-off; the difference is the container's own cost
    (input copy, scope, breaker, fresh globals, result copy, metrics)."""
    fx.install("trivial", workloads.TRIVIAL)
    def invoke() -> Any:
        return fx.container.invoke("trivial", 1)

    res = interleave([Case("invoke", invoke), Case("pool", lambda: baselines.pool_call(fx.pool))],
                     rounds=cfg.invoke_rounds, inner=cfg.invoke_inner, warmup=50)
    v, b = res["invoke"], res["pool"]
    base = "ThreadPoolExecutor(1) submit+result"
    return [
        Row("invoke, trivial task, p50", "µs", v.pct(50), b.pct(50), base,
            target="≤ 1.3×", profile_fn=invoke, **_ratio_fields(v.rounds, b.rounds)),
        Row("invoke, trivial task, p99", "µs", v.pct(99), b.pct(99), base,
            ratio=v.pct(99) / b.pct(99)),
    ]


# -- 2. sandbox slowdown ---------------------------------------------------------------


def bench_sandbox(fx: Fixtures, cfg: Config) -> list[Row]:
    """The installed program's ``call`` (no thread hand-off) vs the same source under
    plain ``exec`` and under stock RestrictedPython, over ``cfg.events`` events."""
    fx.install("features", workloads.FEATURE_SCRIPT)
    program = fx.container._registry.get("features").program
    events = copy_plain(workloads.session_events(cfg.events))  # as the container hands them in
    plain = baselines.PlainScript(workloads.FEATURE_SCRIPT)
    stock, stock_note = _stock_restricted(workloads.FEATURE_SCRIPT)
    def sandboxed() -> Any:
        return program.call(events, CallScope(60.0))

    expected = plain(events)
    _check_agree("sandbox slowdown", plain=expected, sandbox=sandboxed()[0], stock=stock(events))

    res = interleave([Case("sandbox", sandboxed), Case("plain", lambda: plain(events)),
                      Case("stock", lambda: stock(events))],
                     rounds=cfg.sandbox_rounds, inner=cfg.sandbox_inner)
    s, p, r = res["sandbox"], res["plain"], res["stock"]
    what = f"feature script, {cfg.events // 1000}k events"
    return [
        Row(f"sandbox slowdown, {what}", "ms", s.median, p.median, "plain exec",
            target="≤ 1.5×", profile_fn=sandboxed, **_ratio_fields(s.rounds, p.rounds)),
        Row(f"stock RestrictedPython, {what}", "ms", r.median, p.median, "plain exec",
            note=stock_note, **_ratio_fields(r.rounds, p.rounds)),
    ]


def _stock_restricted(source: str) -> tuple[baselines.StockRestrictedScript, str]:
    """Stock RP on ``source`` if it compiles, else on the ``x = x + v`` variant."""
    note = ("Stock RestrictedPython with safer_getattr, full_write_guard, guarded "
            "iter/unpack, default item guard, a simple _inplacevar_")
    try:
        return baselines.StockRestrictedScript(source), note + "."
    except SyntaxError as exc:
        refused = sorted({str(msg).split(": ", 1)[-1].rstrip(".") for msg in exc.args[0]})
        return (baselines.StockRestrictedScript(workloads.stock_rp_variant(source)),
                note + f". It refuses the script ({'; '.join(refused)}), so this row runs a "
                "variant with `a[k] += v` / `self.x += v` spelled `a[k] = a[k] + v`.")


# -- 3. install time -------------------------------------------------------------------


def bench_install(fx: Fixtures, cfg: Config) -> list[Row]:
    return _install_plain(fx, cfg) + _install_model(fx, cfg)


def _install_plain(fx: Fixtures, cfg: Config) -> list[Row]:
    """Reinstalling one release of a model-free bundle vs the crypto it cannot avoid."""
    source = workloads.FEATURE_SCRIPT
    bundle = build_test_bundle(source, name="install-probe")
    floor = baselines.CryptoFloor(bundle, compile_task(source, "script.py").code)
    def install() -> Any:
        return fx.container.install(bundle)

    res = interleave([Case("install", install), Case("floor", floor.minimal),
                      Case("full", floor.full)],
                     rounds=cfg.install_rounds, inner=cfg.install_inner, warmup=5)
    i, m, f = res["install"], res["floor"], res["full"]
    kb = len(bundle) / 1024
    wrap = fmt.parse_bundle(bundle).header["wrap"]
    return [
        Row(f"install, no models ({kb:.1f} KB bundle)", "ms", i.median, m.median,
            "Ed25519 verify + AES-GCM decrypt + marshal.loads", target="≤ 0.5 ms",
            met=i.median <= 0.5e-3, profile_fn=install, **_ratio_fields(i.rounds, m.rounds)),
        Row("install, no models, vs the format's full floor", "ms", i.median, f.median,
            f"same + {wrap.split('-')[1]} HPKE unwrap + 2× SHA-256",
            note=f"The bundle format also requires the HPKE unwrap of the content key ({wrap}, "
                 "the default device key type) and two SHA-256 digests; this row compares "
                 "against that full floor.",
            **_ratio_fields(i.rounds, f.rounds)),
    ]


def _install_model(fx: Fixtures, cfg: Config) -> list[Row]:
    """Installing the ranker with its model: cold (a new ORT session) vs the crypto
    floor plus a bare session; and a reinstall, where the session is shared by digest."""
    source = ranker_model.task_source()
    bundle = build_test_bundle(source, name="ranker-install", models={"ranker": fx.model_bytes})
    floor = baselines.CryptoFloor(bundle, compile_task(source, "task.py").code)
    container = fx.container

    def uninstall() -> None:
        if any(t.name == "ranker-install" for t in container.tasks()):
            container.uninstall("ranker-install")

    def floor_and_session() -> None:
        floor.minimal()
        baselines.new_session(fx.model_bytes)

    def install() -> Any:
        return container.install(bundle)

    res = interleave([Case("cold", install, prepare=uninstall), Case("warm", install),
                      Case("floor+session", floor_and_session), Case("floor", floor.minimal)],
                     rounds=cfg.model_install_rounds, inner=cfg.model_install_inner, warmup=3)
    c, w, fs, f = res["cold"], res["warm"], res["floor+session"], res["floor"]
    kb = len(bundle) / 1024
    return [
        Row(f"install, ranker model, cold ({kb:.1f} KB bundle)", "ms", c.median, fs.median,
            "crypto floor + bare InferenceSession",
            note="Cold install creates the ORT session (and, with the onnx package present, "
                 "parses and checks the model with onnx.checker); session creation dominates.",
            profile_fn=lambda: (uninstall(), install()), **_ratio_fields(c.rounds, fs.rounds)),
        Row("reinstall, ranker model, session shared by digest", "ms", w.median, f.median,
            "crypto floor", **_ratio_fields(w.rounds, f.rounds)),
    ]


# -- 4. timeout overshoot --------------------------------------------------------------


def bench_timeout(fx: Fixtures, cfg: Config) -> list[Row]:
    """Wall time from submit to ``TaskTimeout`` minus the timeout, for three loops,
    vs a bare pool thread running the same loop and checking its own deadline."""
    import numpy as np

    fx.install("spin", workloads.SPIN)
    fx.install("numpy-spin", workloads.NUMPY_SPIN)
    fx.install("onnx-spin", workloads.ONNX_SPIN, models={"ranker": fx.model_bytes})
    session = baselines.new_session(fx.model_bytes)
    x = np.full((50, 8), 0.5, dtype=np.float32)
    state = {"m": np.full((128, 128), 0.5)}

    def numpy_body() -> None:
        state["m"] = np.tanh(state["m"] @ state["m"]) * 0.01

    def onnx_body() -> Any:
        return session.run(None, {"features": x})

    loops = [
        ("while True: pass", "spin", None, "≤ 2 ms"),
        ("numpy loop (128² matmul)", "numpy-spin", numpy_body, ""),
        ("ONNX loop (ranker, batch 50)", "onnx-spin", onnx_body, ""),
    ]
    rows = []
    for label, task, body, target in loops:
        note = _iteration_note(body) if body is not None else ""
        rows += _timeout_rows(fx, cfg, label, task, body, target, note)
    return rows


def _iteration_note(body: Callable[[], Any]) -> str:
    """One loop iteration's own duration: a checkpoint runs between iterations, so the
    overshoot is bounded by it (and by its tail)."""
    it = interleave([Case("iteration", body)], rounds=300, warmup=10)["iteration"]
    return (f"One iteration of the loop body alone takes {it.pct(50) * 1e3:.2f} ms at p50 and "
            f"{it.pct(99) * 1e3:.2f} ms at p99 (max {max(it.calls) * 1e3:.1f} ms); the "
            "deadline is checked between iterations, so overshoot is bounded by an iteration.")


def _timeout_rows(fx: Fixtures, cfg: Config, label: str, task: str,
                  body: Callable[[], Any] | None, target: str, note: str) -> list[Row]:
    timeout = cfg.timeout

    def invoke() -> None:
        try:
            fx.container.invoke(task, None, timeout=timeout)
        except TaskTimeout:
            return
        raise AssertionError(f"{task} returned before its deadline")

    def bare() -> None:
        baselines.cooperative_timeout(fx.pool, timeout, body)

    res = interleave([Case("container", invoke), Case("bare", bare)], rounds=cfg.timeout_runs)
    over = {name: [t - timeout for t in series.calls] for name, series in res.items()}
    v, b = over["container"], over["bare"]
    base = "pool thread checking its own deadline"
    p99_target = f"p99 {target}" if target else ""
    if target and percentile(b, 99) > 2e-3:
        note = (note + " " if note else "") + (
            "The bare baseline's p99 also exceeds 2 ms in this run: the machine stalled "
            "threads (noisy neighbours), independently of the container.")
    return [
        Row(f"timeout overshoot, {label}, p50", "ms", percentile(v, 50), percentile(b, 50), base,
            **_ratio_fields(v, b)),
        Row(f"timeout overshoot, {label}, p99", "ms", percentile(v, 99), percentile(b, 99), base,
            ratio=percentile(v, 99) / percentile(b, 99), target=p99_target, note=note,
            met=percentile(v, 99) <= 2e-3 if target else None, profile_fn=invoke),
    ]


# -- 5. ranker end to end --------------------------------------------------------------


def bench_ranker(fx: Fixtures, cfg: Config, scale: int = 1) -> list[Row]:
    """``invoke`` of the ranker sample (input copy, thread hand-off, sandbox, model
    wrapper, result copy) vs the task's own ``main`` in plain Python on a raw, warm
    ORT session; plus the installed program's ``call`` alone, to split the overhead
    into "around the script" and "inside the sandbox".  ``scale`` > 1 repeats the
    example session to make it larger."""
    fx.install("ranker", ranker_model.task_source(), models={"ranker": fx.model_bytes})
    program = fx.container._registry.get("ranker").program
    raw = baselines.RawRanker(fx.model_bytes)
    inputs = workloads.ranker_inputs(scale)
    copied = copy_plain(inputs)
    def invoke() -> Any:
        return fx.container.invoke("ranker", inputs)

    def call() -> Any:
        return program.call(copied, CallScope(60.0))

    _check_agree("ranker", raw=raw(inputs), invoke=invoke(), call=call()[0])
    res = interleave([Case("invoke", invoke), Case("call", call), Case("raw", lambda: raw(inputs))],
                     rounds=cfg.ranker_rounds, inner=cfg.ranker_inner, warmup=5)
    v, c, b = res["invoke"], res["call"], res["raw"]
    what = f"{len(inputs['events'])} events, {len(inputs['candidates'])} candidates"
    base = "task's main on raw ORT"
    return [
        Row(f"ranker end to end ({what})", "ms", v.median, b.median, base,
            profile_fn=invoke, **_ratio_fields(v.rounds, b.rounds)),
        Row(f"ranker, sandboxed call only ({what})", "ms", c.median, b.median, base,
            profile_fn=call, **_ratio_fields(c.rounds, b.rounds)),
    ]


# -- driver ----------------------------------------------------------------------------

BENCHMARKS: list[tuple[str, Callable[[Fixtures, Config], list[Row]]]] = [
    ("invoke overhead", bench_invoke),
    ("sandbox slowdown", bench_sandbox),
    ("install time", bench_install),
    ("timeout overshoot", bench_timeout),
    ("ranker end to end", bench_ranker),
    ("ranker end to end, 20x session", lambda fx, cfg: bench_ranker(fx, cfg, scale=20)),
]


def _target_met(row: Row) -> Row:
    """Ratio targets are judged on the median per-round ratio (absolute ones are set
    where the row is built)."""
    if row.target.startswith("≤") and row.target.endswith("×") and row.met is None:
        row.met = row.ratio is not None and row.ratio <= float(row.target[1:-1])
    return row


def run_all(cfg: Config, *, profile: bool = False) -> tuple[list[Row], str]:
    """Run every benchmark; with ``profile``, also cProfile the missed targets
    (while the fixtures they use are still open)."""
    fx = Fixtures()
    rows: list[Row] = []
    try:
        for title, bench in BENCHMARKS:
            t0 = time.perf_counter()
            try:
                rows += [_target_met(r) for r in bench(fx, cfg)]
            except Exception as exc:  # a product failure must not hide the other figures
                rows.append(_failed_row(title, exc))
            _log(f"  {title}: {time.perf_counter() - t0:.1f} s")
        report = ""
        if profile:
            _log("profiling the missed targets ...")
            report = profile_missed(rows)
    finally:
        fx.close()
    return rows, report


def _failed_row(title: str, exc: Exception) -> Row:
    """A benchmark that raised: the error, with the script's traceback if it has one."""
    where = getattr(exc, "script_traceback", "") or ""
    frames = [line.strip() for line in where.splitlines() if line.strip().startswith("File")]
    error = f"{type(exc).__name__}: {exc}".replace("|", "/").replace("\n", " ")
    _log(f"  {title} FAILED: {error}")
    return Row(title, "ms", None, None, "", error=error,
               note=f"{title} failed: {error}" + (f" (at {frames[-1]})" if frames else ""))


def profile_missed(rows: list[Row], calls: int = 20, top: int = 15) -> str:
    """cProfile of each missed target's variant.  cProfile sees the calling thread
    only: for ``invoke`` the worker thread's share shows up as lock waiting."""
    out = io.StringIO()
    for row in rows:
        if row.met is not False or row.profile_fn is None:
            continue
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(calls):
            row.profile_fn()
        profiler.disable()
        out.write(f"\n### {row.benchmark}: top {top} by own time, {calls} calls\n\n")
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
    return out.getvalue() or "All targets met; nothing to profile.\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (< 60 s)")
    parser.add_argument("--json", metavar="OUT.json", help="also write the rows as JSON")
    parser.add_argument("--markdown", metavar="OUT.md", help="also write the table to a file")
    parser.add_argument("--profile", action="store_true", help="cProfile the variant of missed targets")
    args = parser.parse_args(argv)
    cfg = QUICK if args.quick else FULL

    t0 = time.perf_counter()
    _log(f"running {'quick' if cfg.quick else 'full'} benchmarks ...")
    rows, profile_report = run_all(cfg, profile=args.profile)
    elapsed = time.perf_counter() - t0
    table = markdown(rows, cfg)
    print(table)
    _log(f"done in {elapsed:.1f} s")
    if profile_report:
        print(profile_report)
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as fh:
            fh.write(table)
    if args.json:
        meta = {"python": platform.python_version(), "platform": platform.platform(),
                "quick": cfg.quick, "config": asdict(cfg), "elapsed_s": elapsed,
                "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"meta": meta, "rows": [r.to_json() for r in rows]}, fh, indent=2)
    return 1 if any(r.error for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
