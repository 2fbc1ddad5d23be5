"""The task registry: installed releases by name, swapped atomically.

A call takes a reference to one ``InstalledTask`` when it starts and keeps
it, so installing release N+1 never disturbs a call running on release N and
no call ever sees a half-installed task: the new release is fully built
(verified, sessions created, program loaded) before one dict assignment
publishes it.  The per-task release high-water mark outlives uninstall, so a
removed task cannot come back at a lower release.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

from .bundle.verifier import VerifiedBundle
from .errors import TaskNotFound
from .inference.refs import ModelBinding, ModelNotInstalled, bind_all
from .inference.sessions import LoadedModel, ModelHandle, ModelHub
from .inference.store import ModelStore
from .sandbox.guards import violation
from .sandbox.limits import DEFAULT_LIMITS, ResourceLimits
from .sandbox.runtime import TaskProgram
from .scheduler.scope import CallScope


@dataclass(frozen=True)
class TaskInfo:
    """Public description of an installed task release."""

    name: str
    release: int
    entry: str
    lane: str
    timeout: float
    models: tuple[str, ...]
    signers: tuple[str, ...]
    installed_at: float
    meta: dict[str, Any] = field(default_factory=dict)
    requires: tuple[str, ...] = ()
    then: tuple[str, ...] = ()
    warmup_ms: float | None = None  # the install-time dry run (first call), if any

    def with_warmup(self, ms: float | None) -> TaskInfo:
        return replace(self, warmup_ms=ms)


class TaskView:
    """What a script's ``vm`` module reads of its release: the same class in both
    isolation modes (the worker builds one of its own).  Separate from
    ``InstalledTask`` so the program's ``vm`` factory holds no reference back to
    the release that holds the program: a replaced release is then freed by
    reference counting, not left to the cyclic garbage collector."""

    __slots__ = ("hub", "models", "name", "release")

    def __init__(self, name: str, release: int, models: dict[str, Any], hub: ModelHub):
        self.name = name
        self.release = release
        self.models = models
        self.hub = hub


class VmModule:
    """The ``vm`` module a script imports: its window onto the container."""

    __slots__ = ("_handles", "_scope", "_task")

    def __init__(self, task: TaskView, scope: CallScope):
        object.__setattr__(self, "_task", task)
        object.__setattr__(self, "_scope", scope)
        object.__setattr__(self, "_handles", {})

    def __setattr__(self, name: str, value: Any) -> None:
        raise violation('module "vm" is read-only')

    def __repr__(self) -> str:
        return "<module 'vm' (container API)>"

    @property
    def task(self) -> str:
        return self._task.name

    @property
    def release(self) -> int:
        return self._task.release

    def remaining(self) -> float:
        """Seconds left before this call's deadline."""
        return self._scope.remaining()

    def model(self, name: str) -> ModelHandle:
        handle = self._handles.get(name)
        if handle is None:
            model = self._task.models.get(name) if type(name) is str else None
            if model is None:
                raise violation(
                    f"model {name!r} is not declared by this task "
                    f"(declared: {sorted(self._task.models)})"
                )
            handle = ModelHandle(name, model, self._scope, self._task.hub.watchdog)
            self._handles[name] = handle
        return handle


class InstalledTask:
    def __init__(self, verified: VerifiedBundle, hub: ModelHub,
                 limits: ResourceLimits = DEFAULT_LIMITS, store: ModelStore | None = None):
        m = verified.manifest
        self.hub = hub
        self._claimed = True
        self.models: dict[str, LoadedModel | ModelBinding] = {}
        try:
            for model_name, blob in verified.models.items():
                self.models[model_name] = hub.acquire(model_name, m["models"][model_name], blob)
            if m.get("model_refs"):  # models installed from model bundles (inference.refs)
                if store is None:
                    raise ModelNotInstalled("this container has no model store for model_refs")
                self.models.update(bind_all(m["model_refs"], store, verified.name))
        except BaseException:
            self.release_models()
            raise
        self.info = TaskInfo(
            name=verified.name,
            release=verified.release,
            entry=m["entry"],
            lane=m["lane"],
            timeout=float(m["timeout"]),
            models=tuple(sorted(self.models)),
            signers=verified.signers,
            installed_at=time.time(),
            meta=dict(m["meta"]),
            requires=tuple(m["requires"]),
            then=tuple(m["then"]),
        )
        self.warmup_inputs = m["warmup"]
        self.spec: Any = None  # ProgramSpec, in process isolation
        self.program = TaskProgram(
            verified.code,
            name=verified.name,
            release=verified.release,
            entry=m["entry"],
            vm_factory=partial(VmModule, TaskView(verified.name, verified.release, self.models, hub)),
            limits=limits,
        )

    def release_models(self) -> None:
        """Drop this release's claim on shared sessions.  Calls still running on it
        keep working: they hold the session objects themselves."""
        models = self.models
        if self._claimed:
            for model in models.values():
                if isinstance(model, ModelBinding):
                    model.close()
                else:
                    self.hub.release(model)
        self._claimed = False


class Registry:
    def __init__(self) -> None:
        self._tasks: dict[str, InstalledTask] = {}
        self._high_water: dict[str, int] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> InstalledTask:
        task = self._tasks.get(name)
        if task is None:
            raise TaskNotFound(f"no task named {name!r} is installed")
        return task

    def has(self, name: str) -> bool:
        return name in self._tasks

    def high_water(self, name: str) -> int | None:
        return self._high_water.get(name)

    def publish(self, task: InstalledTask) -> InstalledTask | None:
        """Make ``task`` the current release; return the one it replaced."""
        with self._lock:
            old = self._tasks.get(task.info.name)
            self._tasks[task.info.name] = task
            hw = self._high_water.get(task.info.name)
            self._high_water[task.info.name] = max(task.info.release, hw if hw is not None else -1)
            return old

    def remove(self, name: str) -> InstalledTask:
        with self._lock:
            task = self._tasks.pop(name, None)
        if task is None:
            raise TaskNotFound(f"no task named {name!r} is installed")
        return task

    def infos(self) -> list[TaskInfo]:
        return sorted((t.info for t in list(self._tasks.values())), key=lambda i: i.name)

    def all(self) -> list[InstalledTask]:
        return list(self._tasks.values())
