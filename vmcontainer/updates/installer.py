"""Moving tasks between releases: install, restore after a restart, roll back.

The ``Installer`` is the only code that calls ``container.install`` for the
updater, and it always does the same three things in order:

1. **bind**: the bundle's clear header must name the task, release and
   Python magic its signed targets entry names (``TargetMismatch``) - the
   container then checks the publisher's signature over that very header, so
   after install the TUF metadata and the bundle provably agree;
2. **install**: ``container.install(bytes, allow_rollback=...)`` - hot and
   atomic; ``allow_rollback`` is passed only for a signed rollback directive
   and for a crash rollback to this device's own known-good bundle;
3. **persist**: one SQLite transaction records the new current release, its
   fallback and the raised high-water mark.

Installs follow task-graph order: a task whose prerequisites are not
installed yet (``TaskGraphError``) is retried after the others.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from ..bundle import format as fmt
from ..errors import BundleExpired, BundleRollback, VmError
from ..scheduler.graph import TaskGraphError
from .errors import StateError, TargetMismatch
from .state import DeviceState, Installed
from .targeting import ReleaseInfo, is_model

log = logging.getLogger("vmcontainer.updates")

T = TypeVar("T")

# Refusals that depend on time or order, not on the bundle: never mark a release bad for them.
TRANSIENT = (TaskGraphError, BundleRollback, BundleExpired)


class ContainerLike(Protocol):
    """What the updater needs from ``vmcontainer.Container`` (the fleet benchmark
    plugs in a verify-only stand-in)."""

    def install(self, bundle: bytes, *, allow_rollback: bool = False) -> Any: ...

    def tasks(self) -> list[Any]: ...

    def metrics(self) -> dict[str, Any]: ...

    def uninstall(self, name: str) -> None: ...


@dataclass
class Outcome:
    """What happened to one task in an install pass."""

    task: str
    release: int | None
    action: str  # installed | rollback | restored | fallback | crash_rollback | removed | failed
    previous: int | None = None
    error: BaseException | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"task": self.task, "release": self.release, "action": self.action}
        if self.previous is not None:
            out["previous"] = self.previous
        if self.error is not None:
            out["error"] = {"type": type(self.error).__name__, "message": str(self.error)}
        out.update(self.detail)
        return out


def in_graph_order(items: Iterable[T], attempt: Callable[[T], None]) -> list[tuple[T, Exception]]:
    """Run ``attempt`` on every item; retry those that failed with ``TaskGraphError``
    (a prerequisite not installed yet) while a pass makes progress.  Returns the
    items that finally failed, with their errors."""
    pending = list(items)
    final: list[tuple[T, Exception]] = []
    while pending:
        waiting: list[tuple[T, Exception]] = []
        progress = False
        for item in pending:
            try:
                attempt(item)
                progress = True
            except TaskGraphError as exc:
                waiting.append((item, exc))
            except Exception as exc:  # reported per item
                final.append((item, exc))
        if not waiting or not progress:
            final.extend(waiting)
            break
        pending = [item for item, _ in waiting]
    return final


def running_names(container: ContainerLike) -> set[str]:
    """Names of the tasks and model bundles (``model:NAME``) the container runs."""
    names = {getattr(t, "name", None) for t in container.tasks()}
    models = getattr(container, "models", None)  # containers with model bundles
    if callable(models):
        names |= {getattr(m, "name", None) for m in models()}
    return {n for n in names if n}


def check_binding(release: ReleaseInfo, data: bytes) -> None:
    """Step 1: the bundle's header names the same task, release and Python magic."""
    try:
        header = fmt.parse_bundle(data).header
    except VmError as exc:
        raise TargetMismatch(f"{release.path}: not a bundle: {exc}", cause=exc) from None
    if header["task"] != release.task or header["release"] != release.release:
        raise TargetMismatch(
            f"{release.path}: bundle is {header['task']!r} release {header['release']}, "
            f"targets metadata says {release.task!r} release {release.release}")
    if header["python"]["magic"] != release.python_magic:
        raise TargetMismatch(f"{release.path}: bundle python magic differs from targets metadata")


class Installer:
    """Installs into one container and keeps ``DeviceState`` in step with it."""

    def __init__(self, container: ContainerLike, state: DeviceState, *, probation: bool = True):
        self.container = container
        self.state = state
        self.probation = probation

    # -- sync installs ----------------------------------------------------------------

    def install(self, release: ReleaseInfo, data: bytes, sha256: str, *,
                directive: bool = False) -> Outcome:
        """Bind, install, persist one release.  ``directive`` = signed rollback."""
        check_binding(release, data)
        current = self.state.installed().get(release.task)
        info = self.container.install(data, allow_rollback=directive)
        if getattr(info, "name", release.task) != release.task or \
                getattr(info, "release", release.release) != release.release:
            raise TargetMismatch("installed task does not match its targets entry")
        if directive:
            status, fallback = "good", None
        else:
            # A model bundle has no calls of its own to watch: the tasks using it do.
            watched = self.probation and not is_model(release.task)
            status = "probation" if watched else "good"
            fallback = self._fallback_for(current)
        self.state.record_install(release.task, sha256, release.release, release.serial,
                                  status=status, fallback=fallback,
                                  rollback_serial=release.serial if directive else None)
        log.info("update: %s release %d installed%s", release.task, release.release,
                 " (signed rollback)" if directive else "")
        return Outcome(release.task, release.release, "rollback" if directive else "installed",
                       previous=current.release if current else None,
                       detail={"serial": release.serial, "mandatory": release.mandatory})

    @staticmethod
    def _fallback_for(current: Installed | None) -> tuple[str, int, int] | None:
        """A crash rollback returns to the last release that passed probation, else to the
        one running before."""
        if current is None:
            return None
        if current.status == "good" or current.fallback_sha256 is None:
            return (current.sha256, current.release, current.serial)
        return (current.fallback_sha256, current.fallback_release or 0,
                current.fallback_serial or 0)

    def should_mark_bad(self, exc: BaseException) -> bool:
        """A refusal by the verifier or a failing warm-up will repeat: remember it."""
        return isinstance(exc, VmError) and not isinstance(exc, TRANSIENT) \
            and not isinstance(exc, StateError)

    # -- restart ----------------------------------------------------------------------

    def restore(self, max_boots: int | None = None) -> list[Outcome]:
        """Reinstall every task's current release from the store - no network.

        A current bundle that is missing, corrupt or refused gives way to its
        fallback.  With ``max_boots``, a release still on probation after that
        many process starts is treated as crashing (Shorebird's boot marker).
        """
        rows = list(self.state.installed().values())
        outcomes: list[Outcome] = []
        installed_names = running_names(self.container)

        def attempt(row: Installed) -> None:
            if row.task in installed_names:
                return
            if row.on_probation and max_boots is not None:
                boots = self.state.count_boot(row.task, row.release)
                if boots > max_boots:
                    self.state.mark_bad(row.task, row.release, f"on probation for {boots} starts")
                    outcomes.append(self._restore_fallback(row, "crash_rollback",
                                                           f"{boots} starts on probation"))
                    return
            data = self.state.store.get(row.sha256)
            if data is None:
                outcomes.append(self._restore_fallback(row, "fallback",
                                                       "bundle missing or corrupt"))
                return
            try:
                self.container.install(data)
            except TaskGraphError:
                raise
            except VmError as exc:
                if self.should_mark_bad(exc):
                    self.state.mark_bad(row.task, row.release, f"restore: {type(exc).__name__}")
                outcomes.append(self._restore_fallback(row, "fallback", type(exc).__name__))
                return
            outcomes.append(Outcome(row.task, row.release, "restored",
                                    detail={"status": row.status}))

        for row, exc in in_graph_order(rows, attempt):
            outcomes.append(Outcome(row.task, row.release, "failed", error=exc))
        return outcomes

    def _restore_fallback(self, row: Installed, action: str, why: str) -> Outcome:
        new = self.state.revert(row.task)
        self.state.add_event(action, row.task, row.release, {"reason": why,
                                                             "to": new.release if new else None})
        if new is None:
            return Outcome(row.task, None, "removed", previous=row.release, detail={"reason": why})
        data = self.state.store.get(new.sha256)
        if data is None:
            self.state.forget(row.task)
            return Outcome(row.task, None, "removed", previous=row.release,
                           detail={"reason": why + "; fallback bundle missing"})
        self.container.install(data, allow_rollback=True)
        return Outcome(row.task, new.release, action, previous=row.release, detail={"reason": why})

    # -- crash rollback ---------------------------------------------------------------

    def roll_back(self, task: str, release: int, reason: str) -> Outcome:
        """The guard's verdict: ``release`` is bad here; put the fallback back."""
        row = self.state.installed().get(task)
        if row is None or row.release != release:
            return Outcome(task, release, "stale")
        self.state.mark_bad(task, release, reason)
        fallback = self.state.store.get(row.fallback_sha256) if row.fallback_sha256 else None
        if fallback is None:
            self.state.forget(task)
            try:
                self.container.uninstall(task)
                action = "removed"
            except VmError as exc:  # others link to it: leave it running, reported
                action = f"kept ({type(exc).__name__})"
            self.state.add_event("crash_rollback", task, release,
                                 {"reason": reason, "to": None, "action": action})
            log.warning("update: %s release %d is bad (%s); no fallback: %s",
                        task, release, reason, action)
            return Outcome(task, None, "crash_rollback", previous=release,
                           detail={"reason": reason, "result": action})
        self.container.install(fallback, allow_rollback=True)
        new = self.state.revert(task)
        to = new.release if new else None
        self.state.add_event("crash_rollback", task, release, {"reason": reason, "to": to})
        log.warning("update: %s release %d is bad (%s); back on release %s",
                    task, release, reason, to)
        return Outcome(task, to, "crash_rollback", previous=release, detail={"reason": reason})
