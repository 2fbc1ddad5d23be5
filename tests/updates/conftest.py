"""Fixtures for the OTA tests: a real repository served over real HTTP on loopback.

``AttackServer`` is ``bytecode_tools.repo_serve.RepoServer`` with one extra
power, the one a compromised mirror or a man in the middle has: for chosen
URL paths it serves other bytes, streams without end, or cuts the body short.
Nothing is mocked: ngclient talks HTTP to it through urllib3.
"""

from __future__ import annotations

import itertools
import socket
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from bytecode_tools.repo import UpdateRepository
from bytecode_tools.repo_serve import RepoRequestHandler, RepoServer
from vmcontainer.testing import build_test_bundle, test_container
from vmcontainer.updates import DeviceSync, GuardPolicy

ENDLESS_CAP = 64 << 20  # the server gives up after this much, whatever the client does


def source(value: Any) -> str:
    """A task script returning ``value``."""
    return f"def main(inputs):\n    return {value!r}\n"


def bundle(name: str, release: int, value: Any = None, *, src: str | None = None,
           **manifest: Any) -> bytes:
    return build_test_bundle(src or source(value if value is not None else f"{name}-r{release}"),
                             name=name, release=release, **manifest)


class AttackHandler(RepoRequestHandler):
    server: AttackServer

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        action = self.server.overrides.get(path)
        if action is None:
            super().do_GET()
        elif isinstance(action, bytes):
            self._send(action)
        else:
            action(self)

    def _send(self, body: bytes, length: int | None = None) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        self.wfile.write(body)


def endless(handler: AttackHandler) -> None:
    """Endless data: no Content-Length, zeros until the client hangs up."""
    handler.send_response(200)
    handler.send_header("Connection", "close")
    handler.end_headers()
    handler.close_connection = True
    chunk = b"\0" * 65536
    sent = 0
    try:
        while sent < ENDLESS_CAP:
            handler.wfile.write(chunk)
            sent += len(chunk)
    except OSError:
        pass


def cut(body: bytes) -> Callable[[AttackHandler], None]:
    """A transfer cut mid-way: the full Content-Length announced, half the body sent."""

    def serve(handler: AttackHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body[: len(body) // 2])
        handler.wfile.flush()
        handler.close_connection = True
        try:
            handler.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    return serve


class AttackServer(RepoServer):
    def __init__(self, directory: Path):
        super().__init__(directory, handler=AttackHandler)
        self.overrides: dict[str, bytes | Callable[[AttackHandler], None]] = {}


class Clock:
    """The repository's clock, movable (freeze attacks need stale timestamps)."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def repo(tmp_path: Path, clock: Clock) -> UpdateRepository:
    return UpdateRepository.init(tmp_path / "repo", now=clock)


@pytest.fixture
def server(repo: UpdateRepository) -> Iterator[AttackServer]:
    with AttackServer(repo.public) as srv:
        yield srv


@pytest.fixture
def container() -> Iterator[Any]:
    with test_container(workers=1) as c:
        yield c


_ids = itertools.count()


@pytest.fixture
def make_device(tmp_path: Path, repo: UpdateRepository, server: AttackServer,
                container: Any) -> Iterator[Callable[..., DeviceSync]]:
    """``make_device(**kw)``: a DeviceSync on the shared container (or ``container=``),
    its own state dir unless ``state_dir=`` is given."""
    made: list[DeviceSync] = []

    def make(**kw: Any) -> DeviceSync:
        n = next(_ids)
        kw.setdefault("state_dir", tmp_path / f"device{n}")
        kw.setdefault("device_id", f"device-{n}")
        kw.setdefault("guard", GuardPolicy(calls=4, max_error_rate=0.5))
        target = kw.pop("container", container)
        device = DeviceSync(target, server.url, root=repo.dir / "root.json", **kw)
        made.append(device)
        return device

    yield make
    for device in made:
        device.close()


def running(container: Any) -> dict[str, int]:
    return {t.name: t.release for t in container.tasks()}


def publish(repo: UpdateRepository, *bundles: bytes, **options: Any) -> None:
    for data in bundles:
        repo.add(data, **options)
    repo.publish()
