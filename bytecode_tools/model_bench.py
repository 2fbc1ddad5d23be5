"""``vmtool bench-model``: latency, size and accuracy drift of a model, as a device runs it.

Sessions get the default ``DeviceProfile``'s options (one intra-op thread, no
spinning), so figures are comparable with what ``vm.model().run`` sees.
Latency is measured with a reused ``RunOptions`` (what the container does) at
batch 1 and batch N, reported as p50/p99 over many runs.  Accuracy drift
compares every output against a reference model - typically the float model a
quantized one came from - on given inputs (``.npz`` keyed by input name,
samples along axis 0) or on seeded random ones.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from vmcontainer.errors import ModelError
from vmcontainer.inference.profile import DeviceProfile
from vmcontainer.inference.signature import Signature, TensorSpec

from .models import check_model


@dataclass
class BenchReport:
    path: str
    size: int
    device_check: str
    batch: int
    latency_us: dict[int, dict[str, float]] = field(default_factory=dict)  # batch -> p50/p99
    reference: str | None = None
    reference_size: int | None = None
    drift: dict[str, dict[str, float]] = field(default_factory=dict)  # output -> stats
    inputs_from: str = "random"

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "size": self.size, "device_check": self.device_check,
                "batch": self.batch, "latency_us": {str(k): v for k, v in self.latency_us.items()},
                "reference": self.reference, "reference_size": self.reference_size,
                "drift": self.drift, "inputs_from": self.inputs_from}

    def markdown(self) -> str:
        lines = [f"model `{self.path}`: {self.size:,} bytes"
                 + (f" (reference {self.reference_size:,} bytes, "
                    f"{self.size / self.reference_size:.2f}x)" if self.reference_size else ""),
                 f"device check: {self.device_check}", "",
                 "| batch | p50 (us) | p99 (us) | per row p50 (us) |", "|---|---|---|---|"]
        for b, stats in sorted(self.latency_us.items()):
            lines.append(f"| {b} | {stats['p50']:.1f} | {stats['p99']:.1f} | "
                         f"{stats['p50'] / b:.2f} |")
        if self.drift:
            lines += ["", f"accuracy drift vs `{self.reference}` ({self.inputs_from} inputs):", "",
                      "| output | max abs | mean abs | rel L2 | top-1 agreement |",
                      "|---|---|---|---|---|"]
            for name, d in self.drift.items():
                top1 = "-" if d["top1_agreement"] is None else f"{d['top1_agreement']:.4f}"
                lines.append(f"| {name} | {d['max_abs']:.3g} | {d['mean_abs']:.3g} | "
                             f"{d['rel_l2']:.3g} | {top1} |")
        return "\n".join(lines)


def _session(blob: bytes) -> ort.InferenceSession:
    profile = DeviceProfile(memory_limit_mb=None)
    try:
        return ort.InferenceSession(blob, sess_options=profile.session_options(),
                                    providers=profile.available_providers())
    except Exception as exc:
        raise ModelError(f"model does not load: {str(exc)[:300]}") from None


def random_feeds(specs: tuple[TensorSpec, ...], rows: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded inputs: first dynamic axis = ``rows``, other dynamic axes = 1."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in specs:
        shape = tuple(d if type(d) is int else (rows if axis == 0 else 1)
                      for axis, d in enumerate(spec.shape))
        kind = spec.dtype.kind
        if kind == "f":
            feeds[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
        elif kind == "b":
            feeds[spec.name] = rng.random(shape) < 0.5
        else:
            feeds[spec.name] = rng.integers(0, 10, shape).astype(spec.dtype)
    return feeds


def load_inputs(path: str | Path, specs: tuple[TensorSpec, ...]) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        missing = sorted({s.name for s in specs} - set(data.files))
        if missing:
            raise ModelError(f"{Path(path).name} has no arrays for inputs {missing}")
        feeds = {s.name: data[s.name] for s in specs}
    for spec in specs:
        if feeds[spec.name].dtype != spec.dtype:
            feeds[spec.name] = feeds[spec.name].astype(spec.dtype)
    return feeds


def _rows(feeds: dict[str, np.ndarray], start: int, stop: int) -> dict[str, np.ndarray]:
    n = next(iter(feeds.values())).shape[0]
    idx = np.arange(start, stop) % n  # wrap if there are fewer samples than rows asked for
    return {k: v[idx] for k, v in feeds.items()}


def latency(session: ort.InferenceSession, feeds: dict[str, np.ndarray], *, runs: int,
            budget_s: float = 5.0) -> dict[str, float]:
    names = [o.name for o in session.get_outputs()]
    ro = ort.RunOptions()
    for _ in range(min(20, runs)):
        session.run(names, feeds, ro)
    samples = []
    clock = time.perf_counter
    stop = clock() + budget_s
    for _ in range(runs):
        t0 = clock()
        session.run(names, feeds, ro)
        samples.append(clock() - t0)
        if t0 > stop:
            break
    samples.sort()

    def pick(q: float) -> float:
        return samples[min(len(samples) - 1, int(q * len(samples)))]

    return {"p50": pick(0.50) * 1e6, "p99": pick(0.99) * 1e6, "runs": float(len(samples))}


def drift(model: ort.InferenceSession, reference: ort.InferenceSession,
          feeds: dict[str, np.ndarray], batch: int) -> dict[str, dict[str, Any]]:
    """Per output: max/mean absolute difference, relative L2 error, top-1 agreement."""
    names = [o.name for o in reference.get_outputs()]
    have = {o.name for o in model.get_outputs()}
    missing = sorted(set(names) - have)
    if missing:
        raise ModelError(f"the model lacks the reference's outputs {missing}")
    n = next(iter(feeds.values())).shape[0]
    got: dict[str, list[np.ndarray]] = {k: [] for k in names}
    want: dict[str, list[np.ndarray]] = {k: [] for k in names}
    for start in range(0, n, batch):
        chunk = _rows(feeds, start, min(n, start + batch))
        for k, v in zip(names, model.run(names, chunk)):
            got[k].append(np.asarray(v, dtype=np.float64))
        for k, v in zip(names, reference.run(names, chunk)):
            want[k].append(np.asarray(v, dtype=np.float64))
    out = {}
    for k in names:
        a, b = np.concatenate(got[k]), np.concatenate(want[k])
        diff = np.abs(a - b)
        norm = float(np.linalg.norm(b)) or 1.0
        top1 = None
        if a.ndim >= 2 and a.shape[-1] > 1:
            top1 = float(np.mean(a.argmax(-1) == b.argmax(-1)))
        out[k] = {"max_abs": float(diff.max(initial=0.0)), "mean_abs": float(diff.mean()),
                  "rel_l2": float(np.linalg.norm(a - b)) / norm, "top1_agreement": top1}
    return out


def bench(path: str | Path, *, batch: int = 32, inputs: str | Path | None = None,
          reference: str | Path | None = None, runs: int = 2000, samples: int = 256,
          seed: int = 0) -> BenchReport:
    path = Path(path)
    blob = path.read_bytes()
    try:
        check_model("bench", blob)
        device_check = "ok"
    except ModelError as exc:
        device_check = f"REFUSED: {exc}"
    session = _session(blob)
    specs = Signature.of_session(session).inputs
    dynamic = all(s.shape and type(s.shape[0]) is not int for s in specs)
    if inputs is not None:
        feeds, source = load_inputs(inputs, specs), Path(inputs).name
    else:
        feeds, source = random_feeds(specs, samples if dynamic else 1, seed), "random"
    report = BenchReport(str(path.name), len(blob), device_check, batch, inputs_from=source)
    sizes = (1, batch) if dynamic and batch > 1 else (1,)
    for b in sizes:
        report.latency_us[b] = latency(session, _rows(feeds, 0, b) if dynamic else feeds,
                                       runs=runs)
    if reference is not None:
        ref_blob = Path(reference).read_bytes()
        report.reference = Path(reference).name
        report.reference_size = len(ref_blob)
        report.drift = drift(session, _session(ref_blob), feeds, batch if dynamic else 1)
    return report
