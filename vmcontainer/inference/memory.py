"""The ORT memory cap: one CPU arena, shared by every session, with a maximum size.

Why: a model can ask ONNX Runtime for any amount of memory at run time (an
input-dependent ``ConstantOfShape``, ``Expand`` or ``Tile``), and on a phone
an allocation that succeeds and is then filled gets the app killed.  ORT can
register an environment-level arena allocator with ``max_mem``; sessions that
set ``session.use_env_allocators`` allocate from it, and a request beyond the
cap fails that one run with an ORT error (a ``ModelError`` here) instead of
taking the process down.  Measured here: no cost on a batch-1 run.

The arena is process-wide (ORT has one environment): the most recent cap
applies to sessions created after it, and memory the arena has grown to is
kept for reuse rather than returned to the OS.
"""

from __future__ import annotations

import threading

import onnxruntime as ort

_lock = threading.Lock()
_registered: int | None = None


def ensure_arena_cap(max_bytes: int) -> bool:
    """Register (or re-register) the shared CPU arena with ``max_bytes``; True if it
    is in place, False if this ORT build cannot do it (sessions then use their own,
    uncapped arenas)."""
    global _registered
    with _lock:
        if _registered == max_bytes:
            return True
        try:
            info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0,
                                     ort.OrtMemType.DEFAULT)
            # kSameAsRequested: grow by what is asked, not by doubling past the cap.
            cfg = ort.OrtArenaCfg({"max_mem": max_bytes, "arena_extend_strategy": 1})
            ort.create_and_register_allocator(info, cfg)
        except Exception:  # no such API in this ORT build
            return False
        _registered = max_bytes
        return True


def arena_cap() -> int | None:
    """The cap currently registered, if any."""
    return _registered
