"""vmcontainer: run signed, encrypted, sandboxed Python task bundles by name.

Public API (see README.md)::

    Container, TaskInfo, CallFuture, DeviceProfile, ResourceLimits
    errors: VmError, BundleError (+ subclasses), CompileError, SandboxViolation,
            TaskTimeout, TaskCancelled, TaskError, TaskNotFound, ResourceLimitExceeded,
            ModelError, ModelInputError, InvalidInputs, QueueFull, CircuitOpen,
            UpstreamFailed, TaskGraphError
"""

__version__ = "0.1.0"

from .errors import (  # noqa: E402
    CircuitOpen,
    UpstreamFailed,
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
    VmError,
)
from .container import Container, InvalidInputs  # noqa: E402
from .inference.profile import DeviceProfile  # noqa: E402
from .isolation.errors import WorkerCrashed  # noqa: E402
from .isolation.pool import ProcessLimits  # noqa: E402
from .registry import TaskInfo  # noqa: E402
from .sandbox.limits import ResourceLimits  # noqa: E402
from .scheduler.graph import TaskGraphError  # noqa: E402
from .scheduler.pool import CallFuture, QueueFull  # noqa: E402

__all__ = [
    "__version__",
    "Container",
    "TaskInfo",
    "DeviceProfile",
    "ResourceLimits",
    "ProcessLimits",
    "WorkerCrashed",
    "VmError",
    "BundleError",
    "BundleTooLarge",
    "BundleMalformed",
    "BundleSignatureInvalid",
    "BundleIncompatible",
    "BundleExpired",
    "BundleRollback",
    "BundleNotForThisDevice",
    "BundleDecryptError",
    "BundleIntegrityError",
    "CompileError",
    "Diagnostic",
    "SandboxViolation",
    "TaskTimeout",
    "TaskCancelled",
    "TaskError",
    "TaskNotFound",
    "ResourceLimitExceeded",
    "ModelError",
    "ModelInputError",
    "InvalidInputs",
    "QueueFull",
    "CircuitOpen",
    "UpstreamFailed",
    "TaskGraphError",
    "CallFuture",
]
