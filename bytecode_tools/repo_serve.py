"""Serve an update repository's ``public/`` folder over HTTP (``vmtool repo serve``).

For development, tests and the fleet benchmark; in production ``public/`` is
the origin of a CDN.  The cache headers are the ones a CDN should be given:

* ``metadata/timestamp.json`` - the only mutable file: ``max-age`` of a few
  seconds (it decides how fast a fleet sees a publish);
* every other file - versioned or hash-prefixed, so immutable:
  ``max-age=31536000, immutable``;
* 404s (clients probe ``N+1.root.json`` on every refresh) - short
  ``max-age`` so a CDN absorbs those probes as well.

Counts requests, bytes and status codes (thread-safe) for the benchmark.
"""

from __future__ import annotations

import threading
from collections import Counter
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self


class RepoRequestHandler(SimpleHTTPRequestHandler):
    """Static files with CDN cache headers; quiet; counted."""

    server: RepoServer
    protocol_version = "HTTP/1.1"  # keep-alive: devices reuse connections
    disable_nagle_algorithm = True  # headers and body go out as separate writes

    def end_headers(self) -> None:
        path = self.path.split("?", 1)[0]
        if path.endswith("/timestamp.json"):
            self.send_header("Cache-Control", f"public, max-age={self.server.timestamp_ttl}")
        elif getattr(self, "_status", 200) >= 400:
            self.send_header("Cache-Control", "public, max-age=60")
        else:
            self.send_header("Cache-Control", "public, max-age=31536000, immutable")
        super().end_headers()

    def send_response(self, code: int, message: str | None = None) -> None:
        self._status = code
        self.server.count(code)
        super().send_response(code, message)

    def copyfile(self, source: Any, outputfile: Any) -> None:
        counted = _CountingWriter(outputfile, self.server)
        super().copyfile(source, counted)

    def list_directory(self, path: str | Any) -> None:  # type: ignore[override]
        self.send_error(404, "not found")

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _CountingWriter:
    def __init__(self, inner: Any, server: RepoServer):
        self._inner = inner
        self._server = server

    def write(self, data: bytes) -> int:
        n = self._inner.write(data)
        self._server.count_bytes(len(data))
        return n

    def flush(self) -> None:
        self._inner.flush()


class RepoServer(ThreadingHTTPServer):
    """A threading HTTP server over ``directory`` with request/byte counters."""

    daemon_threads = True
    request_queue_size = 256

    def __init__(self, directory: str | Path, host: str = "127.0.0.1", port: int = 0, *,
                 handler: type[RepoRequestHandler] = RepoRequestHandler, timestamp_ttl: int = 10):
        self.directory = str(directory)
        self.timestamp_ttl = timestamp_ttl
        self._lock = threading.Lock()
        self.requests = 0
        self.bytes_sent = 0
        self.statuses: Counter[int] = Counter()
        super().__init__((host, port), partial(handler, directory=self.directory))
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/"

    def count(self, status: int) -> None:
        with self._lock:
            self.requests += 1
            self.statuses[status] += 1

    def count_bytes(self, n: int) -> None:
        with self._lock:
            self.bytes_sent += n

    def reset_counters(self) -> None:
        with self._lock:
            self.requests = 0
            self.bytes_sent = 0
            self.statuses.clear()

    def start(self) -> RepoServer:
        """Serve on a daemon thread; ``stop()`` shuts it down."""
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="repo-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
