"""Small real ONNX models built in code for tests (nothing downloaded)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _finish(graph: onnx.GraphProto) -> bytes:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model.SerializeToString()


def linear_model(n_in: int = 4, n_out: int = 2, seed: int = 0) -> tuple[bytes, np.ndarray, np.ndarray]:
    """y = x @ W + b, input "x" float32 [N, n_in], output "y" float32 [N, n_out]."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(n_in, n_out)).astype(np.float32)
    b = rng.normal(size=(n_out,)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "W", "b"], ["y"])],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", n_in])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", n_out])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "b")],
    )
    return _finish(graph), w, b


def slow_loop_model(trips: int = 10**12, width: int = 256) -> bytes:
    """A Loop that multiplies a [1, width] state by a matrix ``trips`` times: runs until terminated."""
    w = (np.eye(width, dtype=np.float32) * 0.999)
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("MatMul", ["state_in", "W"], ["state_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("state_in", TensorProto.FLOAT, [1, width]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("state_out", TensorProto.FLOAT, [1, width]),
        ],
        [numpy_helper.from_array(w, "W")],
    )
    graph = helper.make_graph(
        [
            helper.make_node("Constant", [], ["M"], value=numpy_helper.from_array(np.array(trips, dtype=np.int64))),
            helper.make_node("Constant", [], ["cond"], value=numpy_helper.from_array(np.array(True))),
            helper.make_node("Loop", ["M", "cond", "x"], ["y"], body=body),
        ],
        "slow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, width])],
    )
    return _finish(graph)
