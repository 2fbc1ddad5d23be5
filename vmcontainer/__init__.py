"""vmcontainer: run signed, encrypted, sandboxed Python task bundles by name.

Public API (see README.md)::

    Container, TaskInfo, CallFuture, DeviceProfile, ResourceLimits
    errors: VmError, BundleError (+ subclasses), CompileError, SandboxViolation,
            TaskTimeout, TaskCancelled, TaskError, TaskNotFound, ResourceLimitExceeded,
            ModelError, ModelInputError, InvalidInputs, QueueFull, CircuitOpen,
            UpstreamFailed, TaskGraphError
"""

__version__ = "0.2.0"

from .container import Container, InvalidInputs
from .errors import (
    BundleDecryptError,
    BundleError,
    BundleExpired,
    BundleIncompatible,
    BundleIntegrityError,
    BundleMalformed,
    BundleNotForThisDevice,
    BundleRollback,
    BundleSignatureInvalid,
    BundleTooLarge,
    CircuitOpen,
    CompileError,
    Diagnostic,
    ModelError,
    ModelInputError,
    ResourceLimitExceeded,
    SandboxViolation,
    TaskCancelled,
    TaskError,
    TaskNotFound,
    TaskTimeout,
    UpstreamFailed,
    VmError,
)
from .inference.profile import DeviceProfile
from .isolation.errors import WorkerCrashed
from .isolation.pool import ProcessLimits
from .registry import TaskInfo
from .sandbox.limits import ResourceLimits
from .scheduler.graph import TaskGraphError
from .scheduler.pool import CallFuture, QueueFull

__all__ = [
    "BundleDecryptError",
    "BundleError",
    "BundleExpired",
    "BundleIncompatible",
    "BundleIntegrityError",
    "BundleMalformed",
    "BundleNotForThisDevice",
    "BundleRollback",
    "BundleSignatureInvalid",
    "BundleTooLarge",
    "CallFuture",
    "CircuitOpen",
    "CompileError",
    "Container",
    "DeviceProfile",
    "Diagnostic",
    "InvalidInputs",
    "ModelError",
    "ModelInputError",
    "ProcessLimits",
    "QueueFull",
    "ResourceLimitExceeded",
    "ResourceLimits",
    "SandboxViolation",
    "TaskCancelled",
    "TaskError",
    "TaskGraphError",
    "TaskInfo",
    "TaskNotFound",
    "TaskTimeout",
    "UpstreamFailed",
    "VmError",
    "WorkerCrashed",
    "__version__",
]
