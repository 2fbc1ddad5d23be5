"""``DeviceSync``: one device's updater - restore, sync, guard, poll.

A sync, step by step (``DeviceSync.sync``):

1. **guard**: run the crash guard first, so a release that just went bad is
   rolled back and excluded before anything new is chosen;
2. **refresh**: TUF root -> timestamp -> snapshot -> targets
   (``client.RepositoryClient``); any failure raises a typed ``UpdateError``
   and changes nothing;
3. **releases**: read our ``custom`` fields from the verified targets
   (``targeting.ReleaseInfo``; a malformed entry is ignored and counted);
4. **plan**: per task, ``targeting.choose`` - channel, tags, compatibility,
   locally bad releases, rollout bucket, highest serial, then the high-water
   rule (install above the mark; below it only for a signed rollback
   directive);
5. **fetch**: from the local store if this bundle is already there, else
   download (hash-prefixed, length-capped, hash-checked); a refused download
   fails that task only;
6. **install**: in task-graph order (``installer.Installer``): bind the bundle
   header to its targets entry, ``container.install`` (hot, atomic), persist
   state; new releases start probation (``guard.ReleaseGuard``);
7. **report**: what was installed, held, deferred, failed, plus the crash
   rollbacks since the last report; unreferenced bundles are deleted.

``restore()`` brings a fresh container back to the last good releases from
the state directory alone - no network, no TUF metadata, no clock.
"""

from __future__ import annotations

import importlib.util
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from .. import __version__ as container_version
from .client import CountingFetcher, RepositoryClient, TrustedTarget
from .errors import UpdateError
from .guard import GuardPolicy, ReleaseGuard
from .installer import ContainerLike, Installer, Outcome, in_graph_order, running_names
from .poller import Poller
from .state import DeviceState
from .targeting import (
    DEFAULT_CHANNEL,
    Audience,
    Plan,
    ReleaseInfo,
    ReleaseInfoError,
    choose,
    is_model,
)

RUNNING_MAGIC = importlib.util.MAGIC_NUMBER.hex()
DEFAULT_GUARD = GuardPolicy()


@dataclass
class SyncReport:
    """The outcome of one sync (``to_dict()`` is what ``vmc update --json`` prints)."""

    device_id: str
    metadata: dict[str, int] = field(default_factory=dict)
    installed: list[Outcome] = field(default_factory=list)
    current: list[str] = field(default_factory=list)
    held: list[dict[str, Any]] = field(default_factory=list)
    deferred: list[dict[str, Any]] = field(default_factory=list)
    failed: list[Outcome] = field(default_factory=list)
    crash_rollbacks: list[dict[str, Any]] = field(default_factory=list)
    ignored_targets: int = 0
    requests: int = 0
    bytes: int = 0
    duration_s: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed

    def errors(self) -> list[BaseException]:
        return [o.error for o in self.failed if o.error is not None]

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "device_id": self.device_id,
            "metadata": self.metadata,
            "installed": [o.to_dict() for o in self.installed],
            "current": self.current,
            "held": self.held,
            "deferred": self.deferred,
            "failed": [o.to_dict() for o in self.failed],
            "crash_rollbacks": self.crash_rollbacks,
            "ignored_targets": self.ignored_targets,
            "requests": self.requests,
            "bytes": self.bytes,
            "duration_s": round(self.duration_s, 4),
        }


def _read_root(root: bytes | str | os.PathLike | None) -> bytes | None:
    if root is None or isinstance(root, bytes):
        return root
    return Path(root).read_bytes()


class DeviceSync:
    """The updater bound to one container and one state directory.  Thread-safe:
    one sync at a time (``_sync_lock``); every change of what runs - install,
    restore, crash rollback - under ``_state_lock``, which a sync does not hold
    while it downloads, so the guard can roll back during a slow download."""

    def __init__(
        self,
        container: ContainerLike,
        repo_url: str | None,
        *,
        root: bytes | str | os.PathLike | None,
        state_dir: str | os.PathLike,
        device_id: str | None = None,
        channel: str = DEFAULT_CHANNEL,
        tags: Iterable[str] = (),
        guard: GuardPolicy | None = DEFAULT_GUARD,
        defer_optional: bool | Callable[[], bool] = False,
        fetcher_factory: Callable[[], CountingFetcher] | None = None,  # e.g. app proxies, UA
        python_magic: str = RUNNING_MAGIC,
        version: str = container_version,
    ):
        self.container = container
        self.repo_url = repo_url
        self._root = _read_root(root)
        self.state = DeviceState(state_dir)
        self.device_id = self.state.device_id(device_id)
        self.audience = Audience(self.device_id, channel, frozenset(tags), python_magic, version)
        self.installer = Installer(container, self.state, probation=guard is not None)
        self.guard = (ReleaseGuard(container, self.state, guard, self.installer.roll_back)
                      if guard is not None else None)
        self._defer_optional = defer_optional
        register = getattr(container, "add_metrics_source", None)
        if register is not None:  # crash rollbacks and bad releases show in metrics()
            register("updates", self.status)
        # One fetcher (one urllib3 connection pool) for the life of the updater:
        # a poll reuses the kept-alive connection instead of a new TCP/TLS handshake.
        self.fetcher = (fetcher_factory or CountingFetcher)()
        self._sync_lock = threading.Lock()
        self._state_lock = threading.RLock()
        self._poller: Poller | None = None
        self.last_report: SyncReport | None = None
        self.last_error: UpdateError | None = None

    # -- restart --------------------------------------------------------------------------

    def restore(self) -> list[Outcome]:
        """Reinstall the last good releases from local state; needs no network."""
        with self._state_lock:
            outcomes = self.installer.restore(self.guard.policy.max_boots if self.guard else None)
            if self.guard is not None:
                for row in self.state.installed().values():
                    if row.on_probation:
                        self.guard.watch(row.task, row.release, calls=row.probe_calls,
                                         failures=row.probe_failures)
            return outcomes

    # -- crash guard ------------------------------------------------------------------------

    def check(self) -> list[Outcome]:
        """Run the crash guard now; returns the rollbacks it made."""
        if self.guard is None:
            return []
        with self._state_lock:
            return self.guard.check()

    # -- sync -----------------------------------------------------------------------------

    def sync(self) -> SyncReport:
        """One update pass (steps 1-7 of the module docstring).

        Raises a typed ``UpdateError`` when metadata cannot be refreshed or is
        refused; per-target refusals are in ``report.failed``.
        """
        if self.repo_url is None or self._root is None:
            raise ValueError("sync needs repo_url and root")
        with self._sync_lock:
            started = time.monotonic()
            self.check()                                                   # 1
            fetcher = self.fetcher
            requests_before, bytes_before = fetcher.requests, fetcher.bytes
            try:
                client = RepositoryClient(self.repo_url, self.state.dir / "tuf", self._root,
                                          fetcher=fetcher)
                client.refresh()                                           # 2
            except UpdateError as exc:
                self.last_error = exc
                raise
            report = SyncReport(self.device_id, metadata=client.versions())
            targets = {t.path: t for t in client.targets()}
            by_task, report.ignored_targets = self._releases(targets.values())   # 3
            with self._state_lock:
                plans = self._plan(by_task, report)                       # 4
            fetched = self._fetch(client, targets, plans, report)         # 5
            with self._state_lock:
                self._install(fetched, report)                            # 6
                report.crash_rollbacks = self.state.take_unreported()     # 7
                self.state.store.gc(self.state.referenced())
            report.requests = fetcher.requests - requests_before
            report.bytes = fetcher.bytes - bytes_before
            report.duration_s = time.monotonic() - started
            self.last_report, self.last_error = report, None
            return report

    @staticmethod
    def _releases(targets: Iterable[TrustedTarget]) -> tuple[dict[str, list[ReleaseInfo]], int]:
        by_task: dict[str, list[ReleaseInfo]] = {}
        ignored = 0
        for target in targets:
            try:
                info = ReleaseInfo.from_custom(target.custom, target.path)
            except ReleaseInfoError:
                ignored += 1
                continue
            by_task.setdefault(info.task, []).append(info)
        return by_task, ignored

    def _plan(self, by_task: dict[str, list[ReleaseInfo]], report: SyncReport) -> list[Plan]:
        defer = self._defer_optional() if callable(self._defer_optional) else self._defer_optional
        plans = []
        for task in sorted(by_task):
            plan = choose(task, by_task[task], self.audience, self.state.task_state(task))
            if plan.action == "current":
                report.current.append(task)
                if plan.release is not None and plan.release.rollback:
                    self.state.note_rollback_serial(task, plan.release.serial)
            elif plan.action == "hold":
                report.held.append({"task": task, "release": plan.release.release
                                    if plan.release else None, "reason": plan.reason})
            elif defer and plan.action == "install" and plan.release is not None \
                    and not plan.release.mandatory:
                report.deferred.append({"task": task, "release": plan.release.release,
                                        "reason": "optional update deferred by device policy"})
            else:
                plans.append(plan)
        return plans

    def _fetch(self, client: RepositoryClient, targets: dict[str, TrustedTarget],
               plans: list[Plan], report: SyncReport) -> list[tuple[Plan, bytes, str]]:
        fetched = []
        for plan in plans:
            assert plan.release is not None
            target = targets[plan.release.path]
            data = self.state.store.get(target.sha256)
            if data is None or len(data) != target.length:
                try:
                    data = client.download(target, self.state.store.tmp)
                except UpdateError as exc:  # in transit: never marks the release bad
                    report.failed.append(Outcome(plan.task, plan.release.release, "failed",
                                                 error=exc))
                    continue
                self.state.store.put(data)
            fetched.append((plan, data, target.sha256))
        return fetched

    def _install(self, fetched: list[tuple[Plan, bytes, str]], report: SyncReport) -> None:
        def attempt(item: tuple[Plan, bytes, str]) -> None:
            plan, data, sha = item
            assert plan.release is not None
            outcome = self.installer.install(plan.release, data, sha,
                                             directive=plan.action == "rollback")
            report.installed.append(outcome)
            if self.guard is not None and plan.action == "install" and not is_model(plan.task):
                self.guard.watch(plan.task, plan.release.release)

        for (plan, _data, _sha), exc in in_graph_order(fetched, attempt):
            assert plan.release is not None
            if self.installer.should_mark_bad(exc):
                self.state.mark_bad(plan.task, plan.release.release,
                                    f"install: {type(exc).__name__}: {exc}")
            report.failed.append(Outcome(plan.task, plan.release.release, "failed", error=exc))

    # -- polling --------------------------------------------------------------------------

    def start_polling(self, *, interval: float = 300.0, retry: float = 5.0,
                      max_backoff: float = 3600.0, jitter: float = 0.1,
                      guard_interval: float = 5.0, initial_delay: float = 0.0,
                      on_result: Callable[[Any], None] | None = None) -> Poller:
        """Sync in the background (see ``poller``); ``stop_polling()`` or ``close()`` ends it."""
        with self._state_lock:
            if self._poller is not None and self._poller.running:
                raise RuntimeError("already polling")
            self._poller = Poller(self.sync, self.check, interval=interval, retry=retry,
                                  max_backoff=max_backoff, jitter=jitter,
                                  guard_interval=guard_interval, initial_delay=initial_delay,
                                  on_result=on_result).start()
            return self._poller

    def stop_polling(self) -> None:
        poller, self._poller = self._poller, None
        if poller is not None:
            poller.stop()

    # -- status ---------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Everything a support engineer asks about an update: JSON-ready."""
        installed = {
            row.task: {"release": row.release, "serial": row.serial, "status": row.status,
                       "fallback": row.fallback_release, "installed_at": row.installed_at}
            for row in self.state.installed().values()}
        return {
            "device_id": self.device_id,
            "channel": self.audience.channel,
            "tags": sorted(self.audience.tags),
            "installed": installed,
            "high_water": {t: {"release": r, "rollback_serial": s}
                           for t, (r, s) in self.state.high_water().items()},
            "bad": {t: {str(r): why for r, why in rs.items()}
                    for t, rs in self.state.bad().items()},
            "guard": self.guard.status() if self.guard is not None else None,
            "last_sync": self.last_report.to_dict() if self.last_report else None,
            "last_error": ({"type": type(self.last_error).__name__, "message": str(self.last_error)}
                           if self.last_error else None),
            "events": self.state.events(20),
        }

    # -- lifecycle ------------------------------------------------------------------------

    def close(self) -> None:
        self.stop_polling()
        self.state.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def sync(container: ContainerLike, repo_url: str, *, root: bytes | str | os.PathLike,
         state_dir: str | os.PathLike, device_id: str | None = None,
         channel: str = DEFAULT_CHANNEL, tags: Iterable[str] = (), **options: Any) -> SyncReport:
    """One-shot: restore the state into ``container`` if it is empty, then sync once.

    Long-running apps keep a ``DeviceSync`` instead (the crash guard needs it).
    """
    with DeviceSync(container, repo_url, root=root, state_dir=state_dir, device_id=device_id,
                    channel=channel, tags=tags, **options) as device:
        if not running_names(container):
            device.restore()
        return device.sync()


def restore(container: ContainerLike, state_dir: str | os.PathLike,
            **options: Any) -> list[Outcome]:
    """One-shot offline restore of the last good releases into ``container``."""
    with DeviceSync(container, None, root=None, state_dir=state_dir, **options) as device:
        return device.restore()
