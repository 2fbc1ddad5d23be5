"""Typed errors of the over-the-air updater, and their mapping from python-tuf.

Every refusal names the attack it stopped, so an app (or a test) can tell
"the network is down, try later" from "someone served forged, stale or
oversized data".  Whatever the error, nothing was installed and the
container keeps the releases it was running.

=============================  ============================================  =================
error                          python-tuf cause                              attack / failure
=============================  ============================================  =================
``RepositoryUnreachable``      DownloadError, DownloadHTTPError, timeouts   offline, outage, cut
``DownloadTooLarge``           DownloadLengthMismatchError                   endless data
``MetadataSignatureInvalid``   UnsignedMetadataError                         forged metadata,
                                                                             one stolen role key
``MetadataRollback``           BadVersionNumberError (not Equal...)          replayed old metadata
``MetadataExpired``            ExpiredMetadataError                          freeze
``MetadataMismatch``           LengthOrHashMismatchError on metadata,        mix-and-match
                               any other RepositoryError
``TargetIntegrityError``       LengthOrHashMismatchError on a target         tampered bundle
``TargetMismatch``             (ours) bundle header != signed custom         wrong bundle behind
                                                                             a genuine target
=============================  ============================================  =================
"""

from __future__ import annotations

from ..errors import VmError


class UpdateError(VmError):
    """Base of every update failure; ``cause`` keeps the underlying exception."""

    def __init__(self, message: str, *, cause: BaseException | None = None):
        super().__init__(message)
        self.cause = cause


class RepositoryUnreachable(UpdateError):
    """The repository could not be reached or the transfer broke off; retry later."""


class DownloadTooLarge(UpdateError):
    """A response went past the length the trusted metadata (or the client cap) allows."""


class MetadataRefused(UpdateError):
    """TUF metadata failed verification; the trusted metadata on the device is unchanged."""


class MetadataSignatureInvalid(MetadataRefused):
    """Metadata is not signed by a threshold of the keys the trusted root names for its role."""


class MetadataRollback(MetadataRefused):
    """Metadata is older than metadata the device already trusts (replay / rollback attack)."""


class MetadataExpired(MetadataRefused):
    """The newest metadata on offer has expired (freeze attack, or a repository not re-signing)."""


class MetadataMismatch(MetadataRefused):
    """Metadata does not match the length, hash or version its parent role signed for it
    (mix-and-match), or is otherwise malformed."""


class TargetRefused(UpdateError):
    """A target file was refused; other tasks of the same sync still update."""


class TargetIntegrityError(TargetRefused):
    """The downloaded bundle does not match the length and hash signed in targets metadata."""


class TargetMismatch(TargetRefused):
    """The bundle's own signed header disagrees with its targets entry (task, release, python)."""


class StateError(UpdateError):
    """The device's update state (SQLite database or bundle store) is unusable."""


def from_tuf(exc: BaseException, *, target: bool = False) -> UpdateError:
    """Translate a python-tuf (or transport) exception into a typed ``UpdateError``.

    ``target`` says whether the failure happened while fetching a target file,
    so that a hash mismatch is reported as a tampered target rather than as
    mix-and-match metadata.
    """
    from tuf.api import exceptions as tx

    if isinstance(exc, UpdateError):
        return exc
    message = _describe(exc)
    if isinstance(exc, tx.DownloadLengthMismatchError):
        return DownloadTooLarge(message, cause=exc)
    if isinstance(exc, tx.DownloadError):
        return RepositoryUnreachable(message, cause=exc)
    if isinstance(exc, tx.UnsignedMetadataError):
        return MetadataSignatureInvalid(message, cause=exc)
    if isinstance(exc, tx.ExpiredMetadataError):
        return MetadataExpired(message, cause=exc)
    if isinstance(exc, tx.BadVersionNumberError):
        return MetadataRollback(message, cause=exc)
    if isinstance(exc, tx.LengthOrHashMismatchError):
        if target:
            return TargetIntegrityError(message, cause=exc)
        return MetadataMismatch(message, cause=exc)
    if isinstance(exc, tx.RepositoryError):
        return MetadataMismatch(message, cause=exc)
    if isinstance(exc, (OSError, ConnectionError, TimeoutError)) or _is_transport(exc):
        return RepositoryUnreachable(message, cause=exc)
    return UpdateError(message, cause=exc)


def _describe(exc: BaseException) -> str:
    """``Type: message``, with the first cause that says something when the
    exception itself is empty (ngclient's ``SlowRetrievalError`` wraps urllib3's)."""
    text = f"{type(exc).__name__}: {exc}".rstrip(": ")
    cause = exc.__cause__ or exc.__context__
    depth = 0
    while cause is not None and depth < 4:
        reason = getattr(cause, "reason", None)
        detail = str(reason or cause)
        if detail:
            return f"{text} ({detail})"
        cause = cause.__cause__ or cause.__context__
        depth += 1
    return text


def _is_transport(exc: BaseException) -> bool:
    """urllib3 errors raised mid-stream (a cut connection) escape ngclient's wrapping."""
    return type(exc).__module__.startswith(("urllib3", "http.client"))
