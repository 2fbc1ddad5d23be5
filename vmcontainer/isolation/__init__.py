"""Process isolation: run task calls in a pool of hardened worker processes.

``ProcessPool.call`` has thread mode's contract (``TaskProgram.call``) but a
call that crashes, hangs in C or exhausts memory costs only its worker.  See
``pool.py`` for the host side, ``worker.py`` for the worker, ``zygote.py`` for
how workers start, and ``codec.py`` for the only data that crosses.
"""

from .codec import CodecError
from .errors import WorkerCrashed
from .pool import ProcessLimits, ProcessPool, ProgramSpec

__all__ = ["CodecError", "ProcessLimits", "ProcessPool", "ProgramSpec", "WorkerCrashed"]
