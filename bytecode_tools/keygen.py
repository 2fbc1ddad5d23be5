"""``vmtool keygen``: the four key files and where each one goes.

===================  ==========================  ================================
file                 what                        where it lives
===================  ==========================  ================================
``publisher.key``    Ed25519 signing key          the cloud build (HSM/KMS), 0600
``publisher.pub``    Ed25519 public key           every device: its trust root
``device.key``       X25519 (or P-256) key        one device only (keystore), 0600
``device.pub``       its public key               the cloud: bundles are encrypted to it
===================  ==========================  ================================

``--device-key p256`` makes a P-256 device key, the type hardware keystores
(Secure Enclave, StrongBox) generate; X25519, the default, unwraps faster.
"""

from __future__ import annotations

import os
from pathlib import Path

from vmcontainer.bundle.keys import (
    DEVICE_KEY_TYPES,
    generate_device_key,
    generate_publisher_key,
    key_id,
    private_pem,
    public_pem,
)


def _write(path: Path, data: bytes, private: bool) -> None:
    """Create ``path`` fresh: never follow a planted symlink, never reuse a file
    someone else opened (O_EXCL | O_NOFOLLOW)."""
    if path.is_symlink():
        raise FileExistsError(f"{path.name} is a symlink; refusing to write a key through it")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
    fd = os.open(path, flags, 0o600 if private else 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def generate_keys(out_dir: str | os.PathLike, *, overwrite: bool = False,
                  device_key: str = "x25519") -> dict[str, str]:
    """Write publisher and device key pairs to ``out_dir``; return their key ids (hex).
    ``device_key`` is ``"x25519"`` or ``"p256"``."""
    if device_key not in DEVICE_KEY_TYPES:
        raise ValueError(f"device key type must be one of {', '.join(DEVICE_KEY_TYPES)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = ("publisher.key", "publisher.pub", "device.key", "device.pub")
    present = [n for n in names if (out / n).exists() or (out / n).is_symlink()]
    if present and not overwrite:
        raise FileExistsError(f"key files already exist in {out}; refusing to overwrite")
    for n in present:
        if (out / n).is_symlink():
            raise FileExistsError(f"{n} is a symlink; refusing to write a key through it")
        (out / n).unlink()
    publisher = generate_publisher_key()
    device = generate_device_key(device_key)
    _write(out / "publisher.key", private_pem(publisher), private=True)
    _write(out / "publisher.pub", public_pem(publisher.public_key()), private=False)
    _write(out / "device.key", private_pem(device), private=True)
    _write(out / "device.pub", public_pem(device.public_key()), private=False)
    return {
        "publisher": key_id(publisher.public_key()).hex(),
        "device": key_id(device.public_key()).hex(),
    }
