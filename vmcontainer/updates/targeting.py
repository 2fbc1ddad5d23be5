"""Which release of each task a device should run: the signed targeting rules.

Shared by the cloud (``vmtool repo`` writes ``ReleaseInfo`` into each TUF
target's ``custom`` field) and the device (which reads it back from *verified*
targets metadata, so every field here is signed by the targets role).

Rules, per task, in this order (``choose``):

1. **Withdrawn** releases (``repo rollback``) are never chosen.
2. **Channel** must equal the device's channel ("stable" by default).
3. **Tags**: every tag of the release must be one of the device's tags (a
   release without tags targets everyone on the channel).
4. **Compatibility**: the release's Python bytecode magic must equal the
   running interpreter's, and its minimum container version must not be above
   this container's (the bundle verifier checks both again; checking here
   saves the download).
5. **Locally bad** releases (crash rollback on this device) are skipped.
6. **Rollout**: ``bucket(device_id, task, release) < rollout`` percent.  The
   bucket is a hash, so it is stable (a device in the 1 % stage stays in at
   10 % and 100 %), needs no server-side device list, and differs per release
   (the same devices are not always the canaries).
7. Of the releases left, the one with the highest **serial** wins.  The serial
   is a per-task deployment counter the repository bumps on every ``add`` and
   every ``rollback``: it orders deployments, where the release number orders
   builds.

What the device then does with the winner (``Plan``) depends on its state:
install it if its release is above the task's high-water mark, install it
*below* the mark only if it carries the signed ``rollback`` directive with a
serial above the last directive seen, otherwise keep what is running.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

CUSTOM_KEY = "vmcontainer"
"""The namespace of our fields inside a TUF target's ``custom`` object."""

DEFAULT_CHANNEL = "stable"
BUCKETS = 100
"""One bucket per percent.  TUF canonical JSON has no floats, so rollout is an integer
percentage; canaries smaller than 1 % use a channel or a tag instead."""

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:=-]{0,63}$")


class ReleaseInfoError(ValueError):
    """A targets entry whose ``custom`` fields do not follow the schema."""


MODEL_PREFIX = "model:"
"""Model bundles are named ``model:NAME`` (``vmtool model bundle``); they ship like tasks."""


def valid_name(name: str) -> bool:
    """Task names and channels become path segments of target files: keep them plain."""
    return isinstance(name, str) and bool(_NAME.match(name))


def valid_bundle_name(name: str) -> bool:
    """A task name, or ``model:`` + a model name."""
    if isinstance(name, str) and name.startswith(MODEL_PREFIX):
        return valid_name(name[len(MODEL_PREFIX):])
    return valid_name(name)


def target_path(name: str, release: int) -> str:
    """The TUF target path of a release: ``tasks/<task>/<release>.vmb``, or
    ``models/<model>/<release>.vmb`` for a model bundle."""
    if name.startswith(MODEL_PREFIX):
        return f"models/{name[len(MODEL_PREFIX):]}/{release}.vmb"
    return f"tasks/{name}/{release}.vmb"


def is_model(name: str) -> bool:
    return name.startswith(MODEL_PREFIX)


def valid_tag(tag: str) -> bool:
    return isinstance(tag, str) and bool(_TAG.match(tag))


def version_tuple(version: str) -> tuple[int, ...]:
    """``"1.10.2"`` -> ``(1, 10, 2)``; non-digits in a piece are ignored ("0.2rc1" -> (0, 21))."""
    parts = []
    for piece in str(version).split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


@dataclass(frozen=True)
class ReleaseInfo:
    """One deployable release of a task, as signed in a target's ``custom`` field."""

    task: str
    release: int
    serial: int
    python_magic: str
    rollout: int = 100
    channel: str = DEFAULT_CHANNEL
    tags: tuple[str, ...] = ()
    min_container: str = "0"
    mandatory: bool = False
    withdrawn: bool = False
    rollback: bool = False
    added: str = ""
    path: str = field(default="", compare=False)  # the TUF target path (not part of custom)

    def to_custom(self) -> dict[str, Any]:
        """The ``custom`` object for targets metadata."""
        return {CUSTOM_KEY: {
            "task": self.task,
            "release": self.release,
            "serial": self.serial,
            "python_magic": self.python_magic,
            "rollout": self.rollout,
            "channel": self.channel,
            "tags": list(self.tags),
            "min_container": self.min_container,
            "mandatory": self.mandatory,
            "withdrawn": self.withdrawn,
            "rollback": self.rollback,
            "added": self.added,
        }}

    @classmethod
    def from_custom(cls, custom: Any, path: str = "") -> ReleaseInfo:
        """Parse and validate; raises ``ReleaseInfoError`` (the entry is then ignored)."""
        if not isinstance(custom, Mapping) or not isinstance(custom.get(CUSTOM_KEY), Mapping):
            raise ReleaseInfoError(f"target {path!r} has no {CUSTOM_KEY!r} custom fields")
        raw = custom[CUSTOM_KEY]

        def get(key: str, typ: type | tuple[type, ...], default: Any = ...) -> Any:
            if key not in raw:
                if default is ...:
                    raise ReleaseInfoError(f"target {path!r}: missing {key!r}")
                return default
            value = raw[key]
            if not isinstance(value, typ) or (isinstance(value, bool) and typ is int):
                raise ReleaseInfoError(f"target {path!r}: {key!r} has the wrong type")
            return value

        info = cls(
            task=get("task", str),
            release=get("release", int),
            serial=get("serial", int),
            python_magic=get("python_magic", str),
            rollout=get("rollout", int, 100),
            channel=get("channel", str, DEFAULT_CHANNEL),
            tags=tuple(get("tags", list, [])),
            min_container=get("min_container", str, "0"),
            mandatory=get("mandatory", bool, False),
            withdrawn=get("withdrawn", bool, False),
            rollback=get("rollback", bool, False),
            added=get("added", str, ""),
            path=path,
        )
        info.validate()
        return info

    def validate(self) -> None:
        if not valid_bundle_name(self.task):
            raise ReleaseInfoError(f"bad task name {self.task!r}")
        if not valid_name(self.channel):
            raise ReleaseInfoError(f"bad channel {self.channel!r}")
        if not all(valid_tag(t) for t in self.tags):
            raise ReleaseInfoError(f"bad tags {list(self.tags)!r}")
        if self.release < 0 or self.serial < 0:
            raise ReleaseInfoError("release and serial must be >= 0")
        if not 0 <= self.rollout <= 100:
            raise ReleaseInfoError(f"rollout {self.rollout} is not a percentage")

    def with_changes(self, **changes: Any) -> ReleaseInfo:
        return replace(self, **changes)


def bucket(device_id: str, task: str, release: int) -> int:
    """This device's rollout position for one release, uniform in 0..99.

    ``sha256("vmcontainer/rollout/v1" | device_id | task | release) mod 100``
    (first 8 bytes, big-endian); NUL separators keep ("ab", "c") and
    ("a", "bc") apart.  The device is in a rollout of ``p`` percent iff
    ``bucket < p``.
    """
    material = b"\x00".join((b"vmcontainer/rollout/v1", device_id.encode("utf-8"),
                             task.encode("utf-8"), str(int(release)).encode("ascii")))
    digest = hashlib.sha256(material).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


@dataclass(frozen=True)
class Audience:
    """What the targeting rules know about this device."""

    device_id: str
    channel: str = DEFAULT_CHANNEL
    tags: frozenset[str] = frozenset()
    python_magic: str = ""
    container_version: str = "0"

    def refusal(self, info: ReleaseInfo, bad: Iterable[int] = ()) -> str | None:
        """Why ``info`` is not for this device (rules 1-6), or ``None`` if it is."""
        if info.withdrawn:
            return "withdrawn"
        if info.channel != self.channel:
            return f"channel {info.channel}"
        missing = set(info.tags) - self.tags
        if missing:
            return f"tags {sorted(missing)}"
        if self.python_magic and info.python_magic != self.python_magic:
            return f"python magic {info.python_magic}"
        if version_tuple(info.min_container) > version_tuple(self.container_version):
            return f"needs container {info.min_container}"
        if info.release in set(bad):
            return "bad on this device"
        if not bucket(self.device_id, info.task, info.release) < info.rollout:
            return f"outside rollout {info.rollout}%"
        return None


@dataclass(frozen=True)
class TaskState:
    """What the device runs and remembers for one task (from the state database)."""

    current_release: int | None = None
    high_water: int | None = None
    rollback_serial: int = -1  # serial of the last rollback directive acted upon
    bad: frozenset[int] = frozenset()


@dataclass(frozen=True)
class Plan:
    """The decision for one task: ``action`` is install, rollback, current or hold."""

    task: str
    action: str
    release: ReleaseInfo | None = None
    reason: str = ""

    @property
    def installs(self) -> bool:
        return self.action in ("install", "rollback")


def choose(task: str, releases: Iterable[ReleaseInfo], audience: Audience,
           state: TaskState) -> Plan:
    """Apply rules 1-7 to one task's releases, then the anti-rollback rule."""
    eligible = [r for r in releases if audience.refusal(r, state.bad) is None]
    if not eligible:
        return Plan(task, "hold", None, "no release targets this device")
    best = max(eligible, key=lambda r: (r.serial, r.release))
    if best.release == state.current_release:
        return Plan(task, "current", best)
    if state.high_water is None or best.release > state.high_water:
        return Plan(task, "install", best)
    if best.rollback and best.serial > state.rollback_serial:
        return Plan(task, "rollback", best, f"signed rollback below high-water {state.high_water}")
    return Plan(task, "hold", best,
                f"release {best.release} is below the high-water mark {state.high_water}")
