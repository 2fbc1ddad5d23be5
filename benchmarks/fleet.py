"""Fleet simulation: one loopback repository, many devices, a staged rollout.

Usage::

    python -m benchmarks.fleet [--devices 1000] [--workers 32] [--tasks 3] [--json OUT.json]

What is real and what is simulated:

* **real**: the TUF repository (``bytecode_tools.repo``), its HTTP server
  (``repo_serve.RepoServer``, threads, keep-alive), and per device the whole
  update client - python-tuf ngclient over urllib3 with its own metadata
  directory, the targeting rules, the SQLite state and bundle store, and the
  bundle verifier (signature, HPKE unwrap, AES-GCM decrypt, digests);
* **simulated**: the container.  Each device installs through
  ``BundleVerifier.verify`` into a dict (no worker threads, no warm-up run),
  and all devices share one device key, so every bundle has one recipient.
  Install cost on a real container is in ``python -m benchmarks.run``.

Each device's ``DeviceSync`` is opened for one sync and closed again - a
cold app start every time, state from disk - and ``--workers`` syncs run at
once (bounded concurrency).  A "wave" is one poll by every device.  The
rollout: all devices start on release 1 of every task (a cold first sync),
then release 2 of the first task goes 1 % -> 10 % -> 100 %.

Printed: per wave wall time, requests/s and bytes served, bytes per device,
the share of the fleet on release 2 against the rollout percentage and
against the bucket function's prediction, and the time to full coverage.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from bytecode_tools.repo import UpdateRepository
from bytecode_tools.repo_serve import RepoServer
from vmcontainer.bundle.verifier import BundleVerifier
from vmcontainer.testing import build_test_bundle, ephemeral_keys
from vmcontainer.updates import DeviceSync, UpdateError, bucket

STAGES = (1, 10, 100)


class SimContainer:
    """Installs by running the real bundle verifier; keeps releases in a dict."""

    def __init__(self, verifier: BundleVerifier):
        self._verifier = verifier
        self._tasks: dict[str, SimpleNamespace] = {}
        self._high_water: dict[str, int] = {}

    def install(self, bundle: bytes, *, allow_rollback: bool = False) -> SimpleNamespace:
        verified = self._verifier.verify(bundle, high_water=self._high_water.get,
                                         allow_rollback=allow_rollback)
        info = SimpleNamespace(name=verified.name, release=verified.release)
        self._tasks[info.name] = info
        self._high_water[info.name] = max(info.release, self._high_water.get(info.name, -1))
        return info

    def tasks(self) -> list[SimpleNamespace]:
        return list(self._tasks.values())

    def metrics(self) -> dict[str, Any]:
        return {"tasks": {}}

    def uninstall(self, name: str) -> None:
        self._tasks.pop(name, None)

    def release(self, name: str) -> int | None:
        info = self._tasks.get(name)
        return info.release if info else None


@dataclass
class Wave:
    name: str
    rollout: int | None
    seconds: float
    requests: int
    bytes_served: int
    requests_per_s: float
    device_bytes_median: int
    device_bytes_p99: int
    device_requests_median: float
    on_new_release: int
    expected_by_bucket: int
    errors: int
    statuses: dict[str, int] = field(default_factory=dict)


def _task_source(task: str, release: int) -> str:
    # A feature-engineering-sized script (~1 KB bundle), different per release.
    return (f"import numpy as np\n\nRELEASE = {release}\n\n"
            "def main(inputs):\n"
            "    xs = np.asarray(inputs.get('xs', [0.0]), dtype=np.float32)\n"
            "    z = (xs - xs.mean()) / (xs.std() + 1e-6)\n"
            f"    return {{'task': {task!r}, 'release': RELEASE, 'z': z.tolist()}}\n")


def _serve(directory: str, conn: Connection) -> None:
    """The repository server's process: serve, and answer the benchmark's commands."""
    server = RepoServer(directory, timestamp_ttl=10).start()
    conn.send(server.url)
    while True:
        command = conn.recv()
        if command == "stats":
            conn.send((server.requests, server.bytes_sent,
                       {str(int(k)): v for k, v in sorted(server.statuses.items())}))
        elif command == "reset":
            server.reset_counters()
            conn.send(True)
        else:
            server.stop()
            conn.send(True)
            return


class ServerProcess:
    """One loopback repository server in its own process, so that its threads and the
    simulated devices' threads do not share one interpreter lock."""

    def __init__(self, directory: Path):
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(str(directory), child), daemon=True)
        self._proc.start()
        child.close()  # only the child holds its end now: its death is an EOFError here
        self.url: str = self._conn.recv()

    def _ask(self, command: str) -> Any:
        self._conn.send(command)
        return self._conn.recv()

    def reset(self) -> None:
        self._ask("reset")

    def stats(self) -> tuple[int, int, dict[str, int]]:
        return self._ask("stats")

    def stop(self) -> None:
        self._ask("stop")
        self._proc.join(10)


class Fleet:
    def __init__(self, root: Path, devices: int, workers: int, tasks: int):
        self.root = root
        self.workers = workers
        self.task_names = [f"task{i}" for i in range(tasks)]
        self.focus = self.task_names[0]
        self.repo = UpdateRepository.init(root / "repo")
        publisher, device_key = ephemeral_keys()
        verifier = BundleVerifier([publisher.public_key()], device_key)
        self.ids = [f"device-{i:07d}" for i in range(devices)]
        self.containers = {d: SimContainer(verifier) for d in self.ids}
        self.server = ServerProcess(self.repo.public)
        self.root_json = (self.repo.dir / "root.json").read_bytes()

    def close(self) -> None:
        self.server.stop()

    def _sync_one(self, device_id: str) -> tuple[int, int, bool]:
        with DeviceSync(self.containers[device_id], self.server.url, root=self.root_json,
                        state_dir=self.root / "devices" / device_id, device_id=device_id,
                        guard=None) as device:
            try:
                report = device.sync()
            except UpdateError:
                return 0, 0, False
            return report.bytes, report.requests, report.ok

    def wave(self, name: str, rollout: int | None) -> Wave:
        self.server.reset()
        started = time.perf_counter()
        with ThreadPoolExecutor(self.workers) as pool:
            results = list(pool.map(self._sync_one, self.ids))
        seconds = time.perf_counter() - started
        requests, served, statuses = self.server.stats()
        per_device = sorted(b for b, _, _ in results)
        on_new = sum(1 for d in self.ids if self.containers[d].release(self.focus) == 2)
        expected = len(self.ids) if rollout is None else \
            sum(1 for d in self.ids if bucket(d, self.focus, 2) < rollout)
        return Wave(
            name=name, rollout=rollout, seconds=round(seconds, 3),
            requests=requests, bytes_served=served,
            requests_per_s=round(requests / seconds, 1),
            device_bytes_median=int(statistics.median(per_device)),
            device_bytes_p99=per_device[min(len(per_device) - 1, int(len(per_device) * 0.99))],
            device_requests_median=statistics.median(r for _, r, _ in results),
            on_new_release=on_new if rollout is not None else 0,
            expected_by_bucket=expected if rollout is not None else 0,
            errors=sum(1 for _, _, ok in results if not ok),
            statuses=statuses,
        )

    def run(self) -> dict[str, Any]:
        for task in self.task_names:
            self.repo.add(build_test_bundle(_task_source(task, 1), name=task, release=1))
        self.repo.publish()
        waves = [self.wave("cold start: release 1 of every task", None)]
        self.repo.add(build_test_bundle(_task_source(self.focus, 2), name=self.focus, release=2),
                      rollout=STAGES[0])
        self.repo.publish()
        coverage_started = time.perf_counter()
        for i, percent in enumerate(STAGES):
            if i:
                self.repo.set_rollout(self.focus, percent)
                self.repo.publish()
            waves.append(self.wave(f"{self.focus} release 2 at {percent}%", percent))
        full = time.perf_counter() - coverage_started
        idle = self.wave("steady state: nothing new", None)
        metadata = {p.name: p.stat().st_size for p in (self.repo.public / "metadata").iterdir()
                    if p.name == "timestamp.json" or p.name.split(".")[0].isdigit()}
        latest = {role: metadata[f"{self.repo.published_version(role)}.{role}.json"]
                  for role in ("root", "snapshot", "targets")}
        latest["timestamp"] = metadata["timestamp.json"]
        bundle_sizes = [p.stat().st_size for p in (self.repo.public / "targets").rglob("*.vmb")]
        return {
            "devices": len(self.ids),
            "workers": self.workers,
            "tasks": len(self.task_names),
            "waves": [asdict(w) for w in [*waves, idle]],
            "time_to_full_coverage_s": round(full, 3),
            "full_coverage": waves[-1].on_new_release == len(self.ids),
            "metadata_bytes": latest,
            "bundle_bytes": int(statistics.median(bundle_sizes)),
            "bucket_shares_200k": bucket_shares(),
        }


def bucket_shares(population: int = 200_000) -> dict[str, float]:
    """Share of a large population inside each rollout percentage (the 1000-device fleet
    is a small sample: at 1 % its share is 1 % +- 0.3 %)."""
    buckets = [bucket(f"device-{i:07d}", "task0", 2) for i in range(population)]
    return {str(p): round(100 * sum(b < p for b in buckets) / population, 3)
            for p in (1, 5, 10, 50, 100)}


def _print(result: dict[str, Any]) -> None:
    print(f"fleet: {result['devices']} devices, {result['workers']} concurrent syncs, "
          f"{result['tasks']} tasks; bundle ~{result['bundle_bytes']} B; metadata "
          + ", ".join(f"{r} {b} B" for r, b in result["metadata_bytes"].items()))
    header = (f"{'wave':<40} {'wall s':>7} {'req':>6} {'req/s':>7} {'served':>10} "
              f"{'B/dev p50':>9} {'p99':>6} {'on r2':>6} {'bucket':>6} {'share':>7} {'err':>4}")
    print(header)
    print("-" * len(header))
    n = result["devices"]
    for w in result["waves"]:
        share = f"{100 * w['on_new_release'] / n:.1f}%" if w["rollout"] is not None else ""
        on = str(w["on_new_release"]) if w["rollout"] is not None else ""
        exp = str(w["expected_by_bucket"]) if w["rollout"] is not None else ""
        print(f"{w['name']:<40} {w['seconds']:>7.2f} {w['requests']:>6} "
              f"{w['requests_per_s']:>7.0f} {w['bytes_served']:>10} "
              f"{w['device_bytes_median']:>9} {w['device_bytes_p99']:>6} {on:>6} {exp:>6} "
              f"{share:>7} {w['errors']:>4}")
    shares = ", ".join(f"{p}% -> {v}%" for p, v in result["bucket_shares_200k"].items())
    print(f"bucket function over 200,000 device ids: {shares}")
    print(f"time to full coverage (1% publish -> every device on release 2, one poll per "
          f"stage): {result['time_to_full_coverage_s']:.2f} s; "
          f"full coverage: {result['full_coverage']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fleet", description=__doc__)
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=32)
    parser.add_argument("--tasks", type=int, default=3)
    parser.add_argument("--json", metavar="OUT.json")
    args = parser.parse_args(argv)
    if args.devices < 1 or args.workers < 1 or args.tasks < 1:
        parser.error("--devices, --workers and --tasks must be positive")
    # Device state on tmpfs when there is one: in the field every device fsyncs to its own
    # flash in parallel; here 1000 devices would queue on one disk, which no fleet does.
    shm = Path("/dev/shm")
    base = str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None
    with tempfile.TemporaryDirectory(prefix="vmc-fleet-", dir=base) as tmp:
        fleet = Fleet(Path(tmp), args.devices, args.workers, args.tasks)
        try:
            result = fleet.run()
        finally:
            fleet.close()
    _print(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0 if result["full_coverage"] else 1


if __name__ == "__main__":
    sys.exit(main())
