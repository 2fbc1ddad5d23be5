"""Key files and key ids, shared by the cloud toolchain and the device.

* Publisher keys are Ed25519: they sign bundles.  ``publisher.key`` stays in
  the cloud; ``publisher.pub`` is the device's trust root.
* Device keys are P-256: bundles' content keys are HPKE-wrapped to them.
  P-256 because the keys that matter live in hardware - Secure Enclave and
  Android StrongBox only make non-exportable P-256 keys - and CryptoKit's
  HPKE has the P256/SHA256/AES-256-GCM suite.  ``device.key`` never leaves
  the device; ``device.pub`` goes to the cloud.

A key id is the first 16 bytes of SHA-256 over the public key's
SubjectPublicKeyInfo DER: stable, derived, never chosen by the attacker.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

KeySource = str | os.PathLike | bytes
KID_LEN = 16


def key_id(public_key: ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey) -> bytes:
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).digest()[:KID_LEN]


def _read(source: KeySource) -> bytes:
    if isinstance(source, bytes):
        return source
    return Path(source).read_bytes()


def _describe(source: KeySource) -> str:
    return "key bytes" if isinstance(source, bytes) else f"key file {Path(source).name!r}"


def load_publisher_public(source: KeySource) -> ed25519.Ed25519PublicKey:
    key = serialization.load_pem_public_key(_read(source))
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise ValueError(f"{_describe(source)} is not an Ed25519 publisher public key")
    return key


def load_publisher_private(source: KeySource) -> ed25519.Ed25519PrivateKey:
    key = serialization.load_pem_private_key(_read(source), password=None)
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ValueError(f"{_describe(source)} is not an Ed25519 publisher private key")
    return key


def load_device_public(source: KeySource) -> ec.EllipticCurvePublicKey:
    key = serialization.load_pem_public_key(_read(source))
    if not (isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1)):
        raise ValueError(f"{_describe(source)} is not a P-256 device public key")
    return key


def load_device_private(source: KeySource) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(_read(source), password=None)
    if not (isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1)):
        raise ValueError(f"{_describe(source)} is not a P-256 device private key")
    return key


def private_pem(key: ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def public_pem(key: ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def generate_publisher_key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


def generate_device_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())
