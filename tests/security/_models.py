"""Forged and tiny ONNX models, built in code with onnx.helper (nothing downloaded)."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper
from onnx.external_data_helper import set_external_data

from tests.onnx_models import linear_model, slow_loop_model


def _model(graph, opset: int = 17) -> bytes:
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 9
    return m.SerializeToString()


def linear() -> bytes:
    return linear_model()[0]


def constant_of_shape_bomb() -> bytes:
    """~110-150 bytes asking for 10**10 float32 (40 GB) from a constant shape."""
    return _model(helper.make_graph([
        helper.make_node("Constant", [], ["s"], value=numpy_helper.from_array(np.array([10**10], np.int64))),
        helper.make_node("ConstantOfShape", ["s"], ["c"], value=numpy_helper.from_array(np.array([1.0], np.float32))),
        helper.make_node("Add", ["x", "c"], ["y"]),
    ], "cos", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]))


def constant_of_shape_from_input() -> bytes:
    """The allocation size comes from the script's feed: only a run-time cap can stop it."""
    return _model(helper.make_graph([
        helper.make_node("ConstantOfShape", ["s"], ["y"], value=numpy_helper.from_array(np.array([1.0], np.float32))),
    ], "cos_in", [helper.make_tensor_value_info("s", TensorProto.INT64, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]))


def loop_bomb() -> bytes:
    """A Loop with 10**15 trips."""
    return slow_loop_model(trips=10**15, width=4)


def external_data(location: str) -> bytes:
    t = numpy_helper.from_array(np.ones(4, dtype=np.float32), "W")
    set_external_data(t, location=location, offset=0, length=16)
    t.data_location = TensorProto.EXTERNAL
    t.ClearField("raw_data")
    return _model(helper.make_graph([helper.make_node("Add", ["x", "W"], ["y"])], "ext",
                                    [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                                    [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])], [t]))


def no_inputs() -> bytes:
    return _model(helper.make_graph([
        helper.make_node("Constant", [], ["y"], value=numpy_helper.from_array(np.ones(2, np.float32))),
    ], "noin", [], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])]))


def custom_domain() -> bytes:
    graph = helper.make_graph([helper.make_node("Evil", ["x"], ["y"], domain="com.attacker")], "custom",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                helper.make_opsetid("com.attacker", 1)])
    m.ir_version = 9
    return m.SerializeToString()
