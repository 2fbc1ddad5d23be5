"""The device's update state: what runs, what it may never go below, what is bad.

Two parts under ``state_dir``:

* ``bundles/<sha256>.vmb`` - a content-addressed store of verified bundle
  bytes.  A file is written to a temporary name, fsynced and renamed, and its
  digest is checked again on every read, so a torn write or a flipped bit is a
  missing bundle, never a wrong one.  Bundles stay encrypted at rest.
* ``state.sqlite`` - one SQLite database (WAL, ``synchronous=FULL``: the
  high-water mark must survive a power cut), with:

  ``installed``   per task: the current release (sha256, release, serial,
                  ``probation`` or ``good``, probation call counts) and the
                  fallback release a crash rollback returns to;
  ``high_water``  per task: the highest release ever installed - the
                  anti-rollback mark that outlives restarts - and the serial
                  of the last signed rollback directive acted upon;
  ``bad``         releases this device refuses (crashed on probation, or
                  refused by the bundle verifier);
  ``events``      crash rollbacks and removals not yet reported by a sync;
  ``meta``        the device id.

Every change that moves a task is one transaction: a crash between installing
in the container and committing leaves the previous state, which ``restore``
brings back and the next sync repeats.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import StateError
from .targeting import TaskState

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS installed (
    task TEXT PRIMARY KEY,
    sha256 TEXT NOT NULL,
    release INTEGER NOT NULL,
    serial INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('probation', 'good')),
    installed_at REAL NOT NULL,
    probe_calls INTEGER NOT NULL DEFAULT 0,
    probe_failures INTEGER NOT NULL DEFAULT 0,
    boots INTEGER NOT NULL DEFAULT 0,
    fallback_sha256 TEXT,
    fallback_release INTEGER,
    fallback_serial INTEGER
);
CREATE TABLE IF NOT EXISTS high_water (
    task TEXT PRIMARY KEY,
    release INTEGER NOT NULL,
    rollback_serial INTEGER NOT NULL DEFAULT -1
);
CREATE TABLE IF NOT EXISTS bad (
    task TEXT NOT NULL,
    release INTEGER NOT NULL,
    reason TEXT NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY (task, release)
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    kind TEXT NOT NULL,
    task TEXT NOT NULL,
    release INTEGER,
    detail TEXT NOT NULL,
    reported INTEGER NOT NULL DEFAULT 0
);
"""


@dataclass(frozen=True)
class Installed:
    """One row of ``installed``."""

    task: str
    sha256: str
    release: int
    serial: int
    status: str
    installed_at: float
    probe_calls: int
    probe_failures: int
    boots: int
    fallback_sha256: str | None
    fallback_release: int | None
    fallback_serial: int | None

    @property
    def on_probation(self) -> bool:
        return self.status == "probation"


class BundleStore:
    """Content-addressed, verified-on-read bundle files."""

    def __init__(self, root: Path):
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.tmp = root / "tmp"
        self.tmp.mkdir(exist_ok=True)
        for stale in self.tmp.glob("*.part"):  # downloads cut by a crash or a kill
            stale.unlink(missing_ok=True)

    def path(self, sha256: str) -> Path:
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise StateError("bad bundle digest")
        return self.root / f"{sha256}.vmb"

    def put(self, data: bytes) -> str:
        """Store ``data`` durably; return its sha256 (the key)."""
        digest = hashlib.sha256(data).hexdigest()
        final = self.path(digest)
        if final.exists() and self.get(digest) is not None:
            return digest
        tmp = self.tmp / f"{digest}.{uuid.uuid4().hex}.part"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
        _fsync_dir(self.root)
        return digest

    def get(self, sha256: str) -> bytes | None:
        """The bundle bytes, or ``None`` if missing or not matching their digest."""
        try:
            data = self.path(sha256).read_bytes()
        except OSError:
            return None
        return data if hashlib.sha256(data).hexdigest() == sha256 else None

    def has(self, sha256: str) -> bool:
        return self.get(sha256) is not None

    def gc(self, keep: set[str]) -> int:
        """Delete every bundle not in ``keep``; return how many went."""
        gone = 0
        for f in self.root.glob("*.vmb"):
            if f.stem not in keep:
                f.unlink(missing_ok=True)
                gone += 1
        return gone


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class DeviceState:
    """The SQLite database plus the bundle store.  Thread-safe (one lock)."""

    def __init__(self, state_dir: str | os.PathLike):
        self.dir = Path(state_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.store = BundleStore(self.dir / "bundles")
        self._lock = threading.RLock()
        try:
            self._db = sqlite3.connect(self.dir / "state.sqlite", isolation_level=None,
                                       check_same_thread=False, timeout=10)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(f"BEGIN;\n{_SCHEMA}\nCOMMIT;")  # one fsync, not five
            with self.transaction() as db:
                row = db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
                if row is None:
                    db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
                elif int(row[0]) != SCHEMA_VERSION:
                    raise StateError(f"state schema {row[0]} is not {SCHEMA_VERSION}")
        except sqlite3.Error as exc:
            raise StateError(f"update state database unusable: {exc}", cause=exc) from None

    # -- plumbing -----------------------------------------------------------------

    def transaction(self) -> _Transaction:
        return _Transaction(self)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- identity -----------------------------------------------------------------

    def device_id(self, requested: str | None = None) -> str:
        """The persisted device id: ``requested`` if given (and then remembered),
        else the one made on first use (a random UUID)."""
        with self.transaction() as db:
            row = db.execute("SELECT value FROM meta WHERE key='device_id'").fetchone()
            if row is not None and requested in (None, row[0]):
                return str(row[0])
            if requested is not None:
                db.execute("INSERT OR REPLACE INTO meta VALUES ('device_id', ?)", (requested,))
                return requested
            new = uuid.uuid4().hex
            db.execute("INSERT INTO meta VALUES ('device_id', ?)", (new,))
            return new

    # -- reads --------------------------------------------------------------------

    def installed(self) -> dict[str, Installed]:
        with self._lock:
            rows = self._db.execute(
                "SELECT task, sha256, release, serial, status, installed_at, probe_calls, "
                "probe_failures, boots, fallback_sha256, fallback_release, fallback_serial "
                "FROM installed ORDER BY task").fetchall()
        return {r[0]: Installed(*r) for r in rows}

    def high_water(self) -> dict[str, tuple[int, int]]:
        with self._lock:
            rows = self._db.execute("SELECT task, release, rollback_serial FROM high_water")
            return {t: (r, s) for t, r, s in rows.fetchall()}

    def bad(self) -> dict[str, dict[int, str]]:
        out: dict[str, dict[int, str]] = {}
        with self._lock:
            for task, release, reason in self._db.execute("SELECT task, release, reason FROM bad"):
                out.setdefault(task, {})[release] = reason
        return out

    def task_state(self, task: str) -> TaskState:
        inst = self.installed().get(task)
        hw = self.high_water().get(task)
        return TaskState(
            current_release=inst.release if inst else None,
            high_water=hw[0] if hw and hw[0] >= 0 else None,
            rollback_serial=hw[1] if hw else -1,
            bad=frozenset(self.bad().get(task, {})),
        )

    def referenced(self) -> set[str]:
        """Digests the store must keep: every current and fallback bundle."""
        keep: set[str] = set()
        for inst in self.installed().values():
            keep.add(inst.sha256)
            if inst.fallback_sha256:
                keep.add(inst.fallback_sha256)
        return keep

    # -- writes -------------------------------------------------------------------

    def record_install(self, task: str, sha256: str, release: int, serial: int, *,
                       status: str, fallback: tuple[str, int, int] | None,
                       rollback_serial: int | None = None) -> None:
        """Make ``release`` the task's current one, raise the high-water mark (never
        lower it) and remember the fallback - one transaction."""
        with self.transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO installed (task, sha256, release, serial, status, "
                "installed_at, fallback_sha256, fallback_release, fallback_serial) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (task, sha256, release, serial, status, time.time(),
                 *(fallback if fallback else (None, None, None))))
            db.execute(
                "INSERT INTO high_water (task, release) VALUES (?, ?) ON CONFLICT(task) "
                "DO UPDATE SET release = MAX(release, excluded.release)", (task, release))
            if rollback_serial is not None:
                self._note_rollback_serial(db, task, rollback_serial)

    def note_rollback_serial(self, task: str, serial: int) -> None:
        with self.transaction() as db:
            self._note_rollback_serial(db, task, serial)

    @staticmethod
    def _note_rollback_serial(db: sqlite3.Connection, task: str, serial: int) -> None:
        db.execute("INSERT INTO high_water (task, release, rollback_serial) VALUES (?, -1, ?) "
                   "ON CONFLICT(task) DO UPDATE SET rollback_serial = "
                   "MAX(rollback_serial, excluded.rollback_serial)", (task, serial))

    def save_probation(self, task: str, release: int, calls: int, failures: int) -> None:
        with self.transaction() as db:
            db.execute("UPDATE installed SET probe_calls = ?, probe_failures = ? "
                       "WHERE task = ? AND release = ? AND status = 'probation'",
                       (calls, failures, task, release))

    def confirm(self, task: str, release: int) -> None:
        """Probation passed: the release is now the task's known-good one."""
        with self.transaction() as db:
            db.execute("UPDATE installed SET status = 'good' WHERE task = ? AND release = ?",
                       (task, release))

    def count_boot(self, task: str, release: int) -> int:
        """One more process start while ``release`` is on probation; return the count."""
        with self.transaction() as db:
            db.execute("UPDATE installed SET boots = boots + 1 WHERE task = ? AND release = ? "
                       "AND status = 'probation'", (task, release))
            row = db.execute("SELECT boots FROM installed WHERE task = ?", (task,)).fetchone()
        return int(row[0]) if row else 0

    def mark_bad(self, task: str, release: int, reason: str) -> None:
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO bad VALUES (?, ?, ?, ?)",
                       (task, release, reason[:500], time.time()))

    def revert(self, task: str) -> Installed | None:
        """Crash rollback bookkeeping: the fallback becomes current (known good);
        with no fallback the task's row goes.  Returns the new row, if any."""
        with self.transaction() as db:
            row = self.installed().get(task)
            if row is None:
                return None
            if row.fallback_sha256 is None:
                db.execute("DELETE FROM installed WHERE task = ?", (task,))
                return None
            db.execute(
                "UPDATE installed SET sha256 = ?, release = ?, serial = ?, status = 'good', "
                "installed_at = ?, probe_calls = 0, probe_failures = 0, boots = 0, "
                "fallback_sha256 = NULL, fallback_release = NULL, fallback_serial = NULL "
                "WHERE task = ?",
                (row.fallback_sha256, row.fallback_release, row.fallback_serial, time.time(), task))
        return self.installed().get(task)

    def forget(self, task: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM installed WHERE task = ?", (task,))

    def add_event(self, kind: str, task: str, release: int | None, detail: dict[str, Any]) -> None:
        with self.transaction() as db:
            db.execute("INSERT INTO events (at, kind, task, release, detail) "
                       "VALUES (?, ?, ?, ?, ?)",
                       (time.time(), kind, task, release, json.dumps(detail, sort_keys=True)))

    def take_unreported(self) -> list[dict[str, Any]]:
        """Events no sync report has carried yet; marks them reported."""
        with self.transaction() as db:
            rows = db.execute("SELECT id, at, kind, task, release, detail FROM events "
                              "WHERE reported = 0 ORDER BY id").fetchall()
            if rows:
                db.execute("UPDATE events SET reported = 1 WHERE reported = 0")
        return [{"at": at, "kind": kind, "task": task, "release": release, **json.loads(detail)}
                for _id, at, kind, task, release, detail in rows]

    def events(self, limit: int = 50) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute("SELECT at, kind, task, release, detail, reported FROM events "
                                    "ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        return [{"at": at, "kind": kind, "task": task, "release": release,
                 "reported": bool(rep), **json.loads(detail)}
                for at, kind, task, release, detail, rep in rows]


class _Transaction:
    """``with state.transaction() as db``: BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on error."""

    def __init__(self, state: DeviceState):
        self._state = state

    def __enter__(self) -> sqlite3.Connection:
        self._state._lock.acquire()
        try:
            self._depth = self._state._db.in_transaction
            if not self._depth:
                self._state._db.execute("BEGIN IMMEDIATE")
        except BaseException:
            self._state._lock.release()
            raise
        return self._state._db

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        try:
            if not self._depth:
                if exc_type is None:
                    self._state._db.execute("COMMIT")
                else:
                    self._state._db.execute("ROLLBACK")
        finally:
            self._state._lock.release()

