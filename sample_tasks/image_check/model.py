"""Host-side tooling for the ``image_check`` sample: data, CNN training, ONNX export, reference.

Not run inside the sandbox.  It trains the small CNN that ``task.py`` calls as
``vm.model("digits")`` on scikit-learn's 8x8 digits (1797 real scanned
handwritten digits that ship *inside* the scikit-learn package - nothing is
downloaded; install with ``pip install -e ".[samples]"``), and offers
``reference_check`` so tests can compare the sandboxed task with an unsandboxed
run of the very same code.

The network (NCHW, float32)::

    images [N,1,8,8] -> Conv 3x3 (8) -> Relu -> MaxPool 2x2 -> Conv 3x3 (16) -> Relu
                     -> Flatten [N,256] -> Gemm (10) -> Softmax -> probs [N,10]

It is trained in plain numpy (im2col convolutions, hand-written backward pass,
Adam, 1-pixel random shifts as augmentation) in about a second on 2 cores.
Preprocessing is **not** re-implemented here: the training images go through
``task.py``'s own ``normalise`` and ``model_input``, so the model is trained on
exactly what the device feeds it.

Usage::

    python -m sample_tasks.image_check.model digits.onnx [SEED]   # writes the model, prints accuracy
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from sample_tasks import training
from sample_tasks.training import OPSET, model_cli, single_threaded_blas
from sample_tasks.training import model_metadata as model_metadata  # re-exported for callers

TASK_PATH = Path(__file__).with_name("task.py")
EXAMPLE_INPUTS_PATH = Path(__file__).with_name("example_inputs.json")
MODEL_NAME = "digits"
INPUT_NAME = "images"
OUTPUT_NAME = "probs"
CHANNELS = (8, 16)
TEST_FRACTION = 0.25
EPOCHS = 8
BATCH = 128
LR = 1e-2  # decays linearly to LR / 10 over the run

Params = dict[str, np.ndarray]


# --------------------------------------------------------------------------- data


def load_split(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's digits, shuffled by ``seed`` and split into train / held-out test.

    Returns raw images (float64 [n, 8, 8], values 0..16) and labels (int [n]):
    ``(train_images, train_labels, test_images, test_labels)``.
    """
    from sklearn.datasets import load_digits  # the samples extra; ships its data

    digits = load_digits()
    order = np.random.default_rng(seed).permutation(len(digits.target))
    n_test = round(len(order) * TEST_FRACTION)
    test, train = order[:n_test], order[n_test:]
    return digits.images[train], digits.target[train], digits.images[test], digits.target[test]


def device_input(raw_images: np.ndarray, max_value: float = 16.0) -> np.ndarray:
    """Raw images -> the model input [n, 1, 8, 8] float32, with task.py's own preprocessing."""
    task = load_task(training.VmShim({}))
    return task["model_input"](task["normalise"](task["as_batch"](raw_images), max_value))


def shifted(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each image moved by -1..1 pixels in each direction (zero fill): cheap augmentation."""
    n, _, h, w = x.shape
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    dy, dx = rng.integers(0, 3, n), rng.integers(0, 3, n)
    return np.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])


# --------------------------------------------------------------------------- the network in numpy


def _im2col(x: np.ndarray) -> np.ndarray:
    """[N,C,H,W] -> [N*H*W, C*9]: every 3x3 neighbourhood (zero padded) as a row."""
    n, c, h, w = x.shape
    windows = sliding_window_view(np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1))), (3, 3),
                                  axis=(2, 3))
    return windows.transpose(0, 2, 3, 1, 4, 5).reshape(n * h * w, c * 9)


def _col2im(dcols: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    n, c, h, w = shape
    d = dcols.reshape(n, h, w, c, 3, 3).transpose(0, 3, 1, 2, 4, 5)
    dx = np.zeros((n, c, h + 2, w + 2))
    for i in range(3):
        for j in range(3):
            dx[:, :, i:i + h, j:j + w] += d[..., i, j]
    return dx[:, :, 1:-1, 1:-1]


def _conv(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """3x3 convolution, stride 1, padding 1 (ONNX Conv semantics: cross-correlation)."""
    n, _, h, wd = x.shape
    cols = _im2col(x)
    out = cols @ w.reshape(w.shape[0], -1).T + b
    return out.reshape(n, h, wd, -1).transpose(0, 3, 1, 2), cols


def _conv_backward(dout: np.ndarray, cols: np.ndarray, x_shape: tuple[int, ...],
                   w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    d = dout.transpose(0, 2, 3, 1).reshape(-1, dout.shape[1])
    dcols = d @ w.reshape(w.shape[0], -1)
    return _col2im(dcols, x_shape), (d.T @ cols).reshape(w.shape), d.sum(axis=0)


def _maxpool(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n, c, h, w = x.shape
    blocks = x.reshape(n, c, h // 2, 2, w // 2, 2)
    out = blocks.max(axis=(3, 5))
    return out, blocks == out[:, :, :, None, :, None]


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def forward(p: Params, x: np.ndarray) -> tuple[np.ndarray, tuple]:
    """Logits [N, 10] and what the backward pass needs."""
    a1, cols1 = _conv(x, p["W1"], p["b1"])
    pooled, mask = _maxpool(np.maximum(a1, 0.0))
    a2, cols2 = _conv(pooled, p["W2"], p["b2"])
    flat = np.maximum(a2, 0.0).reshape(len(x), -1)
    return flat @ p["W3"] + p["b3"], (x, a1, cols1, mask, pooled, a2, cols2, flat)


def predict_numpy(p: Params, x: np.ndarray) -> np.ndarray:
    """Class probabilities [N, 10] (the same maths as the ONNX graph)."""
    return _softmax(forward(p, x)[0])


def _gradients(p: Params, x: np.ndarray, y: np.ndarray) -> Params:
    logits, (x, a1, cols1, mask, pooled, a2, cols2, flat) = forward(p, x)
    dz = _softmax(logits)
    dz[np.arange(len(y)), y] -= 1.0
    dz /= len(y)
    g = {"W3": flat.T @ dz, "b3": dz.sum(axis=0)}
    da2 = (dz @ p["W3"].T).reshape(a2.shape) * (a2 > 0)
    dpooled, g["W2"], g["b2"] = _conv_backward(da2, cols2, pooled.shape, p["W2"])
    n, c, h, w = dpooled.shape
    da1 = (mask * dpooled[:, :, :, None, :, None]).reshape(n, c, 2 * h, 2 * w) * (a1 > 0)
    _, g["W1"], g["b1"] = _conv_backward(da1, cols1, x.shape, p["W1"])
    return g


def train_cnn(x: np.ndarray, y: np.ndarray, *, epochs: int = EPOCHS, seed: int = 0) -> Params:
    """Mini-batch Adam on cross-entropy with a linearly decaying learning rate; each
    epoch sees the images and a freshly shifted copy of them.

    ``x`` is the model input [n, 1, 8, 8]; deterministic for a given ``seed``
    (on one numpy/BLAS build).  Returns float32 ONNX-layout weights.
    """
    rng = np.random.default_rng(seed)
    c1, c2 = CHANNELS
    p = {
        "W1": rng.normal(0.0, np.sqrt(2.0 / 9), (c1, 1, 3, 3)), "b1": np.zeros(c1),
        "W2": rng.normal(0.0, np.sqrt(2.0 / (9 * c1)), (c2, c1, 3, 3)), "b2": np.zeros(c2),
        "W3": rng.normal(0.0, np.sqrt(1.0 / (16 * c2)), (16 * c2, 10)), "b3": np.zeros(10),
    }
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(w) for k, w in p.items()}
    x = np.asarray(x, dtype=np.float64)
    step, total = 0, epochs * -(-2 * len(x) // BATCH)
    with single_threaded_blas():
        for _ in range(epochs):
            xs = np.concatenate([x, shifted(x, rng)])
            ys = np.concatenate([y, y])
            order = rng.permutation(len(xs))
            for start in range(0, len(xs), BATCH):
                batch = order[start:start + BATCH]
                step += 1
                lr = LR * (1.0 - 0.9 * step / total)
                for k, g in _gradients(p, xs[batch], ys[batch]).items():
                    m[k] = 0.9 * m[k] + 0.1 * g
                    v[k] = 0.999 * v[k] + 0.001 * g * g
                    p[k] -= lr * (m[k] / (1 - 0.9**step)) / (np.sqrt(v[k] / (1 - 0.999**step)) + 1e-8)
    return {k: np.ascontiguousarray(w, dtype=np.float32) for k, w in p.items()}


def train_and_evaluate(seed: int = 0) -> tuple[Params, dict[str, float]]:
    """Split, train, and return (weights, metrics): ``test_accuracy``, ``train_accuracy``,
    ``n_train`` and ``n_test``."""
    xtr, ytr, xte, yte = load_split(seed)
    weights = train_cnn(device_input(xtr), ytr, seed=seed)
    pred_te = predict_numpy(weights, device_input(xte)).argmax(axis=1)
    pred_tr = predict_numpy(weights, device_input(xtr)).argmax(axis=1)
    return weights, {
        "test_accuracy": float(np.mean(pred_te == yte)),
        "train_accuracy": float(np.mean(pred_tr == ytr)),
        "n_train": float(len(ytr)),
        "n_test": float(len(yte)),
    }


# --------------------------------------------------------------------------- ONNX


def export_onnx(weights: Params, path: str | Path | None,
                metadata: dict[str, str] | None = None) -> bytes:
    """Write the CNN as ONNX (opset 17, IR 9) and return the bytes; same weights, same bytes.

    Input ``images`` float32 [N, 1, 8, 8] (dynamic ``N``), output ``probs``
    float32 [N, 10].  Checked with ``onnx.checker``.
    """
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(np.asarray(weights[k], dtype=np.float32), k)
             for k in ("W1", "b1", "W2", "b2", "W3", "b3")]
    conv = {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "strides": [1, 1]}
    nodes = [
        helper.make_node("Conv", [INPUT_NAME, "W1", "b1"], ["conv1"], name="conv1", **conv),
        helper.make_node("Relu", ["conv1"], ["relu1"], name="relu1"),
        helper.make_node("MaxPool", ["relu1"], ["pool1"], name="pool1", kernel_shape=[2, 2],
                         strides=[2, 2]),
        helper.make_node("Conv", ["pool1", "W2", "b2"], ["conv2"], name="conv2", **conv),
        helper.make_node("Relu", ["conv2"], ["relu2"], name="relu2"),
        helper.make_node("Flatten", ["relu2"], ["flat"], name="flatten", axis=1),
        helper.make_node("Gemm", ["flat", "W3", "b3"], ["logits"], name="dense"),
        helper.make_node("Softmax", ["logits"], [OUTPUT_NAME], name="softmax", axis=1),
    ]
    graph = helper.make_graph(
        nodes, "digits_cnn",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N", 10])],
        initializer=inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="vmcontainer.sample_tasks.image_check", producer_version="1",
        doc_string="8x8 digit classifier: images [N,1,8,8] in [0,1] -> class probabilities [N,10]",
    )
    return training.finish_onnx(model, path, metadata or {})


def _metadata(seed: int, metrics: dict[str, float]) -> dict[str, str]:
    return {"seed": str(seed), "test_accuracy": f"{metrics['test_accuracy']:.4f}",
            "train_accuracy": f"{metrics['train_accuracy']:.4f}",
            "dataset": "sklearn.datasets.load_digits"}


def build_digits_model(path: str | Path | None, seed: int = 0) -> bytes:
    """Load the digits, train, export: write the ONNX model to ``path`` (or not), return the bytes.

    About 1-2 s on 2 cores.  The held-out accuracy is in the metadata
    (``test_accuracy``; read it with ``model_metadata``).
    """
    weights, metrics = train_and_evaluate(seed)
    return export_onnx(weights, path, metadata=_metadata(seed, metrics))


# --------------------------------------------------------------------------- reference


def load_task(vm_module: Any) -> dict[str, Any]:
    """Exec ``task.py`` unsandboxed, ``import vm`` resolving to ``vm_module``; return its globals.

    See ``sample_tasks.training.load_task``.
    """
    return training.load_task(TASK_PATH, vm_module, "image_check_task")


def reference_check(inputs: dict, model_bytes: bytes) -> dict:
    """``task.py``'s ``main(inputs)`` outside the sandbox, on a raw onnxruntime session.

    One implementation: it execs the task's own source, so comparing it with the
    container's result checks that the sandbox changes nothing.
    """
    return load_task(training.VmShim({MODEL_NAME: model_bytes}))["main"](inputs)


# --------------------------------------------------------------------------- examples


def blurred(image: np.ndarray) -> np.ndarray:
    """A 3x3 box blur (edges repeated): what a shaky camera does to an 8x8 digit."""
    h, w = image.shape
    padded = np.pad(np.asarray(image, dtype=np.float64), 1, mode="edge")
    return sum(padded[i:i + h, j:j + w] for i in range(3) for j in range(3)) / 9.0


def make_example_inputs() -> dict:
    """The checked-in ``example_inputs.json``: held-out digits 0-9 plus three bad images.

    Pixel values 0..16 as in the data set (so ``max_value`` is 16); index 10 is
    a blurred digit, 11 a washed-out one, 12 a blank one.
    """
    _, _, xte, yte = load_split(0)
    images = [xte[int(np.flatnonzero(yte == d)[0])] for d in range(10)]
    images += [blurred(images[3]), 6.0 + 0.25 * images[5], np.full((8, 8), 9.0)]
    return {
        "max_value": 16,
        "forbidden": [7],
        "images": [np.rint(im).astype(int).tolist() for im in images],
    }


def example_json(inputs: dict) -> str:
    """JSON with one image row per line: diff-friendly and readable as a picture."""
    head = [f"  {json.dumps(k)}: {json.dumps(v)}," for k, v in inputs.items() if k != "images"]
    images = ",\n".join(
        "    [\n" + ",\n".join(f"      {json.dumps(row)}" for row in im) + "\n    ]"
        for im in inputs["images"]
    )
    return "{\n" + "\n".join(head) + '\n  "images": [\n' + images + "\n  ]\n}\n"


# --------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    return model_cli(
        argv,
        module="sample_tasks.image_check.model",
        train_and_evaluate=train_and_evaluate,
        export=export_onnx,
        metadata=_metadata,
        write_example=lambda: EXAMPLE_INPUTS_PATH.write_text(example_json(make_example_inputs())),
        summary=lambda data, m: (
            f"test accuracy {m['test_accuracy']:.4f} on {int(m['n_test'])} held-out digits "
            f"(train {m['train_accuracy']:.4f} on {int(m['n_train'])})"),
    )


if __name__ == "__main__":
    sys.exit(main())
