"""Model checks shared by the cloud build and the device load."""

from __future__ import annotations

from ..errors import ModelError

MAX_MODEL_BYTES = 32 << 20


def validate_model_bytes(name: str, blob: bytes, *, max_bytes: int = MAX_MODEL_BYTES) -> None:
    """Refuse models the device must never load: oversized or using external data.

    With the ``onnx`` package present (cloud side) the graph is parsed and checked;
    the device additionally relies on ONNX Runtime refusing to load broken graphs.
    """
    if not name or len(name) > 64 or not name.replace("_", "").replace("-", "").isalnum():
        raise ModelError(f"model name {name!r} must be 1-64 letters, digits, '-' or '_'")
    if len(blob) > max_bytes:
        raise ModelError(f"model {name!r} is {len(blob)} bytes, cap is {max_bytes}")
    try:
        import onnx  # cloud-side extra
        from onnx.external_data_helper import uses_external_data
    except ImportError:
        return
    try:
        model = onnx.load_from_string(blob)
    except Exception as exc:
        raise ModelError(f"model {name!r} is not a valid ONNX file: {type(exc).__name__}") from None
    for tensor in _all_tensors(model.graph):
        if uses_external_data(tensor):
            raise ModelError(f"model {name!r} references external data files")
    try:
        onnx.checker.check_model(model)
    except Exception as exc:
        raise ModelError(f"model {name!r} fails the ONNX checker: {str(exc)[:300]}") from None


def _all_tensors(graph):  # type: ignore[no-untyped-def]
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _all_tensors(attr.g)
            for sub in attr.graphs:
                yield from _all_tensors(sub)
