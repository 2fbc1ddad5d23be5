# Image compliance check: runs inside the vmcontainer sandbox.
#
# Scenario: before a seller's image is uploaded (or shown), the app checks it on
# the device, as JD does for product images: a small CNN recognises what the
# image shows, a policy lists the classes that may not be shown, and simple
# numpy checks catch blank, washed-out or blurry images. Here the images are
# 8x8 greyscale digits (scikit-learn's digits data set) and the digit is the
# "content class": the policy forbids some digits.
#
# inputs = {
#     "images": array [N, 8, 8] or [8, 8],   # uint8/int (0..max_value) or float (0..1),
#                                             # or nested lists of numbers
#     "max_value": float,                     # optional: full-scale value (default 255 for
#                                             # integer arrays, 1.0 for float arrays)
#     "forbidden": [int, ...],                # optional: forbidden classes (default [7])
#     "reject_threshold": float,              # optional: P(forbidden class) to reject (0.9)
#     "review_threshold": float,              # optional: P(any forbidden class) to review (0.3)
#     "min_confidence": float,                # optional: top class probability below this -> review (0.6)
# }
#
# returns {
#     "verdicts": [                           # one per image, in input order
#         {"index": int, "verdict": "pass" | "review" | "reject",
#          "reasons": [str, ...],             # codes, see REASONS; empty for "pass"
#          "label": int, "confidence": float, # the model's top class and its probability
#          "forbidden_score": float,          # total probability of the forbidden classes
#          "contrast": float, "sharpness": float},
#         ...
#     ],
#     "counts": {"pass": int, "review": int, "reject": int},
# }
#
# Probabilities and measures are rounded to 6 decimals.

import numpy as np
import vm

SIZE = 8
MAX_IMAGES = 4096
DEFAULT_FORBIDDEN = [7]
DEFAULT_REJECT = 0.9
DEFAULT_REVIEW = 0.3
DEFAULT_MIN_CONFIDENCE = 0.6
BLANK_CONTRAST = 0.02  # (p95 - p5) of a blank or flat image
MIN_CONTRAST = 0.4  # real digits: >= 0.81 for 99.5% of them
MIN_SHARPNESS = 0.2  # var(Laplacian) / contrast^2; real digits >= 0.38, one 3x3 blur <= 0.15

REASONS = {
    "forbidden_content": "a forbidden class, with probability >= reject_threshold",
    "possible_forbidden_content": "forbidden classes together >= review_threshold",
    "low_confidence": "the model is unsure what the image shows",
    "blank": "the image is (nearly) one flat colour",
    "low_contrast": "the image is washed out",
    "blurry": "the image has too little fine detail for its contrast",
}
REJECTING = ("forbidden_content", "blank")


def as_batch(images):
    """The images as an array [N, 8, 8]; a single [8, 8] image becomes a batch of one."""
    arr = np.asarray(images)
    if arr.ndim == 2:
        arr = arr.reshape(1, SIZE, SIZE) if arr.shape == (SIZE, SIZE) else arr
    if arr.ndim != 3 or arr.shape[1:] != (SIZE, SIZE):
        raise ValueError(f"images must have shape [N, {SIZE}, {SIZE}], got {list(arr.shape)}")
    if arr.shape[0] > MAX_IMAGES:
        raise ValueError(f"at most {MAX_IMAGES} images per call, got {arr.shape[0]}")
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"images must be numeric, got dtype {arr.dtype}")
    return arr


def normalise(images, max_value=None):
    """Scale to float32 in [0, 1]: integers by max_value (default 255), floats as they are."""
    if max_value is None:
        max_value = 255.0 if images.dtype.kind in "iu" else 1.0
    if not max_value > 0:
        raise ValueError("max_value must be positive")
    x = images.astype(np.float32) / np.float32(max_value)
    return np.clip(x, 0.0, 1.0)


def quality(x):
    """Per image: contrast (p95 - p5 of the pixels) and sharpness (Laplacian variance / contrast^2)."""
    lo, hi = np.percentile(x, [5.0, 95.0], axis=(1, 2))
    contrast = hi - lo
    lap = x[:, :-2, 1:-1] + x[:, 2:, 1:-1] + x[:, 1:-1, :-2] + x[:, 1:-1, 2:] - 4.0 * x[:, 1:-1, 1:-1]
    sharpness = np.var(lap, axis=(1, 2)) / np.maximum(contrast * contrast, 1e-6)
    return contrast, sharpness


def model_input(x):
    """What the CNN sees: each image stretched to its own [min, max], shaped [N, 1, 8, 8].

    Stretching makes the class prediction independent of exposure; exposure
    problems are reported by the quality checks instead.
    """
    lo = x.min(axis=(1, 2), keepdims=True)
    span = x.max(axis=(1, 2), keepdims=True) - lo
    stretched = np.where(span > 1e-6, (x - lo) / np.maximum(span, 1e-6), 0.0)
    return stretched.astype(np.float32).reshape(x.shape[0], 1, SIZE, SIZE)


def reasons_for(probs, contrast, sharpness, policy):
    reasons = []
    forbidden = policy["forbidden"]
    label = int(np.argmax(probs))
    forbidden_score = float(sum(probs[c] for c in forbidden))
    if label in forbidden and probs[label] >= policy["reject_threshold"]:
        reasons.append("forbidden_content")
    elif forbidden_score >= policy["review_threshold"]:
        reasons.append("possible_forbidden_content")
    if probs[label] < policy["min_confidence"]:
        reasons.append("low_confidence")
    if contrast < BLANK_CONTRAST:
        reasons.append("blank")
    elif contrast < MIN_CONTRAST:
        reasons.append("low_contrast")
    if contrast >= BLANK_CONTRAST and sharpness < MIN_SHARPNESS:
        reasons.append("blurry")
    return label, forbidden_score, reasons


def read_policy(inputs):
    forbidden = sorted({int(c) for c in inputs.get("forbidden", DEFAULT_FORBIDDEN)})
    if any(c < 0 or c > 9 for c in forbidden):
        raise ValueError(f"forbidden classes must be digits 0-9, got {forbidden}")
    return {
        "forbidden": forbidden,
        "reject_threshold": float(inputs.get("reject_threshold", DEFAULT_REJECT)),
        "review_threshold": float(inputs.get("review_threshold", DEFAULT_REVIEW)),
        "min_confidence": float(inputs.get("min_confidence", DEFAULT_MIN_CONFIDENCE)),
    }


def main(inputs):
    policy = read_policy(inputs)
    images = as_batch(inputs["images"])
    counts = {"pass": 0, "review": 0, "reject": 0}
    if images.shape[0] == 0:
        return {"verdicts": [], "counts": counts}

    x = normalise(images, inputs.get("max_value"))
    contrast, sharpness = quality(x)
    probs = vm.model("digits").run({"images": model_input(x)})["probs"].astype(np.float64)

    verdicts = []
    for i in range(images.shape[0]):
        label, score, reasons = reasons_for(probs[i], contrast[i], sharpness[i], policy)
        if any(r in REJECTING for r in reasons):
            verdict = "reject"
        else:
            verdict = "review" if reasons else "pass"
        counts[verdict] += 1
        verdicts.append({
            "index": i,
            "verdict": verdict,
            "reasons": reasons,
            "label": label,
            "confidence": round(float(probs[i][label]), 6),
            "forbidden_score": round(score, 6),
            "contrast": round(float(contrast[i]), 6),
            "sharpness": round(float(sharpness[i]), 6),
        })
    return {"verdicts": verdicts, "counts": counts}
