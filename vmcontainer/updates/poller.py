"""The background poller: sync on an interval, back off on failure, spread the load.

One daemon thread, stopped by an event (``stop()`` returns once the thread
has finished its current step).  Each turn it runs the crash guard and, when
due, a sync.  Delays:

* after a good sync: ``interval`` x uniform(1 - jitter, 1 + jitter) - so a
  fleet that booted together does not poll together;
* after the n-th failure in a row: uniform(b/2, b) with
  b = min(max_backoff, retry x 2^(n-1)) ("equal jitter" exponential backoff:
  a repository outage does not end in a synchronized stampede, and a device
  never retries faster than ``retry / 2``);
* the guard runs every ``guard_interval`` seconds in between.

Every sync outcome - a report or an ``UpdateError`` - goes to ``on_result``.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any

from .errors import UpdateError

log = logging.getLogger("vmcontainer.updates")


class Backoff:
    """Delay schedule (pure, testable): ``next(ok)`` gives the next wait in seconds."""

    def __init__(self, interval: float, *, retry: float = 5.0, max_backoff: float = 3600.0,
                 jitter: float = 0.1, rng: random.Random | None = None):
        if interval <= 0 or retry <= 0 or max_backoff <= 0:
            raise ValueError("intervals must be positive")
        if not 0 <= jitter < 1:
            raise ValueError("jitter must be in [0, 1)")
        self.interval, self.retry = interval, retry
        self.max_backoff, self.jitter = max_backoff, jitter
        self.failures = 0
        self._rng = rng or random.Random()

    def next(self, ok: bool) -> float:
        if ok:
            self.failures = 0
            return self.interval * self._rng.uniform(1 - self.jitter, 1 + self.jitter)
        self.failures += 1
        ceiling = min(self.max_backoff, self.retry * 2 ** min(self.failures - 1, 30))
        return self._rng.uniform(ceiling / 2, ceiling)


class Poller:
    """Runs ``sync`` and ``check`` on a thread until ``stop()``."""

    def __init__(self, sync: Callable[[], Any], check: Callable[[], Any], *,
                 interval: float = 300.0, retry: float = 5.0, max_backoff: float = 3600.0,
                 jitter: float = 0.1, guard_interval: float = 5.0, initial_delay: float = 0.0,
                 on_result: Callable[[Any], None] | None = None, rng: random.Random | None = None):
        self._sync = sync
        self._check = check
        self.backoff = Backoff(interval, retry=retry, max_backoff=max_backoff, jitter=jitter,
                               rng=rng)
        self.guard_interval = guard_interval
        self._initial_delay = initial_delay
        self._on_result = on_result
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.syncs = 0
        self.failures = 0
        self.last_result: Any = None
        self.next_sync_in: float = initial_delay

    def start(self) -> Poller:
        if self._thread is not None:
            raise RuntimeError("poller already started")
        self._thread = threading.Thread(target=self._run, name="vmc-update-poller", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float | None = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        due = time.monotonic() + self._initial_delay
        while not self._stop.is_set():
            self._guard()
            now = time.monotonic()
            if now >= due:
                due = time.monotonic() + self._sync_once()
            self.next_sync_in = max(0.0, due - time.monotonic())
            self._stop.wait(min(self.guard_interval, self.next_sync_in) or 0.001)

    def _guard(self) -> None:
        try:
            self._check()
        except Exception:  # the poller must survive anything
            log.exception("update guard check failed")

    def _sync_once(self) -> float:
        try:
            result: Any = self._sync()
            ok = True
        except UpdateError as exc:
            result, ok = exc, False
            log.info("update sync failed: %s: %s", type(exc).__name__, exc)
        except Exception as exc:  # a bug must not kill the poller
            result, ok = exc, False
            log.exception("update sync crashed")
        self.syncs += 1
        self.failures += 0 if ok else 1
        self.last_result = result
        if self._on_result is not None:
            try:
                self._on_result(result)
            except Exception:  # nor a broken callback
                log.exception("update on_result callback failed")
        return self.backoff.next(ok)
