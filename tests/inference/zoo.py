"""Small ONNX models for the inference tests, built in code (nothing downloaded),
plus model bundles sealed with the process's ephemeral test keys."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from bytecode_tools.models import model_signature
from vmcontainer.bundle.sealer import pack_model, seal
from vmcontainer.testing import ephemeral_keys


def finish(graph: onnx.GraphProto, opset: int = 17, check: bool = True,
           extra_opsets: tuple[tuple[str, int], ...] = ()) -> bytes:
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, v) for d, v in extra_opsets]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 9
    if check:
        onnx.checker.check_model(model)
    return model.SerializeToString()


def mlp(n_in: int = 8, hidden: int = 16, n_out: int = 1, seed: int = 0,
        batch: Any = "N", out_name: str = "scores") -> bytes:
    """features [N, n_in] -> Gemm -> Relu -> Gemm -> Sigmoid -> scores [N, n_out]."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.normal(size=(n_in, hidden)).astype(np.float32), "W1"),
             numpy_helper.from_array(rng.normal(size=(hidden,)).astype(np.float32), "b1"),
             numpy_helper.from_array(rng.normal(size=(hidden, n_out)).astype(np.float32), "W2"),
             numpy_helper.from_array(rng.normal(size=(n_out,)).astype(np.float32), "b2")]
    nodes = [helper.make_node("Gemm", ["features", "W1", "b1"], ["h"]),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Gemm", ["r", "W2", "b2"], ["logit"]),
             helper.make_node("Sigmoid", ["logit"], [out_name])]
    graph = helper.make_graph(
        nodes, "mlp",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [batch, n_in])],
        [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, [batch, n_out])], inits)
    return finish(graph)


def mlp_reference(blob: bytes, x: np.ndarray) -> np.ndarray:
    """The MLP's forward pass in numpy, from the weights in ``blob``."""
    model = onnx.load_from_string(blob)
    w = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    h = np.maximum(x @ w["W1"] + w["b1"], 0)
    return 1 / (1 + np.exp(-(h @ w["W2"] + w["b2"])))


def two_inputs() -> bytes:
    """ids int64 [N, 3] and weights float32 [N, 3] (fixed 3) -> score float32 [N]."""
    nodes = [helper.make_node("Cast", ["ids"], ["idf"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["idf", "weights"], ["prod"]),
             helper.make_node("ReduceSum", ["prod", "axes"], ["score"], keepdims=0)]
    graph = helper.make_graph(
        nodes, "two",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 3]),
         helper.make_tensor_value_info("weights", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N"])],
        [numpy_helper.from_array(np.array([1], dtype=np.int64), "axes")])
    return finish(graph)


def constant_of_shape_bomb(n: int = 10_000_000_000) -> bytes:
    """The forged model: ~100 bytes asking ConstantOfShape for ``4 * n`` bytes."""
    shape = numpy_helper.from_array(np.array([n], dtype=np.int64), "s")
    graph = helper.make_graph(
        [helper.make_node("Constant", [], ["s"], value=shape),
         helper.make_node("ConstantOfShape", ["s"], ["big"]),
         helper.make_node("ReduceSum", ["big"], ["total"], keepdims=0),
         helper.make_node("Add", ["x", "total"], ["y"])],
        "bomb",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    return finish(graph, check=False)


def dynamic_bomb() -> bytes:
    """ConstantOfShape whose shape is an input: only the run-time memory cap can stop it."""
    graph = helper.make_graph(
        [helper.make_node("ConstantOfShape", ["shape"], ["big"]),
         helper.make_node("ReduceSum", ["big"], ["total"], keepdims=0)],
        "dyn_bomb",
        [helper.make_tensor_value_info("shape", TensorProto.INT64, [1])],
        [helper.make_tensor_value_info("total", TensorProto.FLOAT, [])])
    return finish(graph)


def slow_batched(width: int = 64) -> bytes:
    """x [N, width], trips int64 [N] -> y [N, width]: a Loop of max(trips) MatMuls.

    Dynamic batch axis everywhere (micro-batchable); trips = 10**15 never ends."""
    w = np.eye(width, dtype=np.float32) * 0.999
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("MatMul", ["state_in", "W"], ["state_out"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("state_in", TensorProto.FLOAT, ["N", width])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("state_out", TensorProto.FLOAT, ["N", width])],
        [numpy_helper.from_array(w, "W")])
    graph = helper.make_graph(
        [helper.make_node("ReduceMax", ["trips"], ["M"], keepdims=0),
         helper.make_node("Constant", [], ["cond"],
                          value=numpy_helper.from_array(np.array(True))),
         helper.make_node("Loop", ["M", "cond", "x"], ["y"], body=body)],
        "slow_batched",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width]),
         helper.make_tensor_value_info("trips", TensorProto.INT64, ["N"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", width])])
    return finish(graph)


def with_opset(opset: int) -> bytes:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N"])])
    return finish(graph, opset=opset, check=False)


def custom_domain() -> bytes:
    graph = helper.make_graph(
        [helper.make_node("MySecretOp", ["x"], ["y"], domain="com.evil")], "custom",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N"])])
    return finish(graph, check=False, extra_opsets=(("com.evil", 1),))


def external_data(blob: bytes) -> bytes:
    """``blob`` with every initializer moved to an external file 'weights.bin'."""
    from onnx.external_data_helper import convert_model_to_external_data

    model = onnx.load_from_string(blob)
    convert_model_to_external_data(model, all_tensors_to_one_file=True, location="weights.bin",
                                   size_threshold=0)
    return model.SerializeToString()


def model_bundle(name: str, blob: bytes, release: int, *, micro_batch: dict | None = None,
                 signature: dict | None = None) -> bytes:
    """A model bundle sealed with the ephemeral keys (what ``vmtool build-model`` makes)."""
    publisher, device = ephemeral_keys()
    payload = pack_model(name, blob, release=release,
                         signature=signature or model_signature(blob), micro_batch=micro_batch)
    return seal(payload, signers=[publisher], recipients=[device.public_key()])
