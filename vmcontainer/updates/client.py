"""The TUF side of a sync: python-tuf's ``ngclient.Updater`` and nothing else.

``RepositoryClient`` runs the TUF client workflow (the specification's
section 5, implemented by ngclient) and translates its exceptions into
``updates.errors``:

1. **root**: starting from the root shipped with the app (``bootstrap``),
   load each ``N+1.root.json`` signed by a threshold of both the old and
   the new root keys (key rotation);
2. **timestamp**: signed by the timestamp keys, version not below the trusted
   one (rollback), not expired (freeze), at most ``timestamp_max_length``
   bytes (endless data);
3. **snapshot**: length, hash and version as the timestamp says
   (mix-and-match), signed by the snapshot keys, no targets version lower
   than the trusted snapshot lists;
4. **targets**: length, hash and version as the snapshot says, signed by the
   targets keys, not expired;
5. **target files**: fetched hash-prefixed (``<sha256>.<name>``: immutable
   URLs a CDN can cache forever), at most the signed length, then hash-checked
   - into a temporary file, so a cut download never reaches the store.

ngclient persists each metadata file only after it verified, so the device's
trusted metadata never regresses, even across restarts.  It has no API to
list targets; like sigstore-python and tufup we read the verified top-level
targets from its trusted set (``_trusted_targets``, the only private access,
in one place).  Repositories here use top-level targets only: no delegations.
"""

from __future__ import annotations

import hashlib
import os
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .errors import TargetIntegrityError, UpdateError, from_tuf

try:
    from tuf.api.metadata import TargetFile
    from tuf.ngclient import Updater, UpdaterConfig
    from tuf.ngclient.urllib3_fetcher import Urllib3Fetcher
except ImportError as _exc:  # pragma: no cover - the "ota" extra is not installed
    raise ImportError(
        "vmcontainer.updates needs python-tuf: pip install 'vmcontainer[ota]'") from _exc


# Tighter than ngclient's defaults: our metadata is small, and every cap is
# an upper bound on what a hostile server can make a device download.
DEFAULT_CONFIG = {
    "root_max_length": 256 << 10,
    "timestamp_max_length": 16 << 10,
    "snapshot_max_length": 1 << 20,
    "targets_max_length": 4 << 20,
    "max_root_rotations": 64,
}


class CountingFetcher(Urllib3Fetcher):
    """ngclient's urllib3 fetcher, counting requests and bytes (for reports and the
    fleet benchmark) and with a short socket timeout (slow retrieval)."""

    def __init__(self, socket_timeout: int = 15, user_agent: str | None = None):
        super().__init__(socket_timeout=socket_timeout, app_user_agent=user_agent)
        self._lock = threading.Lock()
        self.requests = 0
        self.bytes = 0

    def _fetch(self, url: str) -> Iterator[bytes]:
        with self._lock:
            self.requests += 1
        for chunk in super()._fetch(url):
            with self._lock:
                self.bytes += len(chunk)
            yield chunk


@dataclass(frozen=True)
class TrustedTarget:
    """A target entry from verified targets metadata."""

    path: str
    length: int
    sha256: str
    custom: object
    info: TargetFile


class RepositoryClient:
    """One sync's view of the repository.  ngclient refreshes once per ``Updater``,
    so every sync makes a fresh client; the metadata cache persists in ``metadata_dir``."""

    def __init__(self, repo_url: str, metadata_dir: Path, bootstrap_root: bytes, *,
                 fetcher: CountingFetcher | None = None, config: UpdaterConfig | None = None):
        base = repo_url if repo_url.endswith("/") else repo_url + "/"
        metadata_dir.mkdir(parents=True, exist_ok=True)
        self.fetcher = fetcher or CountingFetcher()
        try:
            self._updater = Updater(
                metadata_dir=str(metadata_dir),
                metadata_base_url=base + "metadata/",
                target_base_url=base + "targets/",
                fetcher=self.fetcher,
                config=config or UpdaterConfig(**DEFAULT_CONFIG),
                bootstrap=bootstrap_root,
            )
        except Exception as exc:  # every failure becomes a typed UpdateError
            raise from_tuf(exc) from None

    def refresh(self) -> None:
        """Steps 1-4: root, timestamp, snapshot, targets - or a typed ``UpdateError``."""
        try:
            self._updater.refresh()
        except Exception as exc:  # urllib3 errors can escape ngclient's wrapping
            raise from_tuf(exc) from None

    def targets(self) -> list[TrustedTarget]:
        """The verified top-level targets (call after ``refresh``)."""
        out = []
        for path, info in sorted(_trusted_targets(self._updater).items()):
            sha = info.hashes.get("sha256")
            if sha:
                out.append(TrustedTarget(path, info.length, sha, info.custom, info))
        return out

    def versions(self) -> dict[str, int]:
        """Trusted version of each top-level role, for the sync report."""
        trusted = self._updater._trusted_set
        return {role: trusted[role].version for role in ("root", "timestamp", "snapshot", "targets")
                if role in trusted}

    def download(self, target: TrustedTarget, tmp_dir: Path) -> bytes:
        """Step 5: fetch at most the signed length, check the signed hash, return the bytes.

        ngclient streams into a temporary file and verifies before copying to
        ``filepath``; we then re-hash the copy, so neither a cut transfer nor a
        crash during the copy can yield a partial bundle.
        """
        tmp = tmp_dir / f"{uuid.uuid4().hex}.part"
        try:
            try:
                self._updater.download_target(target.info, filepath=str(tmp))
            except Exception as exc:  # ditto, mid-stream
                raise from_tuf(exc, target=True) from None
            data = tmp.read_bytes()
            if len(data) != target.length or hashlib.sha256(data).hexdigest() != target.sha256:
                raise TargetIntegrityError(f"{target.path}: local copy does not match its hash")
            return data
        except UpdateError:
            raise
        except OSError as exc:
            raise UpdateError(f"cannot write {target.path}: {exc}", cause=exc) from None
        finally:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass


def _trusted_targets(updater: Updater) -> dict[str, TargetFile]:
    """ngclient exposes no listing API: read the verified top-level targets.

    Only reachable after ``refresh()`` succeeded, i.e. after targets metadata
    passed every check of steps 1-4.
    """
    trusted = updater._trusted_set
    if "targets" not in trusted:
        return {}
    return dict(trusted.targets.targets)
