"""The one error process isolation adds to the public hierarchy."""

from __future__ import annotations

from ..errors import VmError


class WorkerCrashed(VmError):
    """The worker process running the call died (segfault, out-of-memory kill,
    resource limit), sent a malformed reply, or could not be started.  The call
    failed; the container replaced the worker and stays healthy."""
