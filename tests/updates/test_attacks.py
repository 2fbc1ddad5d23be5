"""Every attack TUF is there for, over real HTTP: each is refused with a typed error,
nothing is installed, and the device keeps running its last good releases.

Each test first installs ``hello`` release 1 (returns "hello-r1"), then lets the
repository or the network misbehave while release 2 is on offer.
"""

from __future__ import annotations

from typing import Any

import pytest

from vmcontainer.updates import (
    DownloadTooLarge,
    MetadataExpired,
    MetadataMismatch,
    MetadataRollback,
    MetadataSignatureInvalid,
    RepositoryUnreachable,
    TargetIntegrityError,
)
from vmcontainer.updates.targeting import ReleaseInfo

from ._forge import attacker, forge_chain, forge_root, published_bytes, retired_signers
from .conftest import bundle, cut, endless, publish, running


@pytest.fixture
def device(repo, server, container, make_device):
    """A device running hello release 1, with release 1's metadata trusted."""
    publish(repo, bundle("hello", 1))
    device = make_device()
    assert device.sync().ok
    assert_keeps(container, device)
    return device


def assert_keeps(container: Any, device: Any, release: int = 1) -> None:
    """The device still runs (and records) ``hello`` at ``release``."""
    assert running(container) == {"hello": release}
    assert container.invoke("hello", {}) == f"hello-r{release}"
    assert device.state.installed()["hello"].release == release


def evil_release(release: int = 2) -> tuple[bytes, ReleaseInfo]:
    """A bundle the attacker wants installed - even validly signed by the publisher
    (an old or unintended build); TUF is what keeps it off the device."""
    data = bundle("hello", release, "EVIL")
    from vmcontainer.updates.sync import RUNNING_MAGIC

    return data, ReleaseInfo("hello", release, 99, RUNNING_MAGIC,
                             path=f"tasks/hello/{release}.vmb")


def test_tampered_target_is_refused(repo, server, container, device):
    publish(repo, bundle("hello", 2))
    blob = next((repo.public / "targets" / "tasks" / "hello").glob("*.2.vmb"))
    path = "/" + blob.relative_to(repo.public).as_posix()
    server.overrides[path] = bundle("hello", 2, "EVIL")  # same length class, other bytes
    report = device.sync()
    assert not report.ok
    [failure] = report.failed
    assert isinstance(failure.error, (TargetIntegrityError, DownloadTooLarge))
    assert_keeps(container, device)
    # one flipped byte at the exact signed length: the hash check refuses it
    genuine = blob.read_bytes()
    server.overrides[path] = genuine[:-1] + bytes([genuine[-1] ^ 1])
    [failure] = device.sync().failed
    assert isinstance(failure.error, TargetIntegrityError)
    assert_keeps(container, device)
    assert not list(device.state.store.tmp.iterdir()), "no partial file left behind"
    # in-transit tampering never blacklists the genuine release
    assert device.state.bad() == {}
    del server.overrides[path]
    assert device.sync().ok
    assert running(container) == {"hello": 2}


def test_replayed_old_metadata_is_refused(repo, server, container, device):
    old_timestamp = published_bytes(repo, "timestamp.json")
    publish(repo, bundle("hello", 2))
    assert device.sync().ok  # device now trusts the newer timestamp
    assert running(container) == {"hello": 2}
    server.overrides["/metadata/timestamp.json"] = old_timestamp  # replay: back to release 1
    with pytest.raises(MetadataRollback):
        device.sync()
    assert_keeps(container, device, release=2)


def test_expired_timestamp_freeze_is_refused(repo, server, container, clock, device):
    from datetime import timedelta

    clock.offset = -timedelta(days=2)  # signed two days ago: expired yesterday
    publish(repo, bundle("hello", 2))
    with pytest.raises(MetadataExpired):
        device.sync()
    assert_keeps(container, device)
    clock.offset = timedelta(0)  # the repository signs a fresh timestamp again
    repo.publish()
    assert device.sync().ok
    assert running(container) == {"hello": 2}


@pytest.mark.parametrize("role", ["snapshot", "targets"])
def test_mix_and_match_metadata_is_refused(repo, server, container, device, role):
    snapshot_v = repo.published_version("snapshot")
    targets_v = repo.published_version("targets")
    publish(repo, bundle("hello", 2))
    if role == "snapshot":  # the new timestamp, with the previous (genuine) snapshot
        server.overrides[f"/metadata/{snapshot_v + 1}.snapshot.json"] = \
            published_bytes(repo, f"{snapshot_v}.snapshot.json")
    else:  # the new snapshot, with the previous (genuine) targets
        server.overrides[f"/metadata/{targets_v + 1}.targets.json"] = \
            published_bytes(repo, f"{targets_v}.targets.json")
    with pytest.raises(MetadataMismatch):
        device.sync()
    assert_keeps(container, device)


def test_endless_metadata_is_cut_off(repo, server, container, device):
    server.overrides["/metadata/timestamp.json"] = endless
    with pytest.raises(DownloadTooLarge):
        device.sync()
    assert_keeps(container, device)


def test_endless_target_is_cut_off(repo, server, container, device):
    publish(repo, bundle("hello", 2))
    blob = next((repo.public / "targets" / "tasks" / "hello").glob("*.2.vmb"))
    server.overrides["/" + blob.relative_to(repo.public).as_posix()] = endless
    [failure] = device.sync().failed
    assert isinstance(failure.error, DownloadTooLarge)
    assert_keeps(container, device)


def test_download_cut_midway_never_installs(repo, server, container, device):
    publish(repo, bundle("hello", 2))
    blob = next((repo.public / "targets" / "tasks" / "hello").glob("*.2.vmb"))
    path = "/" + blob.relative_to(repo.public).as_posix()
    server.overrides[path] = cut(blob.read_bytes())
    [failure] = device.sync().failed
    assert isinstance(failure.error, (RepositoryUnreachable, TargetIntegrityError))
    assert_keeps(container, device)
    assert not list(device.state.store.tmp.iterdir())
    assert len(list(device.state.store.root.glob("*.vmb"))) == 1  # only release 1
    del server.overrides[path]
    assert device.sync().ok
    assert running(container) == {"hello": 2}


def test_compromised_timestamp_key_alone_installs_nothing(repo, server, container, device):
    """The online timestamp key signs a timestamp for a snapshot and targets the
    attacker made: without the snapshot and targets keys they do not verify."""
    evil = attacker()
    server.overrides.update(forge_chain(repo, {"targets": evil, "snapshot": evil},
                                        add=evil_release()))
    with pytest.raises(MetadataSignatureInvalid):
        device.sync()
    assert_keeps(container, device)


def test_forged_targets_with_a_stranger_key_are_refused(repo, server, container, device):
    server.overrides.update(forge_chain(repo, {"targets": attacker()}, add=evil_release()))
    with pytest.raises(MetadataSignatureInvalid):
        device.sync()
    assert_keeps(container, device)


@pytest.mark.parametrize("role", ["root", "targets", "snapshot", "timestamp"])
def test_key_rotation(repo, server, container, device, role):
    """After ``rotate-keys ROLE`` + publish the device follows (new release installs);
    metadata signed with the rotated-out key is refused from then on."""
    root_before = repo.published_version("root")
    repo.rotate_keys(role)
    publish(repo, bundle("hello", 2))
    report = device.sync()
    assert report.ok and report.metadata["root"] == root_before + 1
    assert running(container) == {"hello": 2}
    [old_key] = retired_signers(repo)
    if role == "root":
        forged = forge_root(repo, [old_key])
    else:
        forged = forge_chain(repo, {role: [old_key]}, add=evil_release(3), from_role=role)
    server.overrides.update(forged)
    with pytest.raises(MetadataSignatureInvalid):
        device.sync()
    assert_keeps(container, device, release=2)


def test_root_rotation_with_threshold(tmp_path, clock):
    """A 2-of-3 root: every new root carries two signatures of the old and two of the
    new root keys; a fresh device bootstrapped with root v1 walks the chain."""
    from bytecode_tools.repo import UpdateRepository
    from vmcontainer.testing import test_container
    from vmcontainer.updates import DeviceSync

    from .conftest import AttackServer

    repo = UpdateRepository.init(tmp_path / "r", root_keys=3, root_threshold=2, now=clock)
    first_root = (repo.public / "metadata" / "1.root.json").read_bytes()
    repo.rotate_keys("root", keys=3, threshold=2)
    repo.publish()
    repo.rotate_keys("root", keys=3, threshold=2)
    publish(repo, bundle("hello", 1))
    assert repo.published_version("root") == 3
    with AttackServer(repo.public) as srv, test_container(workers=1) as c, \
            DeviceSync(c, srv.url, root=first_root, state_dir=tmp_path / "d") as dev:
        report = dev.sync()
        assert report.ok and report.metadata["root"] == 3
        assert running(c) == {"hello": 1}
