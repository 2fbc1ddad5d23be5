"""The device-side container: verify and install bundles, run tasks by name.

Workflow::

    container = Container(trust=["publisher.pub"], device_key="device.key")
    container.install(bundle_bytes)          # verify -> decrypt -> load -> publish
    result = container.invoke("ranker", inputs, timeout=0.5)
    future = container.submit("ranker", inputs)   # concurrent.futures.Future

Install runs the verifier's checks in order (``bundle.verifier``), creates the
release's model sessions, loads the program and only then publishes it
(``registry``).  Each call copies its inputs at the boundary, gets one
``CallScope`` (deadline = min(caller timeout or manifest default, container
maximum), counted from submit, so queue time counts) and runs on a worker
thread in fresh globals (``sandbox.runtime``).
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Iterable, Sequence

from .bundle.format import DEFAULT_CAPS, SizeCaps
from .bundle.keys import KeySource, load_device_private, load_publisher_public
from .bundle.verifier import BundleVerifier
from .errors import VmError
from .inference.profile import DeviceProfile
from .inference.sessions import ModelHub
from .registry import InstalledTask, Registry, TaskInfo
from .sandbox.boundary import BoundaryError, copy_plain
from .scheduler.pool import WorkerPool
from .scheduler.scope import CallScope

log = logging.getLogger("vmcontainer")


class InvalidInputs(VmError, TypeError):
    """Inputs that cannot be handed to a task (not JSON-like data and numeric arrays)."""


def _as_list(value: KeySource | Iterable[KeySource]) -> list[KeySource]:
    if isinstance(value, (bytes, str, Path)):
        return [value]
    return list(value)


class Container:
    """A registry of verified tasks and the workers that run them.  Thread-safe."""

    def __init__(
        self,
        trust: KeySource | Sequence[KeySource],
        device_key: KeySource,
        *,
        workers: int = 2,
        threshold: int = 1,
        max_timeout: float = 30.0,
        caps: SizeCaps = DEFAULT_CAPS,
        profile: DeviceProfile | None = None,
        max_queue: int = 10_000,
        clock_skew: float = 24 * 3600,
    ):
        self._verifier = BundleVerifier(
            [load_publisher_public(k) for k in _as_list(trust)],
            load_device_private(device_key),
            threshold=threshold,
            caps=caps,
            clock_skew=clock_skew,
        )
        self.max_timeout = max_timeout
        self._hub = ModelHub(profile)
        self._registry = Registry()
        self._install_lock = threading.Lock()
        self._pool = WorkerPool(workers, max_queue=max_queue)
        self._closed = False

    # -- installing ---------------------------------------------------------------

    def install(self, bundle: bytes | str | Path, *, allow_rollback: bool = False) -> TaskInfo:
        """Verify ``bundle`` and make it the task's current release (hot swap).

        Raises a ``BundleError`` subclass naming the failed check; nothing is
        installed and the running releases are untouched.
        """
        data = bundle if isinstance(bundle, (bytes, bytearray)) else Path(bundle).read_bytes()
        with self._install_lock:
            verified = self._verifier.verify(
                bytes(data), high_water=self._registry.high_water, allow_rollback=allow_rollback
            )
            task = InstalledTask(verified, self._hub)
            old = self._registry.publish(task)
        if old is not None:
            old.release_models()
        log.info("installed %s release %d", task.info.name, task.info.release,
                 extra={"task": task.info.name, "release": task.info.release})
        return task.info

    def uninstall(self, name: str) -> None:
        with self._install_lock:
            task = self._registry.remove(name)
        task.release_models()

    def tasks(self) -> list[TaskInfo]:
        return self._registry.infos()

    # -- running ------------------------------------------------------------------

    def submit(self, name: str, inputs: Any = None, *, timeout: float | None = None) -> Future:
        """Queue a call; the returned future resolves to the result or a ``VmError``."""
        if self._closed:
            raise RuntimeError("container is closed")
        task = self._registry.get(name)  # fail fast on unknown names
        try:
            data = copy_plain(inputs)
        except (BoundaryError, TypeError) as exc:
            raise InvalidInputs(f"inputs for {name!r}: {exc}") from None
        limit = task.info.timeout if timeout is None else timeout
        if not limit > 0:
            raise ValueError("timeout must be positive")
        scope = CallScope(min(limit, self.max_timeout))
        return self._pool.submit(scope, lambda: self._run(name, data, scope))

    def invoke(self, name: str, inputs: Any = None, *, timeout: float | None = None) -> Any:
        """Run a task and return its result, or raise its error."""
        return self.submit(name, inputs, timeout=timeout).result()

    def _run(self, name: str, data: Any, scope: CallScope) -> Any:
        task: InstalledTask = self._registry.get(name)  # newest release at start
        result, printed = task.program.call(data, scope)
        if printed:
            log.info("%s printed:\n%s", name, printed.rstrip("\n"),
                     extra={"task": name, "release": task.info.release, "call_id": scope.call_id})
        return result

    # -- lifecycle ----------------------------------------------------------------

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._pool.close()
        self._hub.close()

    def __enter__(self) -> "Container":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
