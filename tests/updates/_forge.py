"""Forging TUF metadata the way an attacker holding some (or stale) keys would.

Builds the next version of targets -> snapshot -> timestamp from the
published copies, each signed by whatever signers the attack has, and
returns the files as URL path -> bytes for ``AttackServer.overrides``.
"""

from __future__ import annotations

from pathlib import Path

from securesystemslib.signer import CryptoSigner, Signer
from tuf.api.metadata import Metadata, MetaFile, Root, Snapshot, TargetFile, Targets, Timestamp

from bytecode_tools.repo import UpdateRepository
from vmcontainer.updates.targeting import ReleaseInfo


def real_signers(repo: UpdateRepository, role: str) -> list[Signer]:
    root = repo.root()
    return [s for k in root.roles[role].keyids if (s := repo.keys.signer(k)) is not None]


def retired_signers(repo: UpdateRepository) -> list[CryptoSigner]:
    """Keys rotated out (what an attacker who stole an old key holds)."""
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    return [CryptoSigner(load_pem_private_key(f.read_bytes(), None))
            for f in sorted((repo.dir / "keys" / "retired").glob("*.key"))]


def attacker() -> list[Signer]:
    return [CryptoSigner.generate_ed25519()]


def _published(repo: UpdateRepository, name: str) -> Metadata:
    return Metadata.from_bytes((repo.public / "metadata" / name).read_bytes())


def _sign(md: Metadata, signers: list[Signer]) -> bytes:
    md.signatures.clear()
    for signer in signers:
        md.sign(signer, append=True)
    return md.to_bytes()


def forge_chain(repo: UpdateRepository, signers: dict[str, list[Signer]], *,
                add: tuple[bytes, ReleaseInfo] | None = None,
                from_role: str = "targets") -> dict[str, bytes]:
    """New targets (with ``add`` in it), snapshot and timestamp; ``from_role`` =
    the first role forged ("targets", "snapshot" or "timestamp") - above it the
    published copies are reused.  Missing signers default to the real keys."""
    out: dict[str, bytes] = {}
    sign = {role: signers.get(role) or real_signers(repo, role)
            for role in ("targets", "snapshot", "timestamp")}
    timestamp: Metadata[Timestamp] = _published(repo, "timestamp.json")
    snapshot: Metadata[Snapshot] = _published(
        repo, f"{timestamp.signed.snapshot_meta.version}.snapshot.json")
    targets_meta = snapshot.signed.meta["targets.json"]
    if from_role == "targets":
        targets: Metadata[Targets] = _published(repo, f"{targets_meta.version}.targets.json")
        targets.signed.version += 1
        if add is not None:
            data, info = add
            target = TargetFile.from_data(info.path, data, ["sha256"])
            target.unrecognized_fields["custom"] = info.to_custom()
            targets.signed.targets[info.path] = target
            sha = target.hashes["sha256"]
            folder, _, name = info.path.rpartition("/")
            out[f"/targets/{folder}/{sha}.{name}"] = data
        raw = _sign(targets, sign["targets"])
        out[f"/metadata/{targets.signed.version}.targets.json"] = raw
        snapshot.signed.meta["targets.json"] = MetaFile.from_data(targets.signed.version, raw,
                                                                  ["sha256"])
    if from_role in ("targets", "snapshot"):
        snapshot.signed.version += 1
        raw = _sign(snapshot, sign["snapshot"])
        out[f"/metadata/{snapshot.signed.version}.snapshot.json"] = raw
        timestamp.signed.snapshot_meta = MetaFile.from_data(snapshot.signed.version, raw,
                                                            ["sha256"])
    timestamp.signed.version += 1
    out["/metadata/timestamp.json"] = _sign(timestamp, sign["timestamp"])
    return out


def forge_root(repo: UpdateRepository, signers: list[Signer]) -> dict[str, bytes]:
    """Root N+1 naming the attacker's own keys for every role, signed by ``signers``."""
    version = repo.published_version("root")
    root: Metadata[Root] = _published(repo, f"{version}.root.json")
    root.signed.version += 1
    evil = CryptoSigner.generate_ed25519()
    for role in ("root", "targets", "snapshot", "timestamp"):
        for keyid in list(root.signed.roles[role].keyids):
            root.signed.revoke_key(keyid, role)
        root.signed.add_key(evil.public_key, role)
    return {f"/metadata/{root.signed.version}.root.json": _sign(root, signers)}


def published_bytes(repo: UpdateRepository, name: str) -> bytes:
    return Path(repo.public / "metadata" / name).read_bytes()
