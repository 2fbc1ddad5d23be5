"""The ranker sample runs in the real sandbox and matches the unsandboxed reference."""

from __future__ import annotations

import json

import pytest

from sample_tasks.ranker import model as ranker
from vmcontainer.testing import run_script


@pytest.fixture(scope="module")
def model_bytes(tmp_path_factory):
    return ranker.build_ranker_model(tmp_path_factory.mktemp("m") / "ranker.onnx")


def test_sandboxed_ranker_matches_reference(model_bytes):
    inputs = json.loads(ranker.EXAMPLE_INPUTS_PATH.read_text())
    got = run_script(ranker.TASK_PATH, inputs, models={"ranker": model_bytes})
    expected = ranker.reference_rank(inputs, model_bytes)
    assert got == expected
    assert len(got["ranking"]) == inputs["top_k"]
    assert got["scores"] == sorted(got["scores"], reverse=True)


def test_ranker_edge_cases(model_bytes):
    empty = run_script(ranker.TASK_PATH, {"events": [], "candidates": [], "now": 0},
                       models={"ranker": model_bytes})
    assert empty == {"ranking": [], "scores": [], "features_used": ranker.N_FEATURES}
