"""Build-time model work: checks, signatures, references and model bundles.

Refuses what the device would refuse, earlier and louder (the same
``validate`` rules plus ``onnx.checker`` when ``onnx`` is installed), and
produces what the device needs to share models between tasks:

* ``build_model_bundle`` - a signed, encrypted bundle carrying one model and
  its declared signature (``vmtool build-model``);
* ``pin_ref`` / ``compatible_ref`` - the ``model_refs`` entries a task
  manifest uses to name such a model (``vmtool build --model-ref``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from vmcontainer.bundle.keys import KeySource, load_device_public, load_publisher_private
from vmcontainer.bundle.sealer import pack_model, seal
from vmcontainer.errors import ModelError
from vmcontainer.inference.onnx_wire import ModelFacts
from vmcontainer.inference.profile import MicroBatch
from vmcontainer.inference.signature import Signature
from vmcontainer.inference.validate import validate_model_bytes


def check_model(name: str, blob: bytes) -> ModelFacts:
    """Raise ``ModelError`` if ``blob`` is not a model the device will accept."""
    return validate_model_bytes(name, blob, deep=True)


def model_signature(blob: bytes) -> dict[str, Any]:
    """The model's inputs and outputs as ONNX Runtime reports them (plain data)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 4
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        session = ort.InferenceSession(bytes(blob), sess_options=so,
                                       providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ModelError(f"model does not load in ONNX Runtime: {str(exc)[:300]}") from None
    return Signature.of_session(session).describe()


def pin_ref(name: str, blob: bytes) -> dict[str, Any]:
    """A reference to exactly these bytes of model ``name`` (the default policy)."""
    check_model(name, blob)
    return {"ref": name, "policy": "pin", "sha256": hashlib.sha256(blob).hexdigest(),
            "signature": model_signature(blob)}


def compatible_ref(name: str, blob: bytes, *, min_release: int = 0) -> dict[str, Any]:
    """A reference to the newest installed release of ``name`` whose signature is
    compatible with this model's (built against ``blob``)."""
    check_model(name, blob)
    ref: dict[str, Any] = {"ref": name, "policy": "compatible",
                           "sha256": hashlib.sha256(blob).hexdigest(),
                           "signature": model_signature(blob)}
    if min_release:
        ref["min_release"] = min_release
    return ref


def parse_ref_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``ALIAS=FILE.onnx[,name=NAME][,policy=pin|compatible][,min_release=N]`` -> entry.

    The model name defaults to the alias; the policy to ``pin``."""
    alias, sep, rest = spec.partition("=")
    if not sep or not alias or not rest:
        raise ValueError(f"--model-ref takes ALIAS=FILE.onnx[,name=..][,policy=..], got {spec!r}")
    file, *options = rest.split(",")
    opts: dict[str, str] = {}
    for option in options:
        key, eq, value = option.partition("=")
        if not eq or key not in ("name", "policy", "min_release"):
            raise ValueError(f"--model-ref option {option!r}: use name=, policy= or min_release=")
        opts[key] = value
    blob = Path(file).read_bytes()
    name = opts.get("name", alias)
    policy = opts.get("policy", "pin")
    if policy == "pin":
        if "min_release" in opts:
            raise ValueError("min_release applies to policy=compatible only")
        return alias, pin_ref(name, blob)
    if policy == "compatible":
        return alias, compatible_ref(name, blob, min_release=int(opts.get("min_release", "0")))
    raise ValueError(f"--model-ref policy must be pin or compatible, got {policy!r}")


def build_model_bundle(
    name: str,
    blob: bytes,
    *,
    release: int,
    signers: Sequence[KeySource],
    recipients: Sequence[KeySource],
    micro_batch: Mapping[str, Any] | None = None,
    meta: Mapping[str, Any] | None = None,
    expires_in: float | None = None,
    now: float | None = None,
) -> bytes:
    """Check ``blob`` and seal it as model bundle ``model:NAME`` release ``release``."""
    check_model(name, blob)
    if micro_batch:
        MicroBatch.parse(name, micro_batch)  # the device would refuse it: refuse now
    payload = pack_model(name, blob, release=release, signature=model_signature(blob),
                         micro_batch=micro_batch, meta=meta)
    return seal(
        payload,
        signers=[load_publisher_private(s) for s in signers],
        recipients=[load_device_public(r) for r in recipients],
        expires_in=expires_in,
        now=now,
    )
