"""The cloud side: ``bytecode_tools.repo.UpdateRepository`` as a TUF repository."""

from __future__ import annotations

import stat
from datetime import timedelta

import pytest
from tuf.api.metadata import Metadata, Root, Targets

from bytecode_tools.repo import RepoError, UpdateRepository, parse_duration
from vmcontainer.errors import BundleMalformed
from vmcontainer.updates.sync import RUNNING_MAGIC

from .conftest import bundle


def published(repo: UpdateRepository, name: str) -> Metadata:
    return Metadata.from_bytes((repo.public / "metadata" / name).read_bytes())


def test_init_layout_keys_and_first_versions(repo):
    meta = repo.public / "metadata"
    assert sorted(p.name for p in meta.iterdir()) == \
        ["1.root.json", "1.snapshot.json", "1.targets.json", "timestamp.json"]
    assert (repo.dir / "root.json").read_bytes() == (meta / "1.root.json").read_bytes()
    keys = sorted((repo.dir / "keys").glob("*.key"))
    assert [k.name.split("-")[0] for k in keys] == ["root", "snapshot", "targets", "timestamp"]
    assert all(stat.S_IMODE(k.stat().st_mode) == 0o600 for k in keys)
    assert stat.S_IMODE((repo.dir / "keys").stat().st_mode) == 0o700
    root = published(repo, "1.root.json").signed
    assert root.consistent_snapshot and root.roles["root"].threshold == 1
    timestamp = published(repo, "timestamp.json").signed
    assert timestamp.snapshot_meta.hashes and timestamp.snapshot_meta.length  # mix-and-match
    with pytest.raises(RepoError, match="already"):
        UpdateRepository.init(repo.dir)


def test_root_threshold(tmp_path):
    repo = UpdateRepository.init(tmp_path / "r", root_keys=3, root_threshold=2)
    root_md = published(repo, "1.root.json")
    assert root_md.signed.roles["root"].threshold == 2 and len(root_md.signatures) == 3
    with pytest.raises(RepoError):
        UpdateRepository.init(tmp_path / "bad", root_keys=1, root_threshold=2)


def test_add_stages_a_hash_prefixed_immutable_target(repo):
    data = bundle("ranker", 7)
    info = repo.add(data, rollout=10, channel="beta", tags=["pro", "eu"], mandatory=True,
                    min_container="0.1.0")
    assert (info.task, info.release, info.serial, info.rollout) == ("ranker", 7, 1, 10)
    assert info.tags == ("eu", "pro") and info.python_magic == RUNNING_MAGIC
    blob = next((repo.public / "targets" / "tasks" / "ranker").glob("*.7.vmb"))
    assert blob.read_bytes() == data and len(blob.name.split(".")[0]) == 64
    assert repo.published_version("targets") == 1  # staged: devices do not see it yet
    result = repo.publish()
    assert result["versions"]["targets"] == 2 and "targets" in result["changed"]
    targets: Targets = published(repo, "2.targets.json").signed
    custom = targets.targets["tasks/ranker/7.vmb"].custom["vmcontainer"]
    assert custom == {"task": "ranker", "release": 7, "serial": 1, "python_magic": RUNNING_MAGIC,
                      "rollout": 10, "channel": "beta", "tags": ["eu", "pro"],
                      "min_container": "0.1.0", "mandatory": True, "withdrawn": False,
                      "rollback": False, "added": custom["added"]}


def test_add_refusals(repo):
    repo.add(bundle("t", 2))
    with pytest.raises(RepoError, match="not above"):
        repo.add(bundle("t", 2, "other"))
    with pytest.raises(RepoError, match="not above"):
        repo.add(bundle("t", 1))
    with pytest.raises(BundleMalformed):
        repo.add(b"not a bundle")
    with pytest.raises(RepoError, match="channel"):
        repo.add(bundle("t", 3), channel="../x")
    with pytest.raises(RepoError, match="percentage"):
        repo.add(bundle("t", 3), rollout=101)
    with pytest.raises(RepoError, match="task name"):
        repo.add(bundle("../evil", 1))


def test_publish_renews_timestamp_and_never_rewrites_versioned_files(repo):
    before = {p.name: p.read_bytes() for p in (repo.public / "metadata").glob("[0-9]*")}
    result = repo.publish()
    assert result["changed"] == ["timestamp"]
    after = {p.name: p.read_bytes() for p in (repo.public / "metadata").glob("[0-9]*")}
    assert after == before


def test_publish_re_signs_what_is_close_to_expiry(repo, clock):
    clock.offset = timedelta(days=60)  # targets (90 d) past half-life; root (365 d) not
    result = repo.publish()
    assert result["changed"] == ["snapshot", "targets", "timestamp"]


def test_rollout_and_rollback_edit_signed_custom_fields(repo):
    for release in (1, 2, 3):
        repo.add(bundle("t", release))
    assert repo.set_rollout("t", 25).release == 3
    withdrawn, restored = repo.rollback("t")
    assert [w.release for w in withdrawn] == [3]
    assert (restored.release, restored.serial, restored.rollback, restored.rollout) == \
        (2, 4, True, 100)
    with pytest.raises(RepoError, match="withdrawn"):
        repo.set_rollout("t", 50, release=3)
    withdrawn, restored = repo.rollback("t", to=1)
    assert [w.release for w in withdrawn] == [2] and restored.release == 1
    with pytest.raises(RepoError, match="roll back to"):
        repo.rollback("t")
    with pytest.raises(RepoError, match="no"):
        repo.set_rollout("missing", 5)


def test_keep_prunes_old_releases_from_metadata(tmp_path):
    repo = UpdateRepository.init(tmp_path / "r", keep=2)
    for release in (1, 2, 3):
        repo.add(bundle("t", release))
    assert [r.release for r in repo.releases("t")] == [3, 2]
    assert len(list((repo.public / "targets" / "tasks" / "t").iterdir())) == 3  # files stay


def test_rotate_keys_retires_old_key_at_publish(repo):
    old = set(repo.root().roles["snapshot"].keyids)
    [new] = repo.rotate_keys("snapshot")
    assert (repo.dir / "keys" / "retired").exists() is False  # nothing live changed yet
    result = repo.publish()
    assert result["versions"]["root"] == 2 and result["retired_keys"] == sorted(old)
    root: Root = published(repo, "2.root.json").signed
    assert root.roles["snapshot"].keyids == [new]
    assert len(published(repo, "2.root.json").signatures) == 1  # root key unchanged
    with pytest.raises(RepoError):
        repo.rotate_keys("mirror")


def test_parse_duration():
    assert parse_duration("90d") == timedelta(days=90)
    assert parse_duration("12h") == timedelta(hours=12)
    with pytest.raises(ValueError):
        parse_duration("10")
