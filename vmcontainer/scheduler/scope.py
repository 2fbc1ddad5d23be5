"""Call scopes: one deadline and one cancel switch per call, checked cooperatively.

A ``CallScope`` is the only object that decides whether a call may go on.  The
task's injected checkpoints read its deadline from the call's globals
(``_vm_deadline_``), so cancelling writes ``-inf`` there and the next
checkpoint raises; host code (model runs, result validation) calls
``check()``.  Running ONNX Runtime inferences registered with the scope are
terminated on cancel and, through the watchdog, at the deadline.
"""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any

from ..sandbox import policy

_ids = itertools.count(1)


class Interrupt(BaseException):
    """Raised inside a task to stop it.  A ``BaseException`` so ``except Exception``
    in a script cannot swallow it; translated to a public error at the boundary."""

    def __init__(self, kind: str, message: str = ""):
        super().__init__(kind, message)
        self.kind = kind  # "timeout" | "cancelled" | "violation" | "limit"
        self.message = message


class CallScope:
    __slots__ = ("call_id", "deadline", "timeout", "cancelled", "_globals", "_runs", "_lock")

    def __init__(self, timeout: float, *, start: float | None = None):
        self.call_id = next(_ids)
        self.timeout = timeout
        self.deadline = (time.monotonic() if start is None else start) + timeout
        self.cancelled = False
        self._globals: dict[str, Any] | None = None
        self._runs: list[Any] = []
        self._lock = threading.Lock()

    # -- wiring to the running task --------------------------------------------

    def bind(self, task_globals: dict[str, Any]) -> None:
        """Attach the call's fresh globals, so cancel() can reach the checkpoints."""
        self._globals = task_globals
        task_globals[policy.DEADLINE] = float("-inf") if self.cancelled else self.deadline

    def expired(self) -> None:
        """Target of the injected checkpoints: raise the interrupt that fits."""
        if self.cancelled:
            raise Interrupt("cancelled", "call cancelled")
        raise Interrupt("timeout", f"deadline of {self.timeout:.3f}s passed")

    def check(self) -> None:
        """Host-side checkpoint."""
        if self.cancelled or time.monotonic() > self.deadline:
            self.expired()

    def remaining(self) -> float:
        return 0.0 if self.cancelled else max(0.0, self.deadline - time.monotonic())

    @property
    def done_by_deadline(self) -> bool:
        return self.cancelled or time.monotonic() > self.deadline

    # -- cancellation ----------------------------------------------------------

    def cancel(self) -> None:
        self.cancelled = True
        g = self._globals
        if g is not None:
            g[policy.DEADLINE] = float("-inf")
        self.terminate_runs()

    def attach_run(self, run_options: Any) -> None:
        with self._lock:
            self._runs.append(run_options)
            if self.cancelled:
                run_options.terminate = True

    def detach_run(self, run_options: Any) -> None:
        with self._lock:
            self._runs.remove(run_options)

    def terminate_runs(self) -> None:
        with self._lock:
            for ro in self._runs:
                ro.terminate = True
