"""The image_check sample runs in the real sandbox (through the pytest plugin's ``run_task``),
matches the unsandboxed reference, and its CNN and checks are accurate on held-out digits.

Needs scikit-learn (the ``samples`` extra) for the digits data; skipped without it.
"""

from __future__ import annotations

import importlib.metadata
import json
import os

import numpy as np
import pytest

from sample_tasks.image_check import model as digits  # imports scikit-learn only when used
from vmcontainer.errors import TaskError

pytest.importorskip("sklearn")

# The plugin is normally loaded through its pytest11 entry point; a checkout that has not
# been re-installed since the entry point was added loads it here (never twice: pytest
# refuses a plugin registered under two names).
if os.environ.get("PYTEST_DISABLE_PLUGIN_AUTOLOAD") or not any(
    ep.value == "vmcontainer.pytest_plugin"
    for ep in importlib.metadata.entry_points(group="pytest11")
):
    pytest_plugins = ["vmcontainer.pytest_plugin"]


@pytest.fixture(scope="module")
def model_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return digits.build_digits_model(tmp_path_factory.mktemp("m") / "digits.onnx")


@pytest.fixture(scope="module")
def check(run_task, model_bytes):
    def run(inputs: dict) -> dict:
        return run_task(digits.TASK_PATH, inputs, models={"digits": model_bytes}, timeout=1.0)

    return run


@pytest.fixture(scope="module")
def held_out() -> tuple[np.ndarray, np.ndarray]:
    """The test split as a camera would send it: uint8, 0..255."""
    _, _, images, labels = digits.load_split(0)
    return np.rint(images * (255 / 16)).astype(np.uint8), labels


def verdicts(out: dict) -> list[str]:
    return [v["verdict"] for v in out["verdicts"]]


def test_example_matches_reference(check, model_bytes):
    inputs = json.loads(digits.EXAMPLE_INPUTS_PATH.read_text())
    assert inputs == digits.make_example_inputs()
    got = check(inputs)
    assert got == digits.reference_check(inputs, model_bytes)
    v = got["verdicts"]
    assert [x["label"] for x in v[:10]] == list(range(10))
    assert verdicts(got)[:10] == ["pass"] * 7 + ["reject"] + ["pass"] * 2
    assert v[7]["reasons"] == ["forbidden_content"]
    assert "blurry" in v[10]["reasons"] and v[10]["verdict"] == "review"
    assert "low_contrast" in v[11]["reasons"] and v[11]["verdict"] == "review"
    assert "blank" in v[12]["reasons"] and v[12]["verdict"] == "reject"
    assert got["counts"] == {"pass": 9, "review": 2, "reject": 2}


def test_model_accuracy_through_the_sandbox(check, model_bytes, held_out):
    images, labels = held_out
    out = check({"images": images, "forbidden": []})
    predicted = np.array([v["label"] for v in out["verdicts"]])
    accuracy = float(np.mean(predicted == labels))
    assert accuracy >= 0.95
    meta = digits.model_metadata(model_bytes)
    assert abs(accuracy - float(meta["test_accuracy"])) <= 2 / len(labels)
    # float32 images in [0, 1] are read as they are, and give the same answers
    floats = check({"images": (images / np.float32(255)).astype(np.float32), "forbidden": []})
    assert [v["label"] for v in floats["verdicts"]] == predicted.tolist()


def test_forbidden_policy(check, held_out):
    images, labels = held_out
    out = check({"images": images, "forbidden": [4, 7]})
    got = np.array(verdicts(out))
    forbidden = np.isin(labels, [4, 7])
    assert np.mean(got[forbidden] != "pass") >= 0.95  # caught: rejected or sent to review
    assert np.mean(got[forbidden] == "reject") >= 0.85
    assert np.mean(got[~forbidden] == "reject") <= 0.01  # almost no allowed image refused
    assert np.mean(got[~forbidden] == "pass") >= 0.9


def test_quality_checks(check, held_out):
    images, _ = held_out
    sharp = check({"images": images, "forbidden": []})["verdicts"]
    flagged = [v for v in sharp if {"blurry", "low_contrast", "blank"} & set(v["reasons"])]
    assert len(flagged) <= 0.01 * len(images)

    blurred = np.stack([digits.blurred(im) for im in images]).astype(np.float32) / 255
    reasons = [v["reasons"] for v in check({"images": blurred})["verdicts"]]
    assert np.mean(["blurry" in r for r in reasons]) >= 0.95

    washed = (100 + images // 4).astype(np.uint8)  # 100..163 of 255
    reasons = [v["reasons"] for v in check({"images": washed})["verdicts"]]
    assert all("low_contrast" in r and "blurry" not in r for r in reasons)

    flat = check({"images": np.full((2, 8, 8), 128, dtype=np.uint8)})
    assert verdicts(flat) == ["reject", "reject"]
    assert all("blank" in v["reasons"] for v in flat["verdicts"])


def test_shapes_and_bad_inputs(check, held_out):
    images, labels = held_out
    one = check({"images": images[0]})  # a single [8, 8] image
    assert len(one["verdicts"]) == 1 and one["verdicts"][0]["label"] == labels[0]
    assert check({"images": np.zeros((0, 8, 8), dtype=np.uint8)}) == {
        "verdicts": [], "counts": {"pass": 0, "review": 0, "reject": 0}}
    with pytest.raises(TaskError, match=r"shape \[N, 8, 8\], got \[3, 9, 9\]") as err:
        check({"images": np.zeros((3, 9, 9), dtype=np.uint8)})
    assert err.value.exc_type == "ValueError"
    assert 'File "task.py", line' in str(err.value)  # the plugin shows the script traceback
    with pytest.raises(TaskError, match="digits 0-9"):
        check({"images": images[:2], "forbidden": [12]})
