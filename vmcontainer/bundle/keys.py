"""Key files and key ids, shared by the cloud toolchain and the device.

* Publisher keys are Ed25519: they sign bundles.  ``publisher.key`` stays in
  the cloud; ``publisher.pub`` is the device's trust root.
* Device keys are X25519 or P-256: bundles' content keys are HPKE-wrapped to
  them (``format.WRAPS``).  X25519 is the default: its unwrap costs about half
  of P-256's here (~75 µs less per install).  P-256 is there for keys that live
  in hardware - Secure Enclave and Android StrongBox only make non-exportable
  P-256 keys, and CryptoKit's HPKE has the P256/SHA256/AES-256-GCM suite.
  ``device.key`` never leaves the device; ``device.pub`` goes to the cloud.

A key id is the first 16 bytes of SHA-256 over the public key's
SubjectPublicKeyInfo DER: stable, derived, never chosen by the attacker.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, x25519

KeySource = str | os.PathLike | bytes
KID_LEN = 16
DevicePublicKey = x25519.X25519PublicKey | ec.EllipticCurvePublicKey
DevicePrivateKey = x25519.X25519PrivateKey | ec.EllipticCurvePrivateKey
DEVICE_KEY_TYPES = ("x25519", "p256")


def device_key_type(key: DevicePublicKey | DevicePrivateKey) -> str:
    """``"x25519"`` or ``"p256"``; ``ValueError`` for any other key."""
    if isinstance(key, (x25519.X25519PublicKey, x25519.X25519PrivateKey)):
        return "x25519"
    if isinstance(key, (ec.EllipticCurvePublicKey, ec.EllipticCurvePrivateKey)) and isinstance(
            key.curve, ec.SECP256R1):
        return "p256"
    raise ValueError("device keys are X25519 or P-256")


def key_id(public_key: ed25519.Ed25519PublicKey | DevicePublicKey) -> bytes:
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


def load_device_public(source: KeySource) -> DevicePublicKey:
    key = serialization.load_pem_public_key(_read(source))
    if not isinstance(key, (x25519.X25519PublicKey, ec.EllipticCurvePublicKey)) or not _device_curve(key):
        raise ValueError(f"{_describe(source)} is not an X25519 or P-256 device public key")
    return key


def load_device_private(source: KeySource) -> DevicePrivateKey:
    key = serialization.load_pem_private_key(_read(source), password=None)
    if not isinstance(key, (x25519.X25519PrivateKey, ec.EllipticCurvePrivateKey)) or not _device_curve(key):
        raise ValueError(f"{_describe(source)} is not an X25519 or P-256 device private key")
    return key


def _device_curve(key: DevicePublicKey | DevicePrivateKey) -> bool:
    try:
        device_key_type(key)
    except ValueError:
        return False
    return True


def private_pem(key: ed25519.Ed25519PrivateKey | DevicePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def public_pem(key: ed25519.Ed25519PublicKey | DevicePublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def generate_publisher_key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


def generate_device_key(kind: str = "x25519") -> DevicePrivateKey:
    """A device key: ``"x25519"`` (default) or ``"p256"`` (for hardware keystores)."""
    if kind == "x25519":
        return x25519.X25519PrivateKey.generate()
    if kind == "p256":
        return ec.generate_private_key(ec.SECP256R1())
    raise ValueError(f"device key type must be one of {', '.join(DEVICE_KEY_TYPES)}")
