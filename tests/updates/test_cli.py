"""``vmtool repo ...`` and ``vmc update`` end to end, in process, against a loopback server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bytecode_tools.cli import main as vmtool
from bytecode_tools.repo_serve import RepoServer
from vmcontainer.bundle.keys import private_pem, public_pem
from vmcontainer.cli import main as vmc
from vmcontainer.testing import ephemeral_keys

from .conftest import bundle


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    publisher, device = ephemeral_keys()
    pub, key = tmp_path / "publisher.pub", tmp_path / "device.key"
    pub.write_bytes(public_pem(publisher.public_key()))
    key.write_bytes(private_pem(device))
    return pub, key


def run(main, capsys, *argv: object) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_repo_commands_and_vmc_update(tmp_path, capsys, keys):
    repo = tmp_path / "repo"
    state = tmp_path / "state"
    pub, key = keys
    code, out, _ = run(vmtool, capsys, "repo", "init", repo, "--root-keys", "2",
                       "--root-threshold", "2", "--expiry", "timestamp=12h")
    assert code == 0 and "root.json" in out
    for release in (1, 2):
        path = tmp_path / f"hello{release}.vmb"
        path.write_bytes(bundle("hello", release))
        code, out, _ = run(vmtool, capsys, "repo", "add", repo, path, "--tags", "eu",
                           "--rollout", "100")
        assert code == 0 and "staged" in out
    code, out, _ = run(vmtool, capsys, "repo", "publish", repo)
    assert code == 0 and "targets v2" in out

    with RepoServer(repo / "public") as server:
        base = ["update", "--repo", server.url, "--root", repo / "root.json", "--state", state,
                "--trust", pub, "--key", key, "--device-id", "cli-1", "--json"]
        code, out, _ = run(vmc, capsys, *base)
        assert code == 0, out
        report = json.loads(out)
        assert report["installed"] == [] and report["held"], "tag eu required"
        code, out, _ = run(vmc, capsys, *base, "--tag", "eu")
        report = json.loads(out)
        assert code == 0 and [(i["task"], i["release"]) for i in report["installed"]] == \
            [("hello", 2)]

        code, out, _ = run(vmtool, capsys, "repo", "rollback", repo, "hello", "--publish")
        assert code == 0 and "back to release 1" in out
        code, out, _ = run(vmc, capsys, *base, "--tag", "eu")  # a new process: restore, sync
        report = json.loads(out)
        assert [r["release"] for r in report["restored"]] == [2]
        assert [(i["action"], i["release"]) for i in report["installed"]] == [("rollback", 1)]

        code, out, _ = run(vmtool, capsys, "repo", "rotate-keys", repo, "timestamp", "--publish")
        assert code == 0
        code, out, _ = run(vmtool, capsys, "repo", "status", repo, "--json")
        status = json.loads(out)
        assert status["roles"]["root"]["published"] == 2 and not status["pending_publish"]
        code, out, _ = run(vmc, capsys, *base[:-1], "--tag", "eu")  # human output
        assert code == 0 and "up to date: hello" in out and "root v2" in out

        # an attack: a tampered timestamp is refused with exit 3, state kept
        ts = repo / "public" / "metadata" / "timestamp.json"
        good = ts.read_bytes()
        forged = json.loads(good)
        forged["signed"]["version"] += 1  # a newer timestamp, not re-signed
        ts.write_bytes(json.dumps(forged).encode())
        code, out, _ = run(vmc, capsys, *base)
        assert code == 3 and json.loads(out)["error"]["type"].startswith("Metadata")
        ts.write_bytes(good)

    code, out, _ = run(vmc, capsys, *base)  # server gone
    assert code == 6 and json.loads(out)["error"]["type"] == "RepositoryUnreachable"
    code, out, _ = run(vmc, capsys, "update", "--state", state, "--trust", pub, "--key", key,
                       "--offline", "--json")
    assert code == 0 and json.loads(out)["status"]["hello"]["release"] == 1


def test_repo_refusals_exit_2(tmp_path, capsys):
    code, _, err = run(vmtool, capsys, "repo", "publish", tmp_path / "nothing")
    assert code == 2 and "not an update repository" in err
    run(vmtool, capsys, "repo", "init", tmp_path / "r")
    path = tmp_path / "b.vmb"
    path.write_bytes(bundle("t", 1))
    assert run(vmtool, capsys, "repo", "add", tmp_path / "r", path)[0] == 0
    code, _, err = run(vmtool, capsys, "repo", "add", tmp_path / "r", path)
    assert code == 2 and "not above" in err
    path.write_bytes(b"junk")
    assert run(vmtool, capsys, "repo", "add", tmp_path / "r", path)[0] == 3
    code, _, err = run(vmtool, capsys, "repo", "rollback", tmp_path / "r", "t")
    assert code == 2 and "roll back to" in err
    code, out, _ = run(vmtool, capsys, "repo", "status", tmp_path / "r")
    assert code == 0 and "staged changes not yet published" in out
