"""Every error the container raises, in one hierarchy.

Callers catch ``VmError`` for "the container refused or the task failed" and a
subclass when they care why.  Messages never carry absolute host paths: they
travel into logs and crash reports that leave the device.
"""

from __future__ import annotations

from concurrent.futures import CancelledError
from dataclasses import dataclass


class VmError(Exception):
    """Base of every error raised by vmcontainer."""


# --- bundles -----------------------------------------------------------------


class BundleError(VmError):
    """A bundle was refused.  Subclasses name the check that failed, in check order."""


class BundleTooLarge(BundleError):
    """The bundle (or one of its regions) exceeds a configured size cap."""


class BundleMalformed(BundleError):
    """The bundle does not parse strictly as format v1."""


class BundleSignatureInvalid(BundleError):
    """Fewer than the required number of trusted signatures verify."""


class BundleIncompatible(BundleError):
    """Format version, Python bytecode magic, cache tag or container version do not match."""


class BundleExpired(BundleError):
    """The bundle's validity window has passed (or has not started)."""


class BundleRollback(BundleError):
    """The release is lower than one already installed for that task."""


class BundleNotForThisDevice(BundleError):
    """No recipient wrap for this device key, or the wrap does not open."""


class BundleDecryptError(BundleError):
    """The ciphertext does not authenticate under the unwrapped content key."""


class BundleIntegrityError(BundleError):
    """The decrypted payload does not match its signed digest or its manifest."""


# --- compiling and sandbox ---------------------------------------------------


@dataclass(frozen=True)
class Diagnostic:
    """One policy or syntax problem at a place in the script."""

    filename: str
    line: int
    col: int
    message: str

    def __str__(self) -> str:
        return f"{self.filename}:{self.line}:{self.col}: {self.message}"


class CompileError(VmError):
    """The script does not compile, or breaks the sandbox policy at compile time."""

    def __init__(self, diagnostics: list[Diagnostic]):
        self.diagnostics = list(diagnostics)
        super().__init__("\n".join(str(d) for d in self.diagnostics))


class SandboxViolation(VmError):
    """The script tried, at run time, something the policy forbids."""


# --- running tasks -----------------------------------------------------------


class TaskNotFound(VmError):
    """No task of that name is installed."""


class TaskTimeout(VmError):
    """The call's deadline passed before the task finished."""


class TaskCancelled(VmError, CancelledError):
    """The call was cancelled before or while it ran (also a
    ``concurrent.futures.CancelledError``)."""


class CircuitOpen(VmError):
    """The task's circuit breaker is open after repeated failures; the call was not run."""


class UpstreamFailed(VmError):
    """A prerequisite task of a task graph failed; ``task`` names the failing link."""

    def __init__(self, message: str, *, task: str = "", cause: BaseException | None = None):
        super().__init__(message)
        self.task = task
        self.cause = cause


class ResourceLimitExceeded(VmError):
    """The task went over a per-task resource budget (memory, output, steps, ...)."""


class ModelInputError(VmError):
    """A model was fed inputs with the wrong names, dtypes or shapes."""


class ModelError(VmError):
    """A model could not be loaded or run."""


class TaskError(VmError):
    """The task script raised.

    ``exc_type`` is the script-visible exception class name and
    ``script_traceback`` the traceback in script line numbers (no host frames,
    no host paths).
    """

    def __init__(self, message: str, *, exc_type: str = "", script_traceback: str = ""):
        super().__init__(message)
        self.exc_type = exc_type
        self.script_traceback = script_traceback
