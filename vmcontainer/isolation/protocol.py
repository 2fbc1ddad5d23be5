"""The messages host and worker exchange, and how errors cross back.

Both directions are codec dicts (``codec.py``).  Requests (host -> worker)::

    {"op": "init", "workdir": str, "memory_bytes": int, "max_open_files": int,
     "recursion_limit": int, "program_cache": int, "profile": {DeviceProfile fields}}
    {"op": "call" | "check", "program": (name, release, program_digest),
     "load": None | {"entry": str, "code": bytes, "code_digest": str,
                     "limits": {ResourceLimits fields}, "models": {name: (digest, blob)}},
     "inputs": data, "upstream": None | {name: result},
     "scope": {"timeout": s, "remaining": s, "cpu_budget": s | None,
               "audit_interval": s, "max_model_runs": int | None}}

``load`` is sent the first time a worker sees a program (the host mirrors each
worker's LRU cache); ``scope`` rebuilds the call's ``CallScope`` in the worker
with the host's deadline and budgets (``scope_request`` / ``scope_from_request``).

Replies (worker -> host)::

    {"ready": pid}
    {"ok": result, "printed": str, "model_time": float, "model_runs": int}
    {"error": {"type": str, "message": str, "exc_type": str, "script_traceback": str}}

A reply is untrusted input: ``parse_reply`` checks its shape and field types,
caps the strings, and maps the error's class name through a fixed allowlist to
the very classes thread mode raises - unknown names become ``TaskError``, so
a worker can never make the host instantiate a class of its choosing.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, NamedTuple

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
from ..sandbox.limits import DEFAULT_LIMITS as DEFAULT_RESOURCE_LIMITS
from ..sandbox.limits import ResourceLimits
from ..scheduler.scope import CallScope
from .codec import CodecLimits
from .errors import WorkerCrashed

ProgramKey = tuple[str, int, str]

# Requests come from the trusted host: model blobs, inputs, upstream results
# (each as deep as its own task's limits allow).
REQUEST_LIMITS = CodecLimits(max_bytes=1 << 30, max_depth=256, max_items=1 << 26)
_ENVELOPE_BYTES = 1 << 20

MAX_ERROR_TEXT = 4000
MAX_TRACEBACK_TEXT = 16000


@functools.lru_cache(maxsize=64)
def reply_limits(limits: ResourceLimits) -> CodecLimits:
    """Caps on a reply of a task with ``limits``, applied by the worker when it
    encodes and by the host when it decodes: one result that passed the task's
    result boundary (a str char can take 4 UTF-8 bytes; a dict entry is two
    values) plus printed text, in an envelope."""
    return CodecLimits(
        max_bytes=4 * (limits.max_result_bytes + limits.max_print_bytes) + _ENVELOPE_BYTES,
        max_depth=limits.max_result_depth + 2,
        max_items=2 * limits.max_result_items + 64,
        max_int_bits=BOUNDARY_LIMITS.max_int_bits,
    )


REPLY_LIMITS = reply_limits(DEFAULT_RESOURCE_LIMITS)

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


def scope_request(scope: CallScope) -> dict[str, Any]:
    """Host side: what the worker needs to rebuild ``scope``."""
    return {"timeout": scope.timeout, "remaining": scope.remaining(),
            "cpu_budget": scope.cpu_budget, "audit_interval": scope.audit_interval,
            "max_model_runs": scope.max_model_runs}


def scope_from_request(req: dict[str, Any]) -> CallScope:
    """Worker side: the host's scope - same deadline (hence the same timeout
    messages as thread mode), CPU budget and model-run cap."""
    timeout = req["timeout"]
    return CallScope(timeout, start=time.monotonic() - (timeout - req["remaining"]),
                     cpu_budget=req["cpu_budget"], audit_interval=req["audit_interval"],
                     max_model_runs=req["max_model_runs"])


def error_reply(exc: BaseException) -> dict[str, Any]:
    """Worker side: describe a (public) error for the host."""
    return {"error": {
        "type": type(exc).__name__,
        "message": str(exc)[:MAX_ERROR_TEXT],
        "exc_type": getattr(exc, "exc_type", ""),
        "script_traceback": getattr(exc, "script_traceback", ""),
    }}


def ok_reply(result: Any, printed: str, scope: CallScope) -> dict[str, Any]:
    return {"ok": result, "printed": printed, "model_time": float(scope.model_time),
            "model_runs": int(scope.model_runs)}


class Reply(NamedTuple):
    result: Any
    printed: str
    model_time: float
    model_runs: int


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


def parse_reply(msg: Any, limits: ResourceLimits = DEFAULT_RESOURCE_LIMITS) -> Reply:
    """Host side: the ``Reply`` of an ok reply; raise the public error of an
    error reply; ``ProtocolError`` for anything else."""
    if type(msg) is not dict:
        raise ProtocolError("reply is not a dict")
    if "ok" in msg and len(msg) == 4:
        model_time, model_runs = msg.get("model_time"), msg.get("model_runs")
        if type(model_time) is not float or type(model_runs) is not int:
            raise ProtocolError("bad model accounting")
        printed = _text(msg.get("printed"), limits.max_print_bytes + 100)  # + truncation note
        return Reply(msg["ok"], printed, model_time, model_runs)
    if "error" in msg and len(msg) == 1:
        raise error_from_reply(msg["error"])
    raise ProtocolError("unknown reply")
