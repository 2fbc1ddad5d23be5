"""The model hub: one ``LoadedModel`` (one ORT session) per model digest.

Every task release, model bundle and worker that needs a model asks the hub
for it by SHA-256, so two tasks shipping - or referencing - the same bytes share
one session (``InferenceSession.run`` is thread-safe).  Claims are counted;
the last ``release`` drops the session.  Calls already running keep the
``LoadedModel`` object itself, so releasing never pulls a session out from
under a run.
"""

from __future__ import annotations

import threading

from .loaded import LoadedModel
from .profile import DeviceProfile, MicroBatch
from .validate import check_name
from .watchdog import Watchdog


class ModelHub:
    """Sessions by digest, reference-counted by whoever holds a claim."""

    def __init__(self, profile: DeviceProfile | None = None):
        self.profile = profile or DeviceProfile()
        self.watchdog = Watchdog()
        self._models: dict[str, LoadedModel] = {}
        self._lock = threading.Lock()

    def acquire(self, name: str, digest: str, blob: bytes, *,
                batching: MicroBatch | None = None) -> LoadedModel:
        """Claim the model with ``digest``, loading it from ``blob`` if it is not loaded.

        Raises ``ModelError`` if the bytes fail validation or do not load.  The first
        claim of a digest decides its name-based settings (micro-batching)."""
        check_name(name)  # every claim: a shared session must not let a bad name through
        with self._lock:
            model = self._models.get(digest)
            if model is None:
                model = LoadedModel(name, digest, blob, self.profile, watchdog=self.watchdog,
                                    batching=batching)
                self._models[digest] = model
            model.refs += 1
            return model

    def claim(self, digest: str) -> LoadedModel | None:
        """Claim an already-loaded model by digest (no bytes needed), or None."""
        with self._lock:
            model = self._models.get(digest)
            if model is not None:
                model.refs += 1
            return model

    def release(self, model: LoadedModel) -> None:
        with self._lock:
            model.refs -= 1
            if model.refs > 0 or self._models.get(model.digest) is not model:
                return
            del self._models[model.digest]
        model.close()

    def loaded(self) -> int:
        with self._lock:
            return len(self._models)

    def get(self, digest: str) -> LoadedModel | None:
        """The loaded model with ``digest``, without claiming it (introspection)."""
        return self._models.get(digest)

    def close(self) -> None:
        with self._lock:
            models = list(self._models.values())
        for model in models:
            model.close()
        self.watchdog.close()
