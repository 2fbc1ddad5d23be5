"""Device-side bundle verification: every check, in order, failing closed.

The order is the security argument (docs/bundle-format.md):

1. size caps                      -> BundleTooLarge
2. strict parse                   -> BundleMalformed (an unknown format version byte:
                                     BundleIncompatible, since nothing else can be read)
3. signature threshold            -> BundleSignatureInvalid   (header, which commits to
                                     the ciphertext digest, then that digest)
4. compatibility                  -> BundleIncompatible      (format, python magic, cache_tag)
5. expiry                         -> BundleExpired
6. anti-rollback                  -> BundleRollback
7. unwrap the content key         -> BundleNotForThisDevice
8. decrypt (header is the AAD)    -> BundleDecryptError
9. plaintext hash, payload caps, manifest, model digests -> BundleIntegrityError
   (payload over a cap: BundleTooLarge); manifest ``min_container`` above this
   container's version -> BundleIncompatible
10. only then ``marshal.loads``   -> BundleIntegrityError if the bytes are not a code object

The recipients table is not signed, so anyone on the path can add a wrap that
opens to a wrong key; every wrap under this device's key id is tried until one
yields a key that authenticates the ciphertext (at most ``MAX_WRAPS_TRIED``).

Nothing is unmarshalled, decrypted or executed before the signature holds.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import marshal
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import CodeType

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .. import __version__ as container_version
from ..errors import (
    BundleDecryptError,
    BundleError,
    BundleExpired,
    BundleIncompatible,
    BundleIntegrityError,
    BundleMalformed,
    BundleNotForThisDevice,
    BundleRollback,
    BundleSignatureInvalid,
)
from . import format as fmt
from .keys import DevicePrivateKey, key_id

MAX_WRAPS_TRIED = 4


@functools.lru_cache(maxsize=64)  # a handful of distinct versions, parsed on every install
def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


RUNNING_PYTHON = {
    "impl": sys.implementation.name,
    "magic": importlib.util.MAGIC_NUMBER.hex(),
    "cache_tag": sys.implementation.cache_tag or "",
}


@dataclass(frozen=True)
class VerifiedBundle:
    """What survives verification: trusted header, manifest, code and models."""

    header: dict
    manifest: dict
    code: CodeType
    models: dict[str, bytes]
    signers: tuple[str, ...]

    @property
    def name(self) -> str:
        return self.header["task"]

    @property
    def release(self) -> int:
        return self.header["release"]


class BundleVerifier:
    """Holds the device's trust roots and key; verifies bundles one by one."""

    def __init__(
        self,
        trusted: Iterable[ed25519.Ed25519PublicKey],
        device_key: DevicePrivateKey,
        *,
        threshold: int = 1,
        caps: fmt.SizeCaps = fmt.DEFAULT_CAPS,
        clock: Callable[[], float] = time.time,
        clock_skew: float = 24 * 3600,
    ):
        self._trusted = {key_id(k): k for k in trusted}
        if threshold < 1:
            raise ValueError("threshold must be at least 1")
        if threshold > len(self._trusted):
            raise ValueError(f"threshold {threshold} exceeds the {len(self._trusted)} trusted keys")
        self.threshold = threshold
        self._device_key = device_key
        self._device_kid = key_id(device_key.public_key())
        self._wrap, self._suite = fmt.wrap_for(device_key)
        self.caps = caps
        self._clock = clock
        self._skew = clock_skew

    @property
    def device_kid(self) -> bytes:
        return self._device_kid

    def verify(
        self,
        data: bytes,
        *,
        high_water: Callable[[str], int | None] = lambda name: None,
        allow_rollback: bool = False,
    ) -> VerifiedBundle:
        """Run every check in order; ``high_water(name)`` gives the highest release
        already installed for a task (anti-rollback)."""
        raw = fmt.parse_bundle(data, self.caps)  # 1 + 2
        signers = self._check_signatures(raw)  # 3
        self._check_compatible(raw.header)  # 4
        self._check_expiry(raw.header)  # 5
        self._check_rollback(raw.header, high_water(raw.header["task"]), allow_rollback)  # 6
        plaintext = self._decrypt(raw, self._unwrap(raw))  # 7 + 8
        payload = self._check_payload(raw.header, plaintext)  # 9
        code = self._load_code(payload.code)  # 10
        return VerifiedBundle(raw.header, payload.manifest, code, payload.models, signers)

    # -- the steps ---------------------------------------------------------------------

    def _check_signatures(self, raw: fmt.RawBundle) -> tuple[str, ...]:
        message = fmt.signed_message(raw.header_bytes)
        good: set[bytes] = set()
        for kid, sig in raw.signatures:
            key = self._trusted.get(kid)
            if key is None or kid in good:
                continue
            try:
                key.verify(sig, message)
            except InvalidSignature:
                continue
            good.add(kid)
        if len(good) < self.threshold:
            raise BundleSignatureInvalid(
                f"{len(good)} valid trusted signature(s), {self.threshold} required"
            )
        if hashlib.sha256(raw.ciphertext).hexdigest() != raw.header["ct_sha256"]:
            raise BundleSignatureInvalid("ciphertext does not match its signed digest")
        return tuple(sorted(k.hex() for k in good))

    def _check_compatible(self, header: dict) -> None:
        if header["format"] != fmt.FORMAT_VERSION:
            raise BundleIncompatible(f"bundle format {header['format']} is not supported")
        py = header["python"]
        for key in ("impl", "magic", "cache_tag"):
            if py[key] != RUNNING_PYTHON[key]:
                raise BundleIncompatible(
                    f"bundle was built for {py['impl']} {py['cache_tag']} (magic {py['magic']}); "
                    f"this device runs {RUNNING_PYTHON['impl']} {RUNNING_PYTHON['cache_tag']} "
                    f"(magic {RUNNING_PYTHON['magic']})"
                )
        if header["aead"] != fmt.AEAD_NAME or header["wrap"] not in fmt.WRAPS:
            raise BundleIncompatible("unsupported encryption algorithms")

    def _check_expiry(self, header: dict) -> None:
        now = self._clock()
        expires = header["expires"]
        if expires is not None and now > expires:
            raise BundleExpired(f"bundle expired at {expires} (now {int(now)})")
        if header["created"] > now + self._skew:
            raise BundleExpired("bundle is not valid yet (created in the future)")

    def _check_rollback(self, header: dict, installed: int | None, allow: bool) -> None:
        if installed is not None and header["release"] < installed and not allow:
            raise BundleRollback(
                f"release {header['release']} of {header['task']!r} is below the installed "
                f"release {installed}"
            )

    def _unwrap(self, raw: fmt.RawBundle) -> list[bytes]:
        if raw.header["wrap"] != self._wrap:
            raise BundleNotForThisDevice(
                f"bundle wraps its content key with {raw.header['wrap']}; this device's key "
                f"needs {self._wrap}")
        wraps = [w for kid, w in raw.recipients if kid == self._device_kid][:MAX_WRAPS_TRIED]
        if not wraps:
            raise BundleNotForThisDevice("bundle has no content key for this device")
        info = fmt.wrap_info(raw.header_bytes, self._device_kid)
        keys = []
        for wrap in wraps:
            try:
                key = self._suite.decrypt(wrap, self._device_key, info=info)
            except Exception:  # any failure is the same opaque refusal
                continue
            if len(key) == fmt.KEY_LEN:
                keys.append(key)
        if not keys:
            raise BundleNotForThisDevice("content key for this device does not open")
        return keys

    def _decrypt(self, raw: fmt.RawBundle, content_keys: list[bytes]) -> bytes:
        nonce = bytes.fromhex(raw.header["nonce"])
        aad = fmt.aead_aad(raw.header_bytes)
        for key in content_keys:
            try:
                return AESGCM(key).decrypt(nonce, raw.ciphertext, aad)
            except InvalidTag:
                continue
        raise BundleDecryptError("ciphertext does not authenticate")

    def _check_payload(self, header: dict, plaintext: bytes) -> fmt.Payload:
        if len(plaintext) != header["pt_len"] or (
            hashlib.sha256(plaintext).hexdigest() != header["pt_sha256"]
        ):
            raise BundleIntegrityError("plaintext does not match its signed digest")
        try:
            payload = fmt.parse_payload(plaintext, self.caps)
        except BundleMalformed as exc:
            raise BundleIntegrityError(f"payload malformed: {exc}") from None
        m = payload.manifest
        if _version_tuple(m["min_container"]) > _version_tuple(container_version):
            raise BundleIncompatible(
                f"bundle needs container {m['min_container']}, this is {container_version}")
        if m["task"] != header["task"] or m["release"] != header["release"]:
            raise BundleIntegrityError("manifest does not match the header")
        if set(m["models"]) != set(payload.models):
            raise BundleIntegrityError("manifest models do not match the payload")
        for name, blob in payload.models.items():
            if hashlib.sha256(blob).hexdigest() != m["models"][name]:
                raise BundleIntegrityError(f"model {name!r} does not match its digest")
        return payload

    def _load_code(self, code_bytes: bytes) -> CodeType:
        try:
            code = marshal.loads(code_bytes)
        except (ValueError, EOFError, TypeError) as exc:
            raise BundleIntegrityError(f"code does not load: {type(exc).__name__}") from None
        if not isinstance(code, CodeType):
            raise BundleIntegrityError("code section is not a code object")
        return code


__all__ = ["RUNNING_PYTHON", "BundleError", "BundleVerifier", "VerifiedBundle"]
