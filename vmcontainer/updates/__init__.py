"""Over-the-air updates: TUF-verified, staged, crash-safe task releases.

The cloud publishes bundles into a TUF repository (``vmtool repo``, see
``bytecode_tools.repo``); each target's signed ``custom`` field says which
devices should run it (``targeting``).  On the device::

    device = DeviceSync(container, "https://cdn.example.com/ota/",
                        root="root.json", state_dir=app_dir / "ota",
                        channel="stable", tags={"eu"})
    device.restore()                 # at start: last good releases, offline
    report = device.sync()           # or device.start_polling(interval=300)
    device.check()                   # crash guard (the poller runs it too)

Roles, one module each, in the order a sync uses them:

=================  ===========================================================
``client``         python-tuf ngclient: verify metadata, download targets
``targeting``      the signed rollout rules: channel, tags, compat, bucket
``installer``      bind bundle to metadata, install hot, persist
``state``          SQLite state + content-addressed bundle store
``guard``          probation of new releases, crash rollback
``poller``         background sync with backoff and jitter
``sync``           ``DeviceSync``: the workflow tying them together
``errors``         one typed error per refusal
=================  ===========================================================

Security properties, and which layer gives them:

* arbitrary install, rollback, freeze, mix-and-match, endless data, key
  compromise of one role - TUF (ngclient), before a byte reaches the container;
* downgrade of a task even after a restart or a TUF-level reset - the
  per-task release high-water mark in SQLite; ``allow_rollback`` only for a
  rollback directive signed in targets metadata, or for a crash rollback to
  this device's own previously verified bundle;
* the bundle itself - the container's verifier (publisher signature,
  device-key decryption), exactly as without OTA.
"""

from .errors import (
    DownloadTooLarge,
    MetadataExpired,
    MetadataMismatch,
    MetadataRefused,
    MetadataRollback,
    MetadataSignatureInvalid,
    RepositoryUnreachable,
    StateError,
    TargetIntegrityError,
    TargetMismatch,
    TargetRefused,
    UpdateError,
)
from .guard import GuardPolicy, ReleaseGuard
from .installer import Outcome
from .poller import Backoff, Poller
from .sync import DeviceSync, SyncReport, restore, sync
from .targeting import Audience, ReleaseInfo, bucket

__all__ = [
    "Audience",
    "Backoff",
    "DeviceSync",
    "DownloadTooLarge",
    "GuardPolicy",
    "MetadataExpired",
    "MetadataMismatch",
    "MetadataRefused",
    "MetadataRollback",
    "MetadataSignatureInvalid",
    "Outcome",
    "Poller",
    "ReleaseGuard",
    "ReleaseInfo",
    "RepositoryUnreachable",
    "StateError",
    "SyncReport",
    "TargetIntegrityError",
    "TargetMismatch",
    "TargetRefused",
    "UpdateError",
    "bucket",
    "restore",
    "sync",
]
