"""Micro-batching: merged runs give each caller exactly its own rows; deadlines stay per caller."""

from __future__ import annotations

import time

import numpy as np
import pytest

from tests.inference import zoo
from vmcontainer import DeviceProfile, ModelError, TaskCancelled, TaskTimeout
from vmcontainer.testing import build_test_bundle, test_container

RANK = """
import vm
import numpy as np
def main(inputs):
    m = vm.model("ranker")
    rng = np.random.default_rng(inputs["seed"])
    out = []
    for i in range(inputs["runs"]):
        x = rng.standard_normal((inputs["rows"], 8)).astype(np.float32)
        out.append(m.run({"features": x})["scores"])
    return np.concatenate(out)
"""

SLOW = """
import vm
import numpy as np
def main(inputs):
    return vm.model("slow").run({"x": np.ones((1, 64), dtype=np.float32),
                                 "trips": np.array([inputs], dtype=np.int64)})["y"]
"""


def _expected(blob: bytes, seed: int, runs: int, rows: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    xs = [rng.standard_normal((rows, 8)).astype(np.float32) for _ in range(runs)]
    return zoo.mlp_reference(blob, np.concatenate(xs))


def _model(box, name):
    return next(m for m in box._hub._models.values() if m.name == name)


def test_concurrent_runs_are_merged_and_split_back_exactly():
    blob = zoo.mlp(seed=3)
    profile = DeviceProfile(micro_batch={"ranker": {"window_ms": 5, "max_batch": 16}})
    with test_container(workers=4, profile=profile) as box:
        box.install(build_test_bundle(RANK, name="rank", models={"ranker": blob}))
        calls = [(seed, 60, rows) for seed, rows in ((1, 50), (2, 7), (3, 1), (4, 50))]
        futures = [box.submit("rank", {"seed": s, "runs": n, "rows": r}) for s, n, r in calls]
        for fut, (seed, runs, rows) in zip(futures, calls):
            np.testing.assert_allclose(fut.result(timeout=30), _expected(blob, seed, runs, rows),
                                       rtol=1e-4, atol=1e-6)
        batcher = _model(box, "ranker").batcher
        assert batcher.requests == sum(c[1] for c in calls)  # every run went through it


def _slow_box():
    """One run slot and a 100 ms window: a run in flight makes the next callers queue."""
    profile = DeviceProfile(micro_batch={"slow": {"window_ms": 100, "max_batch": 8}})
    box = test_container(workers=3, profile=profile)
    box.install(build_test_bundle(SLOW, name="slow", models={"slow": zoo.slow_batched()}))
    return box, _model(box, "slow").batcher


def test_a_caller_whose_deadline_passes_while_queued_times_out_alone():
    box, batcher = _slow_box()
    with box:
        blocker = box.submit("slow", 10**15, timeout=0.4)  # holds the only run slot
        time.sleep(0.03)
        start = time.monotonic()
        with pytest.raises(TaskTimeout):
            box.invoke("slow", 1, timeout=0.05)
        assert time.monotonic() - start < 0.09  # its own deadline, not the blocker's
        assert not [r for r in batcher._queue if not r.gone]  # and out of the queue
        with pytest.raises(TaskTimeout):
            blocker.result(timeout=5)
        assert box.invoke("slow", 1, timeout=2).shape == (1, 64)  # the model serves on


def test_a_leaders_deadline_ends_the_merged_run_and_the_others_rerun():
    box, batcher = _slow_box()
    with box:
        blocker = box.submit("slow", 10**15, timeout=0.15)
        time.sleep(0.02)
        runaway = box.submit("slow", 10**15, timeout=0.45)
        time.sleep(0.02)
        start = time.monotonic()
        patient = box.submit("slow", 1, timeout=3)
        # At 0.12 s the runaway's window ends: it leads a run merged with the patient
        # caller (max trips: 10**15); at 0.45 s its deadline terminates that run.
        for fut in (blocker, runaway):
            with pytest.raises(TaskTimeout):
                fut.result(timeout=5)
        assert patient.result(timeout=5).shape == (1, 64)  # queued again, led its own run
        assert batcher.requeued == 1
        assert time.monotonic() - start < 1.0


def test_requests_queued_behind_a_busy_model_run_as_one_and_split_back():
    src = """
import vm
import numpy as np
def main(inputs):
    x = np.full((inputs["rows"], 64), inputs["scale"], dtype=np.float32)
    trips = np.full((inputs["rows"],), inputs["trips"], dtype=np.int64)
    return vm.model("slow").run({"x": x, "trips": trips})["y"]
"""
    profile = DeviceProfile(micro_batch={"slow": {"window_ms": 100, "max_batch": 8}})
    with test_container(workers=4, profile=profile) as box:
        box.install(build_test_bundle(src, name="scaled", models={"slow": zoo.slow_batched()}))
        batcher = _model(box, "slow").batcher
        blocker = box.submit("scaled", {"rows": 1, "scale": 1.0, "trips": 10**15}, timeout=0.08)
        time.sleep(0.02)
        queued = [box.submit("scaled", {"rows": rows, "scale": float(rows), "trips": 1})
                  for rows in (1, 2, 3)]
        with pytest.raises(TaskTimeout):
            blocker.result(timeout=5)
        for rows, fut in zip((1, 2, 3), queued):
            out = fut.result(timeout=5)
            assert out.shape == (rows, 64)
            np.testing.assert_allclose(out, np.full((rows, 64), rows * 0.999), rtol=1e-5)
        assert (batcher.runs, batcher.requests) == (2, 4)  # the blocker, then one merged run


def test_cancelling_a_queued_caller_wakes_it():
    box, _ = _slow_box()
    with box:
        blocker = box.submit("slow", 10**15, timeout=0.4)
        time.sleep(0.03)
        waiting = box.submit("slow", 1, timeout=5)
        time.sleep(0.02)
        start = time.monotonic()
        assert waiting.cancel()
        with pytest.raises(TaskCancelled):
            waiting.result(timeout=5)
        assert time.monotonic() - start < 0.06
        with pytest.raises(TaskTimeout):
            blocker.result(timeout=5)


def test_micro_batching_needs_a_dynamic_batch_axis():
    profile = DeviceProfile(micro_batch={"fixed": {"window_ms": 2, "max_batch": 8}})
    with test_container(workers=1, profile=profile) as box, \
            pytest.raises(ModelError, match="needs a dynamic first axis"):
        box.install(build_test_bundle("def main(i):\n    return 1\n", name="f",
                                      models={"fixed": zoo.mlp(batch=1)}))


def test_model_bundle_can_ask_for_micro_batching():
    blob = zoo.mlp(seed=4)
    with test_container(workers=2) as box:
        box.install(zoo.model_bundle("ranker", blob, 1,
                                     micro_batch={"window_ms": 1, "max_batch": 4}))
        from bytecode_tools.models import pin_ref

        box.install(build_test_bundle(RANK, name="rank",
                                      model_refs={"ranker": pin_ref("ranker", blob)}))
        out = box.invoke("rank", {"seed": 5, "runs": 3, "rows": 2})
        np.testing.assert_allclose(out, _expected(blob, 5, 3, 2), rtol=1e-4, atol=1e-6)
        assert _model(box, "ranker").batcher.requests == 3
