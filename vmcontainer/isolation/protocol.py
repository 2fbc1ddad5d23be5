"""The messages host and worker exchange, and how errors cross back.

The two directions are not equally trusted, so they are not encoded alike.

**Requests** (host -> worker) come from the trusted host over a private
socketpair; the worker is the side at risk, and it runs whatever the host
sends anyway.  They travel as ``b"M" + marshal.dumps(msg)`` - C speed, about
a tenth of the codec - or, when ``msg`` holds a numpy array (marshal carries
none), as a codec message (``codec.py``).  Messages::

    {"op": "init", "workdir": str, "memory_bytes": int, "max_open_files": int,
     "recursion_limit": int, "program_cache": int, "profile": {DeviceProfile fields}}
    CallRequest: a plain tuple on the wire (no keys to encode, look up or check)
      (op: "call" | "check", program: (name, release, program_digest),
       load: None | {"entry": str, "code": bytes, "code_digest": str,
                     "limits": {ResourceLimits fields}, "models": {name: (digest, blob)}},
       inputs: data, upstream: None | {name: result},
       scope: (timeout, remaining, cpu_budget, audit_interval, max_model_runs, memory_budget))

``load`` is sent the first time a worker sees a program (the host mirrors each
worker's LRU cache); ``scope`` rebuilds the call's ``CallScope`` in the worker
with the host's deadline and budgets (``scope_request`` / ``scope_from_request``).

**Replies** (worker -> host) are hostile input: task code may own the worker.
Nothing the host decodes from a worker goes through marshal or pickle.  A
successful call is a fixed header and the result::

    b"K" model_time:f64 model_runs:u32 printed_len:u32 printed:utf8 codec(result)
    b"J" ... the same ...                                          json(result)

JSON (the C parser: safe on hostile text, and several times faster than the
pure-Python codec) carries results it round-trips exactly - dicts with str
keys, lists, str, float, bool, None and 64-bit ints; anything else (tuples,
bytes, arrays, other keys) goes through the codec.  The host checks a JSON
result against the same depth and item caps the codec enforces.

everything else (start-up, errors) is a codec dict::

    {"ready": pid}
    {"error": {"type": str, "message": str, "exc_type": str, "script_traceback": str}}

``decode_reply`` checks the header against the frame and the task's caps,
decodes the result under the task's reply limits, caps the strings, and maps
an error's class name through a fixed allowlist to the very classes thread
mode raises - unknown names become ``TaskError``, so a worker can never make
the host instantiate a class of its choosing.
"""

from __future__ import annotations

import dataclasses
import functools
import marshal
import math
import struct
import time
from typing import Any, NamedTuple

from .. import jsonc
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
from . import codec
from .codec import CodecError, CodecLimits
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


class CallRequest(NamedTuple):
    op: str  # "call" | "check"
    program: ProgramKey
    load: dict[str, Any] | None
    inputs: Any
    upstream: dict[str, Any] | None
    scope: tuple[Any, ...]  # scope_request()


def scope_request(scope: CallScope) -> tuple[Any, ...]:
    """Host side: what the worker needs to rebuild ``scope``."""
    return (scope.timeout, scope.remaining(), scope.cpu_budget, scope.audit_interval,
            scope.max_model_runs, scope.memory_budget)


def scope_from_request(req: tuple[Any, ...]) -> CallScope:
    """Worker side: the host's scope - same deadline (hence the same timeout
    messages as thread mode), CPU budget and model-run cap."""
    timeout, remaining, cpu_budget, audit_interval, max_model_runs, memory_budget = req
    return CallScope(timeout, start=time.monotonic() - (timeout - remaining), cpu_budget=cpu_budget,
                     audit_interval=audit_interval, max_model_runs=max_model_runs,
                     memory_budget=memory_budget)


def error_reply(exc: BaseException) -> dict[str, Any]:
    """Worker side: describe a (public) error for the host."""
    return {"error": {
        "type": type(exc).__name__,
        "message": str(exc)[:MAX_ERROR_TEXT],
        "exc_type": getattr(exc, "exc_type", ""),
        "script_traceback": getattr(exc, "script_traceback", ""),
    }}


_MARSHALLED = b"M"
_OK = struct.Struct("<cdII")  # b"K", model_time, model_runs, printed_len
_SCALARS = frozenset({type(None), bool, int, float, str, bytes})
_CONTAINERS = frozenset({list, tuple, dict})
_PLAIN = _SCALARS | _CONTAINERS


def _marshals_exactly(value: Any) -> bool:
    """True if ``marshal`` carries ``value`` unchanged.  It does not refuse an
    ndarray: it writes any buffer as ``bytes``.  Element types are collected
    in C (``set(map(type, ...))``), so a long list of numbers costs little."""
    t = type(value)
    if t in _SCALARS:
        return True
    if t is dict:
        value = value.values()  # keys are hashable, so they hold no array
    elif t is not list and t is not tuple:
        return False
    types = set(map(type, value))
    if not types <= _PLAIN:
        return False
    return types.isdisjoint(_CONTAINERS) or all(
        _marshals_exactly(v) for v in value if type(v) in _CONTAINERS)


def encode_request(req: CallRequest) -> list[bytes | memoryview]:
    """Host side: a request as frame chunks (marshal; the codec if it holds arrays).
    Only the task data can hold arrays: the envelope is the host's own plain values."""
    msg = tuple(req)  # marshal and the codec carry exact tuples only
    if not (_marshals_exactly(req.inputs) and _marshals_exactly(req.upstream)):
        return codec.encode_chunks(msg, REQUEST_LIMITS)
    raw = marshal.dumps(msg)
    if len(raw) >= REQUEST_LIMITS.max_bytes:
        raise CodecError(f"message exceeds {REQUEST_LIMITS.max_bytes} bytes")
    return [_MARSHALLED, raw]


def decode_request(frame: bytes | memoryview) -> CallRequest:
    """Worker side: a request the host sent (trusted: see the module docstring)."""
    msg = marshal.loads(frame[1:]) if frame[:1] == _MARSHALLED else codec.decode(frame, REQUEST_LIMITS)
    return CallRequest(*msg)


# The host decodes JSON whole before it can count items (the codec counts as it goes),
# so JSON carries small results only: 1 MiB of text builds at most ~0.5 M objects.
MAX_JSON_RESULT = 1 << 20
_JSON_TYPES = frozenset({type(None), bool, int, float, str, list, dict})
_JSON_CONTAINERS = frozenset({list, dict})
_I64 = 1 << 63


_json_encode, _json_decode = jsonc.make_encoder(), jsonc.make_decoder()


def _json_exact(value: Any, depth: int, max_depth: int) -> bool:
    """True if ``json`` gives ``value`` back equal and with the same types.  Element
    types are collected in C, so long lists of numbers cost little."""
    t = type(value)
    if t is dict:
        if not set(map(type, value)) <= {str}:
            return False
        value = value.values()
    elif t is not list:
        return t in _JSON_TYPES and (t is not int or -_I64 <= value < _I64)
    if depth >= max_depth:
        return False
    types = set(map(type, value))
    if not types <= _JSON_TYPES:
        return False
    if int in types:
        ints = value if len(types) == 1 else [v for v in value if type(v) is int]
        if max(ints) >= _I64 or min(ints) < -_I64:
            return False
    return types.isdisjoint(_JSON_CONTAINERS) or all(
        _json_exact(v, depth + 1, max_depth) for v in value if type(v) in _JSON_CONTAINERS)


def _check_json_tree(value: Any, caps: CodecLimits) -> None:
    """Host side: a JSON result within the depth and item caps the codec enforces."""
    items = 1
    stack = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if depth >= caps.max_depth:
            raise ProtocolError(f"result nested deeper than {caps.max_depth}")
        members = node.values() if type(node) is dict else node
        items += 2 * len(node) if type(node) is dict else len(node)
        if items > caps.max_items:
            raise ProtocolError(f"result exceeds {caps.max_items} items")
        if not set(map(type, members)).isdisjoint(_JSON_CONTAINERS):
            stack.extend((v, depth + 1) for v in members if type(v) in _JSON_CONTAINERS)


def encode_ok(result: Any, printed: str, scope: CallScope,
              caps: CodecLimits) -> list[bytes | memoryview]:
    """Worker side: the reply of a call that succeeded, as frame chunks."""
    text = printed.encode("utf-8", "surrogatepass")
    body: list[bytes | memoryview] | None = None
    if _json_exact(result, 0, caps.max_depth):
        raw = _json_encode(result).encode("ascii")
        if len(raw) <= min(caps.max_bytes, MAX_JSON_RESULT):
            kind, body = b"J", [raw]
    if body is None:
        kind, body = b"K", codec.encode_chunks(result, caps)
    head = _OK.pack(kind, float(scope.model_time), min(int(scope.model_runs), 0xFFFFFFFF), len(text))
    return [head + text, *body]


def encode_error(exc: BaseException) -> list[bytes | memoryview]:
    return codec.encode_chunks(error_reply(exc))


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


def decode_reply(frame: bytes | memoryview, limits: ResourceLimits = DEFAULT_RESOURCE_LIMITS,
                 caps: CodecLimits | None = None) -> Reply:
    """Host side: the ``Reply`` of an ok reply; raise the public error of an error
    reply; ``CodecError``/``ProtocolError`` for anything else."""
    caps = caps or reply_limits(limits)
    kind = frame[:1]
    if kind != b"K" and kind != b"J":
        _raise_error_reply(codec.decode(frame, caps))
    if len(frame) < _OK.size:
        raise ProtocolError("truncated reply header")
    _, model_time, model_runs, printed_len = _OK.unpack_from(frame)
    if not (0.0 <= model_time < math.inf):
        raise ProtocolError("bad model accounting")
    end = _OK.size + printed_len
    if printed_len > 4 * (limits.max_print_bytes + 100) or end > len(frame):
        raise ProtocolError("printed text over its cap or past the frame")
    try:
        printed = str(frame[_OK.size:end], "utf-8", "surrogatepass")
    except UnicodeDecodeError:
        raise ProtocolError("printed text is not UTF-8") from None
    if kind == b"K":
        result = codec.decode(frame[end:], caps)
    else:
        if len(frame) - end > MAX_JSON_RESULT:
            raise ProtocolError("JSON result over its size cap")
        try:
            text = str(frame[end:], "ascii")
            result = _json_decode(text)
        except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
            raise ProtocolError("result is not valid JSON") from None
        # Every item takes a character and every level a bracket: a text this short,
        # with this few brackets, is within the caps without walking it.
        if len(text) >= caps.max_items or text.count("[") + text.count("{") >= caps.max_depth:
            _check_json_tree(result, caps)
    return Reply(result, printed[:limits.max_print_bytes + 100], model_time, model_runs)  # + truncation note


def _raise_error_reply(msg: Any) -> None:
    if type(msg) is dict and len(msg) == 1 and "error" in msg:
        raise error_from_reply(msg["error"])
    raise ProtocolError("unknown reply")
