"""Shared build-time helpers for the samples' model training (host side, never sandboxed)."""

from __future__ import annotations

import contextlib


def single_threaded_blas() -> contextlib.AbstractContextManager:
    """Keep BLAS on one thread while training, if ``threadpoolctl`` is installed.

    The matrices are small: extra BLAS threads only add overhead, and on a busy
    2-core build machine spinning OpenBLAS threads made training 10-50x slower.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(1, user_api="blas")
