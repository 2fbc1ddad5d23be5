"""The over-the-air update repository: a TUF repository of task bundles.

Layout of ``DIR``::

    repo.json                 settings: expiry per role, releases kept per task
    keys/                     Ed25519 role keys, 0600 (``repo_keys.KeyStore``)
    metadata/                 staged, signed working copies: root, targets,
                              snapshot, timestamp (not served)
    root.json                 the newest published root: ship it in app builds
    public/                   what the web server / CDN origin serves
      metadata/N.root.json    every root version (clients walk the chain)
      metadata/N.targets.json consistent snapshots: immutable, versioned
      metadata/N.snapshot.json
      metadata/timestamp.json the only mutable file (short cache TTL)
      targets/tasks/<task>/<sha256>.<release>.vmb   immutable bundles
      targets/models/<model>/<sha256>.<release>.vmb model bundles (``model:NAME``)

Workflow: ``add``, ``set_rollout``, ``rollback`` and ``rotate_keys`` change
the *staged* targets (and root) metadata - re-signed at once, still invisible
to devices.  ``publish`` makes them live, writing files in the order that
keeps every client consistent: bundles (already there), root, targets,
snapshot, and the timestamp last, by atomic rename.  Run ``publish`` from
cron too: it renews the timestamp (and anything close to expiry).

Each role has its own keys and threshold (the root threshold is chosen at
``init``); the root is signed by a threshold of both the previous and the new
root keys whenever it changes, which is what lets devices follow a rotation.

A release's targeting lives in the target's signed ``custom`` field
(``vmcontainer.updates.targeting.ReleaseInfo``).  A rollback is a
*roll-forward of the deployment*: the bad release is marked withdrawn and the
previous one is re-pointed with a new, higher serial and the signed
``rollback`` directive.  The bundle itself cannot be renumbered (its release
is inside the publisher-signed header), so devices install that previous
bundle below their high-water mark only because targets metadata - which an
attacker cannot sign - says so.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tuf.api.exceptions import UnsignedMetadataError
from tuf.api.metadata import (
    Metadata,
    MetaFile,
    Root,
    Signed,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.repository import Repository

from vmcontainer import __version__ as container_version
from vmcontainer.updates.targeting import (
    CUSTOM_KEY,
    DEFAULT_CHANNEL,
    ReleaseInfo,
    ReleaseInfoError,
    target_path,
    valid_bundle_name,
    valid_name,
    valid_tag,
)

from .builder import inspect_bundle
from .repo_keys import KeyStore

ROLES = ("root", "targets", "snapshot", "timestamp")
DEFAULT_EXPIRY = {
    "root": timedelta(days=365),
    "targets": timedelta(days=90),
    "snapshot": timedelta(days=7),
    "timestamp": timedelta(days=1),
}


class RepoError(Exception):
    """A repository operation was refused (message says why and what to do)."""


def parse_duration(text: str) -> timedelta:
    """``"90d"``, ``"12h"``, ``"30m"``, ``"45s"`` -> timedelta."""
    units = {"d": 86400, "h": 3600, "m": 60, "s": 1}
    text = text.strip().lower()
    if not text or text[-1] not in units:
        raise ValueError(f"duration {text!r} needs a unit: d, h, m or s")
    value = float(text[:-1])
    if value <= 0:
        raise ValueError("duration must be positive")
    return timedelta(seconds=value * units[text[-1]])


@dataclass
class RepoSettings:
    """``repo.json``: what ``init`` chose and later commands follow."""

    expiry: dict[str, timedelta]
    keep: int = 5  # releases kept in targets metadata per task and channel

    def to_json(self) -> dict[str, Any]:
        return {"format": 1, "keep": self.keep,
                "expiry_seconds": {r: int(d.total_seconds()) for r, d in self.expiry.items()}}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> RepoSettings:
        expiry = {r: timedelta(seconds=s) for r, s in obj["expiry_seconds"].items()}
        return cls(expiry={**DEFAULT_EXPIRY, **expiry}, keep=int(obj.get("keep", 5)))


def _write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _write_immutable(path: Path, data: bytes) -> None:
    """Consistent-snapshot files never change once written (CDNs cache them forever)."""
    if path.exists():
        if path.read_bytes() != data:
            raise RepoError(f"refusing to overwrite immutable {path.name} with different bytes")
        return
    _write_atomic(path, data)


class UpdateRepository(Repository):
    """A filesystem TUF repository of task bundles (see the module docstring)."""

    def __init__(self, path: str | os.PathLike, *, now: Callable[[], datetime] | None = None):
        self.dir = Path(path)
        settings = self.dir / "repo.json"
        if not settings.exists():
            raise RepoError(f"{self.dir} is not an update repository (run `vmtool repo init`)")
        self.settings = RepoSettings.from_json(json.loads(settings.read_text()))
        self.keys = KeyStore(self.dir / "keys")
        self._now = now or (lambda: datetime.now(UTC))

    # -- creating ---------------------------------------------------------------------

    @classmethod
    def init(cls, path: str | os.PathLike, *, root_keys: int = 1, root_threshold: int = 1,
             expiry: dict[str, timedelta] | None = None, keep: int = 5,
             now: Callable[[], datetime] | None = None) -> UpdateRepository:
        """Create keys, sign version 1 of every role and publish it."""
        if not 1 <= root_threshold <= root_keys:
            raise RepoError("need 1 <= root threshold <= number of root keys")
        if keep < 1:
            raise RepoError("keep must be at least 1")
        base = Path(path)
        if (base / "repo.json").exists():
            raise RepoError(f"{base} is already an update repository")
        for sub in ("metadata", "public/metadata", "public/targets"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        settings = RepoSettings(expiry={**DEFAULT_EXPIRY, **(expiry or {})}, keep=keep)
        _write_atomic(base / "repo.json", json.dumps(settings.to_json(), indent=2).encode())
        repo = cls(base, now=now)
        repo.keys.create()
        with repo.edit_root() as root:
            for role in ROLES:
                count = root_keys if role == "root" else 1
                for _ in range(count):
                    root.add_key(repo.keys.generate(role), role)
            root.roles["root"].threshold = root_threshold
        with repo.edit_targets():
            pass
        repo.publish()
        return repo

    # -- tuf.repository.Repository ----------------------------------------------------

    def _staged(self, role: str) -> Path:
        return self.dir / "metadata" / f"{role}.json"

    def open(self, role: str) -> Metadata:
        """The staged copy of ``role``, or a fresh, unsigned first version."""
        path = self._staged(role)
        if path.exists():
            return Metadata.from_bytes(path.read_bytes())
        expires = self._now() + self.settings.expiry[role]
        signed: Signed
        if role == "root":
            signed = Root(expires=expires, consistent_snapshot=True)
        elif role == "targets":
            signed = Targets(expires=expires)
        elif role == "snapshot":
            signed = Snapshot(expires=expires, meta={})
        else:
            signed = Timestamp(expires=expires, snapshot_meta=self.snapshot_info)
        return Metadata(signed)

    def close(self, role: str, md: Metadata) -> None:
        """Version (one above the published one), expiry, signatures; write staged."""
        md.signed.version = max(md.signed.version, self.published_version(role) + 1)
        md.signed.expires = self._now() + self.settings.expiry[role]
        md.signatures.clear()
        for keyid in self._signing_keyids(role, md):
            signer = self.keys.signer(keyid)
            if signer is not None:
                md.sign(signer, append=True)
        self._check_threshold(role, md)
        _write_atomic(self._staged(role), md.to_bytes())

    def _signing_keyids(self, role: str, md: Metadata) -> list[str]:
        root = md.signed if role == "root" else self.root()
        keyids = list(root.roles[role].keyids)
        if role == "root":
            published = self.published_root()
            if published is not None:  # the previous root's keys must sign the next root too
                keyids += [k for k in published.roles["root"].keyids if k not in keyids]
        return keyids

    def _check_threshold(self, role: str, md: Metadata) -> None:
        roots = [md.signed] if role == "root" else [self.root()]
        if role == "root" and self.published_root() is not None:
            roots.append(self.published_root())
        for root in roots:
            try:
                root.verify_delegate(role, md.signed_bytes, md.signatures)
            except UnsignedMetadataError as exc:
                raise RepoError(f"cannot sign {role}: {exc} (missing keys in keys/?)") from None

    @property
    def targets_infos(self) -> dict[str, MetaFile]:
        data = self._staged("targets").read_bytes()
        version = Metadata.from_bytes(data).signed.version
        return {"targets.json": MetaFile.from_data(version, data, ["sha256"])}

    @property
    def snapshot_info(self) -> MetaFile:
        data = self._staged("snapshot").read_bytes()
        version = Metadata.from_bytes(data).signed.version
        return MetaFile.from_data(version, data, ["sha256"])

    # -- what devices see ---------------------------------------------------------------

    @property
    def public(self) -> Path:
        return self.dir / "public"

    def published_root(self) -> Root | None:
        version = self.published_version("root")
        if version == 0:
            return None
        path = self.public / "metadata" / f"{version}.root.json"
        return Metadata[Root].from_bytes(path.read_bytes()).signed

    def published_version(self, role: str) -> int:
        """The version of ``role`` devices currently get (0 = never published)."""
        meta = self.public / "metadata"
        if role == "root":
            versions = [int(p.name.split(".")[0]) for p in meta.glob("*.root.json")]
            return max(versions, default=0)
        ts_path = meta / "timestamp.json"
        if not ts_path.exists():
            return 0
        timestamp = Metadata[Timestamp].from_bytes(ts_path.read_bytes()).signed
        if role == "timestamp":
            return timestamp.version
        if role == "snapshot":
            return timestamp.snapshot_meta.version
        snap_path = meta / f"{timestamp.snapshot_meta.version}.snapshot.json"
        snapshot = Metadata[Snapshot].from_bytes(snap_path.read_bytes()).signed
        return snapshot.meta["targets.json"].version

    # -- releases -----------------------------------------------------------------------

    def releases(self, task: str | None = None) -> list[ReleaseInfo]:
        """Staged releases (newest first), optionally of one task."""
        out = []
        for path, target in self.targets().targets.items():
            try:
                info = ReleaseInfo.from_custom(target.custom, path)
            except ReleaseInfoError:
                continue
            if task is None or info.task == task:
                out.append(info)
        return sorted(out, key=lambda r: (r.task, -r.release))

    def add(self, bundle: bytes, *, rollout: int = 100, channel: str = DEFAULT_CHANNEL,
            tags: Iterable[str] = (), mandatory: bool = False,
            min_container: str | None = None) -> ReleaseInfo:
        """Stage a bundle as a new release of its task (the task and release come from
        the bundle's header).  Releases of a task must increase."""
        header = inspect_bundle(bundle)["header"]
        task, release = header["task"], header["release"]
        if not valid_bundle_name(task):
            raise RepoError(f"task name {task!r} cannot be a target path (letters, digits, _.-)")
        if not valid_name(channel):
            raise RepoError(f"bad channel {channel!r}")
        tags = tuple(sorted(set(tags)))
        if not all(valid_tag(t) for t in tags):
            raise RepoError(f"bad tags {list(tags)}")
        if isinstance(rollout, bool) or int(rollout) != rollout or not 0 <= rollout <= 100:
            raise RepoError("rollout is a whole percentage: 0..100")
        existing = self.releases(task)
        if existing and release <= existing[0].release:
            raise RepoError(
                f"{task} release {release} is not above the newest staged release "
                f"{existing[0].release}: build a higher release (a rollback is `repo rollback`)")
        info = ReleaseInfo(
            task=task, release=release, serial=self._next_serial(existing),
            python_magic=header["python"]["magic"], rollout=int(rollout), channel=channel,
            tags=tags, min_container=min_container or container_version, mandatory=mandatory,
            added=self._now().strftime("%Y-%m-%dT%H:%M:%SZ"),
            path=target_path(task, release))
        target = TargetFile.from_data(info.path, bundle, ["sha256"])
        target.unrecognized_fields["custom"] = info.to_custom()
        folder, _, file = info.path.rpartition("/")
        blob = self.public / "targets" / folder / f"{target.hashes['sha256']}.{file}"
        _write_immutable(blob, bundle)
        with self.edit_targets() as targets:
            targets.targets[info.path] = target
            self._prune(targets, task, channel)
        return info

    @staticmethod
    def _next_serial(existing: list[ReleaseInfo]) -> int:
        return max((r.serial for r in existing), default=0) + 1

    def _prune(self, targets: Targets, task: str, channel: str) -> None:
        """Keep the newest ``keep`` releases of a task per channel in metadata (smaller
        metadata for every device); the bundle files stay on the CDN."""
        mine = []
        for path, target in targets.targets.items():
            try:
                info = ReleaseInfo.from_custom(target.custom, path)
            except ReleaseInfoError:
                continue
            if info.task == task and info.channel == channel:
                mine.append(info)
        mine.sort(key=lambda r: -r.release)
        for old in mine[self.settings.keep:]:
            del targets.targets[old.path]

    def _update(self, targets: Targets, info: ReleaseInfo) -> None:
        target = targets.targets[info.path]
        target.unrecognized_fields["custom"] = info.to_custom()

    def set_rollout(self, task: str, percent: int, *, release: int | None = None,
                    channel: str | None = None) -> ReleaseInfo:
        """Change the rollout percentage of a release (default: the task's newest
        active release, in ``channel`` if given)."""
        if isinstance(percent, bool) or int(percent) != percent or not 0 <= percent <= 100:
            raise RepoError("rollout is a whole percentage: 0..100")
        info = self._find(task, release=release, channel=channel)
        if info.withdrawn:
            raise RepoError(f"{task} release {info.release} is withdrawn")
        new = info.with_changes(rollout=int(percent))
        with self.edit_targets() as targets:
            self._update(targets, new)
        return new

    def _find(self, task: str, *, release: int | None, channel: str | None) -> ReleaseInfo:
        candidates = [r for r in self.releases(task)
                      if (channel is None or r.channel == channel)
                      and (r.release == release if release is not None else not r.withdrawn)]
        if not candidates:
            what = f"release {release}" if release is not None else "an active release"
            raise RepoError(f"task {task!r} has no {what}"
                            + (f" in channel {channel!r}" if channel else ""))
        return candidates[0]

    def rollback(self, task: str, *, channel: str | None = None,
                 to: int | None = None) -> tuple[list[ReleaseInfo], ReleaseInfo]:
        """Withdraw the newest active release(s) and re-point the previous good one.

        Returns (withdrawn releases, the release devices go back to).  The
        restored target gets the next serial, ``rollback=True`` and 100 %
        rollout: every device in the channel that ran a withdrawn release
        reinstalls it below its high-water mark, on this signed directive.
        """
        newest = self._find(task, release=None, channel=channel)
        channel = newest.channel
        active = [r for r in self.releases(task) if r.channel == channel and not r.withdrawn]
        if to is None:
            older = [r for r in active if r.release < newest.release]
            if not older:
                raise RepoError(f"{task} has no active release before {newest.release} in "
                                f"channel {channel!r} to roll back to")
            target = older[0]
        else:
            matches = [r for r in active if r.release == to]
            if not matches or to >= newest.release:
                raise RepoError(f"{task} release {to} is not an active release below "
                                f"{newest.release} in channel {channel!r}")
            target = matches[0]
        withdrawn = [r.with_changes(withdrawn=True) for r in active if r.release > target.release]
        restored = target.with_changes(rollback=True, rollout=100,
                                       serial=self._next_serial(self.releases(task)))
        with self.edit_targets() as targets:
            for info in withdrawn:
                self._update(targets, info)
            self._update(targets, restored)
        return withdrawn, restored

    # -- keys ---------------------------------------------------------------------------

    def rotate_keys(self, role: str, *, keys: int = 1, threshold: int | None = None) -> list[str]:
        """Replace every key of ``role`` with ``keys`` new ones (staged in root; live at
        ``publish``, which also re-signs the role's metadata with the new keys)."""
        if role not in ROLES:
            raise RepoError(f"role must be one of {', '.join(ROLES)}")
        if keys < 1:
            raise RepoError("need at least one key")
        new_ids = []
        with self.edit_root() as root:
            old = list(root.roles[role].keyids)
            new_threshold = threshold if threshold is not None else \
                min(root.roles[role].threshold, keys)
            if not 1 <= new_threshold <= keys:
                raise RepoError("need 1 <= threshold <= keys")
            for _ in range(keys):
                key = self.keys.generate(role)
                root.add_key(key, role)
                new_ids.append(key.keyid)
            for keyid in old:
                root.revoke_key(keyid, role)
            root.roles[role].threshold = new_threshold
        return new_ids

    # -- publishing ---------------------------------------------------------------------

    def _needs_resign(self, role: str) -> bool:
        """Close to expiry, or not verifiable under the staged root (its keys rotated)."""
        md = self.open(role)
        lifetime = self.settings.expiry[role]
        if md.signed.expires - self._now() < lifetime / 2:
            return True
        root = md.signed if role == "root" else self.root()
        try:
            root.verify_delegate(role, md.signed_bytes, md.signatures)
        except UnsignedMetadataError:
            return True
        return False

    def _snapshot(self, force: bool) -> None:
        """A new snapshot when the staged targets differ from what it lists (version,
        length or hash) or when it must be re-signed."""
        current = self.open("snapshot").signed.meta.get("targets.json")
        new = self.targets_infos["targets.json"]
        if force or current != new:
            with self.edit_snapshot() as snapshot:
                snapshot.meta["targets.json"] = new

    def publish(self) -> dict[str, Any]:
        """Make staged changes live; renew what is close to expiry.  Returns the new
        published versions and what changed."""
        before = {role: self.published_version(role) for role in ROLES}
        for role in ("root", "targets"):
            if self._needs_resign(role):
                with self.edit(role):
                    pass
        self._snapshot(force=self._needs_resign("snapshot"))
        with self.edit_timestamp() as timestamp:  # always: a fresh expiry
            timestamp.snapshot_meta = self.snapshot_info
        meta = self.public / "metadata"
        root_md = self.open("root")
        if root_md.signed.version > before["root"]:
            _write_immutable(meta / f"{root_md.signed.version}.root.json",
                             self._staged("root").read_bytes())
        targets_version = self.open("targets").signed.version
        _write_immutable(meta / f"{targets_version}.targets.json",
                         self._staged("targets").read_bytes())
        snapshot_version = self.open("snapshot").signed.version
        _write_immutable(meta / f"{snapshot_version}.snapshot.json",
                         self._staged("snapshot").read_bytes())
        _write_atomic(meta / "timestamp.json", self._staged("timestamp").read_bytes())
        _write_atomic(self.dir / "root.json", self._staged("root").read_bytes())
        retired = self._retire_unused_keys()
        after = {role: self.published_version(role) for role in ROLES}
        return {"versions": after,
                "changed": sorted(r for r in ROLES if after[r] != before[r]),
                "retired_keys": retired}

    def _retire_unused_keys(self) -> list[str]:
        root = self.root()
        used = {k for role in root.roles.values() for k in role.keyids}
        retired = sorted(self.keys.keyids() - used)
        for keyid in retired:
            self.keys.retire(keyid)
        return retired

    # -- status -------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Roles (staged vs published version, expiry, keys) and every release."""
        root = self.root()
        roles = {}
        for role in ROLES:
            md = self.open(role)
            roles[role] = {
                "published": self.published_version(role),
                "staged": md.signed.version,
                "expires": md.signed.expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "keys": list(root.roles[role].keyids),
                "threshold": root.roles[role].threshold,
            }
        pending = any(roles[r]["staged"] > roles[r]["published"] for r in ("root", "targets"))
        return {
            "roles": roles,
            "pending_publish": pending,
            "releases": [{**r.to_custom()[CUSTOM_KEY], "path": r.path} for r in self.releases()],
        }

