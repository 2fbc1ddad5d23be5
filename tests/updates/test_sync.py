"""Device sync against a real loopback repository: install hot, rollout buckets,
channels and tags, compatibility, restart offline, anti-rollback, task graphs,
signed rollback, background polling."""

from __future__ import annotations

import random
import time

import pytest

from vmcontainer.testing import test_container
from vmcontainer.updates import Backoff, RepositoryUnreachable, bucket
from vmcontainer.updates.targeting import Audience, ReleaseInfo, TaskState, choose

from .conftest import bundle, publish, running


def ids_in(task: str, release: int, percent: int, inside: bool, n: int = 1) -> list[str]:
    """Device ids whose bucket for (task, release) is inside / outside ``percent``."""
    out = []
    for i in range(100_000):
        did = f"dev-{i}"
        if (bucket(did, task, release) < percent) == inside:
            out.append(did)
            if len(out) == n:
                return out
    raise AssertionError("no such device id")


# -- targeting rules (pure) ----------------------------------------------------------------


def test_bucket_is_deterministic_uniform_and_per_release():
    assert bucket("a", "t", 1) == bucket("a", "t", 1)
    shares = [sum(bucket(f"d{i}", "t", 1) < p for i in range(20_000)) / 200 for p in (1, 10, 50)]
    assert shares == pytest.approx([1, 10, 50], abs=1.0)
    # a device in the 1 % stage is still in at 10 % and 100 % (same release)...
    early = [f"d{i}" for i in range(5000) if bucket(f"d{i}", "t", 1) < 1]
    assert all(bucket(d, "t", 1) < 10 for d in early)
    # ...but the canaries of the next release are other devices
    assert [bucket(d, "t", 2) for d in early] != [bucket(d, "t", 1) for d in early]
    assert bucket("ab", "c", 1) != bucket("a", "bc", 1) or bucket("x", "y", 1) >= 0


def test_choose_rules():
    magic = "a70d0d0a"
    aud = Audience("dev", "stable", frozenset({"eu"}), magic, "0.1.0")

    def rel(release: int, **kw: object) -> ReleaseInfo:
        kw.setdefault("serial", release)
        kw.setdefault("python_magic", magic)
        return ReleaseInfo("t", release, **kw)  # type: ignore[arg-type]

    def picked(second: ReleaseInfo, state: TaskState | None = None) -> int:
        plan = choose("t", [rel(1), second], aud, state or TaskState())
        assert plan.release is not None
        return plan.release.release

    assert picked(rel(2)) == 2
    assert picked(rel(2, withdrawn=True)) == 1
    assert picked(rel(2, channel="beta")) == 1
    assert picked(rel(2, tags=("eu",))) == 2
    assert picked(rel(2, tags=("eu", "us"))) == 1  # the device must have every tag
    assert picked(rel(2, python_magic="00000000")) == 1
    assert picked(rel(2, min_container="9.0")) == 1
    assert picked(rel(2), TaskState(bad=frozenset({2}))) == 1
    assert picked(rel(2, rollout=0)) == 1
    assert picked(rel(0, serial=9)) == 0  # the highest serial wins, not the highest release
    # anti-rollback: below the high-water mark only on a signed directive, once
    below = TaskState(current_release=2, high_water=2)
    assert choose("t", [rel(1, serial=5)], aud, below).action == "hold"
    plan = choose("t", [rel(1, serial=5, rollback=True)], aud, below)
    assert plan.action == "rollback"
    done = TaskState(current_release=2, high_water=2, rollback_serial=5)
    assert choose("t", [rel(1, serial=5, rollback=True)], aud, done).action == "hold"
    assert choose("t", [rel(2)], aud, below).action == "current"


def test_backoff_grows_with_jitter_and_resets():
    b = Backoff(60, retry=2, max_backoff=30, jitter=0.1, rng=random.Random(1))
    fails = [b.next(False) for _ in range(7)]
    for n, delay in enumerate(fails, 1):
        ceiling = min(30, 2 * 2 ** (n - 1))
        assert ceiling / 2 <= delay <= ceiling
    assert 54 <= b.next(True) <= 66 and b.failures == 0


# -- over HTTP -----------------------------------------------------------------------------


def test_install_hot_and_upgrade(repo, server, container, make_device):
    publish(repo, bundle("hello", 1))
    device = make_device()
    report = device.sync()
    assert report.ok and [o.release for o in report.installed] == [1]
    assert container.invoke("hello", {}) == "hello-r1"
    publish(repo, bundle("hello", 2))
    report = device.sync()
    assert [(o.release, o.previous) for o in report.installed] == [(2, 1)]
    assert container.invoke("hello", {}) == "hello-r2"
    again = device.sync()
    assert again.ok and again.current == ["hello"] and not again.installed
    assert again.requests <= 4, "an unchanged repository costs a few small requests"
    # the bundle is content-addressed: the old one is garbage-collected after
    # the new release passes probation (until then it is the fallback)
    assert len(list(device.state.store.root.glob("*.vmb"))) == 2


def test_staged_rollout_1_10_100(repo, server, make_device):
    """Devices picked in each bucket band: at 1 % -> 10 % -> 100 % exactly the
    bucketed ones update, and none of them goes back."""
    bands = {"lt1": (0, 1), "lt10": (1, 10), "rest": (10, 100)}
    ids = {}
    for name, (lo, hi) in bands.items():
        ids[name] = next(f"dev-{i}" for i in range(100_000)
                         if lo <= bucket(f"dev-{i}", "hello", 2) < hi)
    publish(repo, bundle("hello", 1))
    fleet = []
    for name, did in ids.items():
        c = test_container(workers=1)
        fleet.append((name, c, make_device(container=c, device_id=did)))
    try:
        publish(repo, bundle("hello", 2), rollout=1)
        expected = {1: {"lt1"}, 10: {"lt1", "lt10"}, 100: {"lt1", "lt10", "rest"}}
        for percent in (1, 10, 100):
            repo.set_rollout("hello", percent)
            repo.publish()
            for name, c, d in fleet:
                d.sync()
                want = 2 if name in expected[percent] else 1
                assert running(c) == {"hello": want}, (name, percent)
    finally:
        for _, c, _ in fleet:
            c.close()


def test_lowering_rollout_never_downgrades(repo, server, container, make_device):
    [did] = ids_in("hello", 2, 50, inside=True)
    publish(repo, bundle("hello", 1))
    publish(repo, bundle("hello", 2), rollout=50)
    device = make_device(device_id=did)
    device.sync()
    assert running(container) == {"hello": 2}
    repo.set_rollout("hello", 0)  # the release engineer pauses the rollout
    repo.publish()
    report = device.sync()
    assert running(container) == {"hello": 2}
    assert report.held and "high-water" in report.held[0]["reason"]


def test_channels_and_tags(repo, server, make_device):
    publish(repo, bundle("hello", 1))
    publish(repo, bundle("hello", 2), channel="beta")
    publish(repo, bundle("hello", 3), tags=["eu", "pro"])
    cases = {("stable", ()): 1, ("beta", ()): 2, ("stable", ("eu",)): 1,
             ("stable", ("eu", "pro", "x")): 3}
    for (channel, tags), expected in cases.items():
        with test_container(workers=1) as c:
            make_device(container=c, channel=channel, tags=tags).sync()
            assert running(c) == {"hello": expected}, (channel, tags)


def test_release_needing_a_newer_container_is_not_downloaded(repo, server, container,
                                                            make_device):
    publish(repo, bundle("hello", 1))
    publish(repo, bundle("hello", 2), min_container="99.0")
    report = make_device().sync()
    assert running(container) == {"hello": 1}
    assert [o.release for o in report.installed] == [1]
    assert report.requests == 5  # root probe, timestamp, snapshot, targets, bundle 1 only


def test_optional_updates_can_be_deferred(repo, server, container, make_device):
    publish(repo, bundle("hello", 1), mandatory=True)
    device = make_device(defer_optional=lambda: True)
    assert device.sync().installed[0].release == 1  # mandatory: installs on a metered link
    publish(repo, bundle("hello", 2))
    report = device.sync()
    assert report.deferred == [{"task": "hello", "release": 2,
                                "reason": "optional update deferred by device policy"}]
    assert running(container) == {"hello": 1}


def test_task_graph_installs_in_dependency_order(repo, server, container, make_device):
    # "alpha" needs "zeta": name order would install alpha first and fail
    publish(repo, bundle("zeta", 1, src="def main(inputs):\n    return 41\n"),
            bundle("alpha", 1, src="def main(inputs, upstream):\n    return upstream['zeta'] + 1\n",
                   requires=["zeta"]))
    report = make_device().sync()
    assert report.ok, report.to_dict()
    assert container.invoke("alpha", {}) == 42


def test_restart_offline_restores_last_good_and_keeps_high_water(tmp_path, repo, server,
                                                                 make_device):
    state = tmp_path / "device-state"
    publish(repo, bundle("hello", 1), bundle("other", 1))
    publish(repo, bundle("hello", 2))
    with test_container(workers=1) as first:
        assert make_device(container=first, state_dir=state).sync().ok
        assert running(first) == {"hello": 2, "other": 1}
    server.stop()  # the network is gone
    with test_container(workers=1) as second:
        device = make_device(container=second, state_dir=state)
        outcomes = device.restore()
        assert sorted((o.task, o.release, o.action) for o in outcomes) == \
            [("hello", 2, "restored"), ("other", 1, "restored")]
        assert second.invoke("hello", {}) == "hello-r2"
        with pytest.raises(RepositoryUnreachable):
            device.sync()
        assert running(second) == {"hello": 2, "other": 1}
        # the high-water mark survived the restart; the new container's own did not
        assert device.state.task_state("hello").high_water == 2
        assert device.state.installed()["hello"].release == 2


def test_corrupt_store_falls_back_on_restore(tmp_path, repo, server, make_device):
    state = tmp_path / "s"
    publish(repo, bundle("hello", 1))
    with test_container(workers=1) as c:
        d = make_device(container=c, state_dir=state)
        d.sync()
        d.guard.check()
        for _ in range(4):  # pass probation: release 1 becomes known-good
            c.invoke("hello", {})
        d.guard.check()
        publish(repo, bundle("hello", 2))
        d.sync()
        current = d.state.installed()["hello"]
        assert current.release == 2 and current.fallback_release == 1
    (state / "bundles" / f"{current.sha256}.vmb").write_bytes(b"bit rot")
    with test_container(workers=1) as c:
        d = make_device(container=c, state_dir=state)
        [outcome] = d.restore()
        assert (outcome.action, outcome.release, outcome.previous) == ("fallback", 1, 2)
        assert c.invoke("hello", {}) == "hello-r1"


def test_signed_rollback_reinstalls_previous_release(repo, server, container, make_device):
    publish(repo, bundle("hello", 1))
    publish(repo, bundle("hello", 2))
    device = make_device()
    device.sync()
    assert running(container) == {"hello": 2}
    withdrawn, restored = repo.rollback("hello")
    repo.publish()
    assert [w.release for w in withdrawn] == [2] and restored.release == 1 and restored.rollback
    report = device.sync()
    assert [(o.action, o.release, o.previous) for o in report.installed] == [("rollback", 1, 2)]
    assert container.invoke("hello", {}) == "hello-r1"
    assert device.state.task_state("hello").high_water == 2  # the mark does not move down
    assert not device.sync().installed  # the directive acts once
    publish(repo, bundle("hello", 3))  # the fix rolls forward as usual
    assert device.sync().installed[0].release == 3


def test_background_poller_picks_up_a_publish(repo, server, container, make_device):
    publish(repo, bundle("hello", 1))
    device = make_device()
    results = []
    poller = device.start_polling(interval=0.1, retry=0.05, jitter=0.5, guard_interval=0.05,
                                  on_result=results.append)
    try:
        _wait(lambda: running(container) == {"hello": 1})
        publish(repo, bundle("hello", 2))
        _wait(lambda: running(container) == {"hello": 2})
        server.stop()  # outage: the poller backs off instead of spinning
        _wait(lambda: poller.backoff.failures >= 2)
        assert isinstance(poller.last_result, RepositoryUnreachable)
    finally:
        device.stop_polling()
    assert not poller.running and poller.syncs >= 3


def _wait(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


def test_model_bundles_ship_like_tasks(tmp_path, repo, server, container, make_device):
    """``model:NAME`` bundles publish under models/ and install without probation
    (the tasks that use a model are what the guard watches); restore brings them back."""
    build = getattr(pytest.importorskip("bytecode_tools.models"), "build_model_bundle", None)
    if build is None or not hasattr(container, "models"):
        pytest.skip("this tree has no model bundles")
    from vmcontainer.bundle.keys import private_pem, public_pem
    from vmcontainer.testing import ephemeral_keys

    from ..onnx_models import linear_model

    publisher, device_key = ephemeral_keys()
    data = build("linear", linear_model()[0], release=1, signers=[private_pem(publisher)],
                 recipients=[public_pem(device_key.public_key())])
    info = repo.add(data)
    repo.publish()
    assert info.path == "models/linear/1.vmb"
    state = tmp_path / "model-device"
    assert make_device(state_dir=state).sync().ok
    assert [m.name for m in container.models()] == ["model:linear"]
    with test_container(workers=1) as fresh:
        device = make_device(container=fresh, state_dir=state)
        assert device.state.installed()["model:linear"].status == "good"
        assert [o.action for o in device.restore()] == ["restored"]
        assert [m.name for m in fresh.models()] == ["model:linear"]
