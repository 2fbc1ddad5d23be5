"""The messages host and worker exchange, and how errors cross back.

Both directions are codec dicts (``codec.py``).  Requests (host -> worker)::

    {"op": "init", "workdir": str, "memory_bytes": int, "max_open_files": int,
     "recursion_limit": int, "program_cache": int, "profile": {DeviceProfile fields}}
    {"op": "call" | "check", "program": [name, release, code_digest],
     "load": None | {"entry": str, "code": bytes, "models": {name: [digest, blob]}},
     "inputs": data, "upstream": None | {name: result}, "remaining": seconds}

Replies (worker -> host)::

    {"ready": pid}
    {"ok": result, "printed": str, "model_time": float}
    {"error": {"type": str, "message": str, "exc_type": str, "script_traceback": str}}

A reply is untrusted input: ``parse_reply`` checks its shape and field types,
caps the strings, and maps the error's class name through a fixed allowlist to
the very classes thread mode raises - unknown names become ``TaskError``, so
a worker can never make the host instantiate a class of its choosing.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ..errors import (
    ModelError,
    ModelInputError,
    ResourceLimitExceeded,
    SandboxViolation,
    TaskCancelled,
    TaskError,
    TaskTimeout,
    VmError,
)
from ..inference.profile import DeviceProfile
from ..sandbox.boundary import DEFAULT_LIMITS as BOUNDARY_LIMITS
from .codec import CodecLimits
from .errors import WorkerCrashed

# Requests carry model blobs and task inputs from the (trusted) host.
REQUEST_LIMITS = CodecLimits(max_bytes=1 << 30)
# A reply is one result that passed the boundary (str chars can be 4 UTF-8
# bytes each) plus at most 64 KiB of printed text.
REPLY_LIMITS = CodecLimits(max_bytes=4 * BOUNDARY_LIMITS.max_bytes + (1 << 20))

MAX_ERROR_TEXT = 4000
MAX_TRACEBACK_TEXT = 16000
MAX_PRINTED_TEXT = 256 * 1024

_PUBLIC_ERRORS: dict[str, type[VmError]] = {
    cls.__name__: cls
    for cls in (TaskTimeout, TaskCancelled, SandboxViolation, ResourceLimitExceeded,
                ModelError, ModelInputError, WorkerCrashed)
}


class ProtocolError(Exception):
    """A reply that decodes but is not one of the shapes above."""


def init_request(*, workdir: str, memory_bytes: int, max_open_files: int, recursion_limit: int,
                 program_cache: int, profile: DeviceProfile) -> dict[str, Any]:
    return {"op": "init", "workdir": workdir, "memory_bytes": memory_bytes,
            "max_open_files": max_open_files, "recursion_limit": recursion_limit,
            "program_cache": program_cache, "profile": dataclasses.asdict(profile)}


def error_reply(exc: BaseException) -> dict[str, Any]:
    """Worker side: describe a (public) error for the host."""
    return {"error": {
        "type": type(exc).__name__,
        "message": str(exc)[:MAX_ERROR_TEXT],
        "exc_type": getattr(exc, "exc_type", ""),
        "script_traceback": getattr(exc, "script_traceback", ""),
    }}


def ok_reply(result: Any, printed: str, model_time: float) -> dict[str, Any]:
    return {"ok": result, "printed": printed, "model_time": float(model_time)}


def _text(value: Any, cap: int) -> str:
    if type(value) is not str:
        raise ProtocolError("expected a string field")
    return value[:cap]


def error_from_reply(err: Any) -> VmError:
    """Host side: rebuild the public error an error reply describes."""
    if type(err) is not dict:
        raise ProtocolError("error field is not a dict")
    kind = _text(err.get("type"), 100)
    message = _text(err.get("message"), MAX_ERROR_TEXT)
    cls = _PUBLIC_ERRORS.get(kind)
    if cls is not None:
        return cls(message)
    exc_type = _text(err.get("exc_type", ""), 100) if kind == "TaskError" else kind
    return TaskError(message, exc_type=exc_type,
                     script_traceback=_text(err.get("script_traceback", ""), MAX_TRACEBACK_TEXT))


def parse_reply(msg: Any) -> tuple[Any, str, float]:
    """Host side: (result, printed, model seconds) of an ok reply; raise the
    public error of an error reply; ``ProtocolError`` for anything else."""
    if type(msg) is not dict:
        raise ProtocolError("reply is not a dict")
    if "ok" in msg and len(msg) == 3:
        model_time = msg.get("model_time")
        if type(model_time) is not float:
            raise ProtocolError("model_time is not a float")
        return msg["ok"], _text(msg.get("printed"), MAX_PRINTED_TEXT), model_time
    if "error" in msg and len(msg) == 1:
        raise error_from_reply(msg["error"])
    raise ProtocolError("unknown reply")
