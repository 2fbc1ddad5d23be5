"""Sealing: payload -> encrypted, wrapped, signed bundle bytes.

Lives on the device side of the tree because ``vmcontainer.testing`` packs
in-memory bundles with ephemeral keys through the very same code the cloud
toolchain uses (``bytecode_tools`` imports this; never the other way round).

Encrypt-then-sign: AES-256-GCM under a fresh random content key, the header
(with its ciphertext digest still empty) as associated data; the content key
HPKE-wrapped per recipient, bound to the header digest and the recipient's key
id; Ed25519 signatures over the final header, which carries the ciphertext
digest.
"""

from __future__ import annotations

import hashlib
import marshal
import os
import time
from collections.abc import Mapping, Sequence
from types import CodeType
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .. import __version__ as container_version
from . import format as fmt
from .keys import DevicePublicKey, device_key_type, key_id
from .verifier import RUNNING_PYTHON


def pack_task(
    code: CodeType,
    *,
    name: str,
    release: int,
    entry: str = "main",
    timeout: float = 1.0,
    lane: str = "regular",
    models: Mapping[str, bytes] | None = None,
    meta: Mapping[str, Any] | None = None,
    requires: Sequence[str] = (),
    then: Sequence[str] = (),
    warmup: Any = None,
    min_container: str = container_version,
    model_refs: Mapping[str, Mapping[str, Any]] | None = None,
) -> fmt.Payload:
    """The plaintext payload: manifest + marshalled code + model blobs.

    ``model_refs`` (alias -> ``{"ref", "policy", "sha256", "signature", ...}``)
    names models installed from model bundles; written only when given, so a
    task without references seals exactly as before the field existed."""
    if lane not in fmt.LANES:
        raise ValueError(f"lane must be one of {', '.join(fmt.LANES)}")
    if release < 0:
        raise ValueError("release must be >= 0")
    if not timeout > 0:
        raise ValueError("timeout must be positive")
    blobs = {n: bytes(b) for n, b in (models or {}).items()}
    manifest = {
        "task": name,
        "release": release,
        "entry": entry,
        "timeout": timeout,
        "lane": lane,
        "models": {n: hashlib.sha256(b).hexdigest() for n, b in sorted(blobs.items())},
        "triggers": [],
        "requires": list(requires),
        "then": list(then),
        "warmup": warmup,
        "min_container": min_container,
        "meta": dict(meta or {}),
    }
    if model_refs:
        manifest["model_refs"] = {alias: dict(ref) for alias, ref in sorted(model_refs.items())}
    return fmt.Payload(manifest, code_bytes(code), blobs)


def pack_model(
    name: str,
    blob: bytes,
    *,
    release: int,
    signature: Mapping[str, Any],
    micro_batch: Mapping[str, Any] | None = None,
    meta: Mapping[str, Any] | None = None,
    min_container: str = container_version,
) -> fmt.Payload:
    """The payload of a model bundle: one model, its declared signature, no script.

    Format v1 requires a code object, so the code section holds an empty module
    (never executed).  The bundle is named ``model:NAME`` so the clear header
    says what it is and anti-rollback keeps models apart from tasks."""
    if release < 0:
        raise ValueError("release must be >= 0")
    blob = bytes(blob)
    manifest = {
        "task": fmt.MODEL_BUNDLE_PREFIX + name,
        "release": release,
        "entry": "",
        "timeout": 1.0,
        "lane": "regular",
        "models": {name: hashlib.sha256(blob).hexdigest()},
        "triggers": [],
        "requires": [],
        "then": [],
        "warmup": None,
        "min_container": min_container,
        "meta": dict(meta or {}),
        "kind": "model",
        "model_info": {"signature": dict(signature),
                       "micro_batch": dict(micro_batch) if micro_batch else None},
    }
    empty = compile("", f"<model {name}>", "exec")
    return fmt.Payload(manifest, code_bytes(empty), {name: blob})


def code_bytes(code: CodeType) -> bytes:
    """Marshal ``code`` reproducibly.

    ``marshal`` marks objects whose refcount is above one for back-references,
    so the same code object can serialise differently depending on what else the
    process holds.  A load/dump round trip gives a fresh object graph whose
    refcounts depend only on its own structure: same source, same bytes.
    """
    return marshal.dumps(marshal.loads(marshal.dumps(code)))


def seal(
    payload: fmt.Payload,
    *,
    signers: Sequence[ed25519.Ed25519PrivateKey],
    recipients: Sequence[DevicePublicKey],
    expires_in: float | None = None,
    now: float | None = None,
) -> bytes:
    """Encrypt, wrap and sign ``payload`` into bundle bytes."""
    if not signers:
        raise ValueError("at least one signing key is required")
    if not recipients:
        raise ValueError("at least one recipient device key is required")
    if len({device_key_type(r) for r in recipients}) != 1:
        raise ValueError("the recipients of one bundle must all have X25519 keys or all P-256 keys: "
                         "build one bundle per key type")
    wrap, suite = fmt.wrap_for(recipients[0])
    plaintext = payload.encode()
    content_key = AESGCM.generate_key(bit_length=256)
    nonce = os.urandom(fmt.NONCE_LEN)
    created = int(time.time() if now is None else now)
    header: dict[str, Any] = {
        "format": fmt.FORMAT_VERSION,
        "task": payload.manifest["task"],
        "release": payload.manifest["release"],
        "python": dict(RUNNING_PYTHON),
        "created": created,
        "expires": None if expires_in is None else int(created + expires_in),
        "signers": sorted(key_id(k.public_key()).hex() for k in signers),
        "aead": fmt.AEAD_NAME,
        "wrap": wrap,
        "nonce": nonce.hex(),
        "ct_sha256": "",
        "ct_len": len(plaintext) + 16,  # GCM tag
        "pt_sha256": hashlib.sha256(plaintext).hexdigest(),
        "pt_len": len(plaintext),
    }
    ciphertext = AESGCM(content_key).encrypt(nonce, plaintext, fmt.aead_aad(fmt.canonical_json(header)))
    header["ct_sha256"] = hashlib.sha256(ciphertext).hexdigest()
    header_bytes = fmt.canonical_json(header)
    message = fmt.signed_message(header_bytes)
    signatures = [(key_id(k.public_key()), k.sign(message)) for k in signers]
    wraps = []
    for device in recipients:
        kid = key_id(device)
        wraps.append((kid, suite.encrypt(content_key, device,
                                                  info=fmt.wrap_info(header_bytes, kid))))
    return fmt.RawBundle(header_bytes, header, signatures, wraps, ciphertext).encode()
