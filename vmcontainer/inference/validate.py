"""Model checks shared by the cloud build and the device load.

The same rules run twice: at build time, so a publisher hears about a bad model
before signing it, and at load time, because the device trusts a signature, not
the build machine's good behaviour.  They need nothing but the bytes - the
device has no ``onnx`` package - so the graph is read with the wire-format
scanner in ``onnx_wire``.  The cloud side additionally runs ``onnx.checker``
(``deep=True``) when ``onnx`` is installed.

Refused, each with a ``ModelError`` that says why:

* a bad name, a file over the size cap, bytes that are not a ``ModelProto``;
* tensors stored in external data files (the device never opens files for a model);
* a default-domain opset outside the supported range, or node domains whose
  kernels would need a custom op library (never loaded);
* training-info sections, graphs nested too deep, too many nodes;
* a graph without inputs or outputs;
* constant-shaped allocations over the cap (the classic forged model: a
  100-byte ``ConstantOfShape`` asking for 40 GB).  Allocations whose size
  depends on the inputs are bounded at run time by the ORT arena cap
  (``DeviceProfile.memory_limit_mb``).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ModelError
from .onnx_wire import ModelFacts, allocation_bytes, scan_model

MAX_MODEL_BYTES = 32 << 20
# Domains whose kernels ship inside ONNX Runtime itself; anything else would need
# a custom op library, which the container never registers.
BUILTIN_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml", "com.microsoft"})


@dataclass(frozen=True)
class ModelLimits:
    """What a device accepts; ``DeviceProfile.model_limits()`` builds one."""

    max_bytes: int = MAX_MODEL_BYTES
    min_opset: int = 7
    max_opset: int = 21
    max_constant_bytes: int = 256 << 20


DEFAULT_LIMITS = ModelLimits()


def check_name(name: str) -> None:
    if (not isinstance(name, str) or not name or len(name) > 64
            or not name.replace("_", "").replace("-", "").isalnum() or not name.isascii()):
        raise ModelError(f"model name {name!r} must be 1-64 letters, digits, '-' or '_'")


def validate_model_bytes(name: str, blob: bytes, *, max_bytes: int | None = None,
                         limits: ModelLimits = DEFAULT_LIMITS, deep: bool = False) -> ModelFacts:
    """Refuse models the device must never load; return what the scan found.

    ``deep`` (build time) also runs ``onnx.checker`` if ``onnx`` is importable;
    the device-side result never depends on whether ``onnx`` is installed.
    """
    check_name(name)
    cap = limits.max_bytes if max_bytes is None else max_bytes
    if not isinstance(blob, (bytes, bytearray)):
        raise ModelError(f"model {name!r} must be bytes")
    if len(blob) > cap:
        raise ModelError(f"model {name!r} is {len(blob)} bytes, cap is {cap}")
    try:
        facts = scan_model(bytes(blob))
    except ModelError as exc:
        raise ModelError(f"model {name!r} is not a valid ONNX file: {exc}") from None
    check_facts(name, facts, limits)
    if deep:
        _onnx_checker(name, blob)
    return facts


def check_facts(name: str, facts: ModelFacts, limits: ModelLimits = DEFAULT_LIMITS) -> None:
    if facts.external_tensors:
        shown = ", ".join(repr(t) for t in facts.external_tensors[:3])
        raise ModelError(f"model {name!r} references external data files (tensor {shown}); "
                         "embed the weights in the .onnx file")
    if facts.training:
        raise ModelError(f"model {name!r} carries training-info graphs; export an inference model")
    default = facts.opsets.get("", facts.opsets.get("ai.onnx"))
    if default is None:
        if facts.domains & {"", "ai.onnx"}:
            raise ModelError(f"model {name!r} uses standard ops but imports no default opset")
    elif not limits.min_opset <= default <= limits.max_opset:
        raise ModelError(f"model {name!r} uses opset {default}; this device supports "
                         f"{limits.min_opset}..{limits.max_opset}")
    unknown = facts.domains - BUILTIN_DOMAINS - facts.function_domains
    if unknown:
        raise ModelError(f"model {name!r} uses custom op domain(s) {sorted(unknown)}; "
                         "custom op libraries are never loaded")
    for alloc in facts.allocations:
        size = allocation_bytes(facts, alloc)
        if size is not None and size > limits.max_constant_bytes:
            raise ModelError(
                f"model {name!r}: {alloc.op} would allocate {size:,} bytes, cap is "
                f"{limits.max_constant_bytes:,}")
    if not facts.inputs:
        raise ModelError(f"model {name!r} declares no graph inputs")
    if not facts.outputs or not all(facts.outputs):
        raise ModelError(f"model {name!r} declares no (or unnamed) graph outputs")
    if not all(facts.inputs) or len(set(facts.inputs)) != len(facts.inputs):
        raise ModelError(f"model {name!r} has unnamed or duplicate inputs")


def _onnx_checker(name: str, blob: bytes) -> None:
    try:
        import onnx  # cloud-side extra
    except ImportError:
        return
    try:
        model = onnx.load_from_string(bytes(blob))
    except Exception as exc:
        raise ModelError(f"model {name!r} is not a valid ONNX file: {type(exc).__name__}") from None
    try:
        onnx.checker.check_model(model)
    except Exception as exc:
        raise ModelError(f"model {name!r} fails the ONNX checker: {str(exc)[:300]}") from None
