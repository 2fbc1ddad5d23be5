"""The update repository's role keys: Ed25519, one PEM file per key, mode 0600.

``DIR/keys/<role>-<keyid[:16]>.key`` holds a PKCS#8 private key; which role a
key serves is decided by root metadata, not by the file name (the name is for
people).  Keys that no published role uses any more are moved to
``DIR/keys/retired/`` at publish - never deleted silently: destroy them once
the rotation is confirmed (see docs/ota.md).

In production the root keys live offline (HSM, YubiKey) and the targets key
with the release pipeline; only snapshot and timestamp need to be online.
This store keeps all of them on disk, which is right for CI, tests and small
deployments, and the file-per-key layout lets an operator move any of them
out (``Signer.from_priv_key_uri`` accepts other URIs).
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from securesystemslib.signer import CryptoSigner, SSlibKey


class KeyStore:
    """Role signing keys in one directory."""

    def __init__(self, path: Path):
        self.path = path
        self._signers: dict[str, CryptoSigner] | None = None

    def create(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        os.chmod(self.path, 0o700)

    def _load(self) -> dict[str, CryptoSigner]:
        if self._signers is None:
            signers = {}
            for file in sorted(self.path.glob("*.key")):
                key = load_pem_private_key(file.read_bytes(), password=None)
                if not isinstance(key, Ed25519PrivateKey):
                    raise TypeError(f"{file.name} is not an Ed25519 key")
                signer = CryptoSigner(key)
                signers[signer.public_key.keyid] = signer
            self._signers = signers
        return self._signers

    def generate(self, role: str) -> SSlibKey:
        """Make a key for ``role``, write it 0600, return its public half."""
        signer = CryptoSigner.generate_ed25519()
        keyid = signer.public_key.keyid
        file = self.path / f"{role}-{keyid[:16]}.key"
        fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, signer.private_bytes)
            os.fsync(fd)
        finally:
            os.close(fd)
        self._load()[keyid] = signer
        return signer.public_key

    def signer(self, keyid: str) -> CryptoSigner | None:
        return self._load().get(keyid)

    def keyids(self) -> set[str]:
        return set(self._load())

    def retire(self, keyid: str) -> None:
        """Move a key no role uses any more out of the active store."""
        retired = self.path / "retired"
        retired.mkdir(exist_ok=True)
        os.chmod(retired, 0o700)
        for file in self.path.glob(f"*-{keyid[:16]}.key"):
            os.replace(file, retired / file.name)
        self._load().pop(keyid, None)
