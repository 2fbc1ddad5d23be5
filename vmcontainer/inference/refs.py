"""Task-side model references: which installed model a task's ``vm.model(alias)`` gets.

A task manifest's ``model_refs`` maps an alias (the name the script uses) to
``{"ref": model name, "policy": "pin" | "compatible", "sha256": ...,
"signature": ..., "min_release": ...}``.  ``bind`` resolves one at install
(raising ``ModelNotInstalled`` / ``ModelIncompatible``); the ``ModelBinding`` it
returns holds a hub claim on the model in use and, for ``compatible``, moves
to a newer compatible release the next time a call asks for the model.  A
newer release that is *not* compatible is not taken: the task keeps the model
it has (its claim keeps it loaded) and a warning is logged once.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from ..errors import ModelError
from .loaded import LoadedModel
from .signature import Signature, incompatibilities
from .store import ModelIncompatible, ModelNotInstalled, ModelRelease, ModelStore

log = logging.getLogger("vmcontainer.inference")


class ModelBinding:
    """One alias of one installed task release, bound to a loaded model."""

    __slots__ = (
        "_lock",
        "_released",
        "_seen",
        "_store",
        "alias",
        "expected",
        "min_release",
        "model",
        "policy",
        "ref",
        "release",
    )

    def __init__(self, alias: str, entry: dict[str, Any], store: ModelStore, owner: str):
        self.alias = alias
        self.ref: str = entry["ref"]
        self.policy: str = entry.get("policy", "pin")
        self.min_release: int = entry.get("min_release", 0)
        self.expected: Signature | None = None
        if "signature" in entry:
            try:
                self.expected = Signature.from_dict(entry["signature"])
            except ModelError as exc:
                raise ModelError(f"task {owner!r} model_refs[{alias!r}]: {exc}") from None
        self._store = store
        self._lock = threading.Lock()
        self._released = False
        self.release: int | None = None
        if self.policy == "pin":
            self.model = self._bind_pinned(entry["sha256"], owner)
            self._seen = -1
        else:
            current = store.current(self.ref)
            if current is None:
                raise ModelNotInstalled(
                    f"task {owner!r} needs model {self.ref!r} (as {alias!r}), which is not "
                    "installed; install its model bundle first")
            problems = self._problems(current)
            if problems:
                raise ModelIncompatible(
                    f"task {owner!r} needs a model {self.ref!r} compatible with the one it was "
                    f"built against; release {current.info.release} is not: {'; '.join(problems)}")
            self.model = self._claim(current)
            self.release = current.info.release
            self._seen = current.generation

    def _bind_pinned(self, sha256: str, owner: str) -> LoadedModel:
        current = self._store.current(self.ref)
        if current is not None and current.info.sha256 == sha256:
            self.release = current.info.release
            return self._claim(current)
        model = self._store.hub.claim(sha256)  # still loaded for another task: same bytes
        if model is not None:
            return model
        have = (f"installed: release {current.info.release}, sha256 {current.info.sha256[:12]}"
                if current is not None else "no release of it is installed")
        raise ModelNotInstalled(
            f"task {owner!r} pins model {self.ref!r} (as {self.alias!r}) at sha256 "
            f"{sha256[:12]}..., which is not installed ({have})")

    def _claim(self, release: ModelRelease) -> LoadedModel:
        model = self._store.hub.claim(release.info.sha256)
        if model is None:  # the store holds a claim on every current release
            raise ModelNotInstalled(f"model {self.ref!r} was unloaded")
        return model

    def _problems(self, release: ModelRelease) -> list[str]:
        problems = []
        if release.info.release < self.min_release:
            problems.append(f"release {release.info.release} < min_release {self.min_release}")
        if self.expected is not None:
            problems += incompatibilities(self.expected, release.signature)
        return problems

    def current(self) -> LoadedModel:
        """The model this call uses (``ModelHandle`` asks once per call)."""
        if self.policy != "compatible":
            return self.model
        latest = self._store.current(self.ref)
        if latest is None or latest.generation == self._seen:
            return self.model
        with self._lock:
            if latest.generation == self._seen or self._released:
                return self.model
            self._seen = latest.generation
            if latest.model is self.model:
                return self.model
            problems = self._problems(latest)
            if problems:
                log.warning("model %s release %d is not compatible with %s (%s); keeping "
                            "release %s", self.ref, latest.info.release, self.alias,
                            "; ".join(problems), self.release)
                return self.model
            new = self._store.hub.claim(latest.info.sha256)
            if new is None:
                return self.model
            old, self.model, self.release = self.model, new, latest.info.release
        self._store.hub.release(old)
        return new

    def close(self) -> None:
        """Drop the claim (the task release is gone).  Calls running keep their model."""
        with self._lock:
            if self._released:
                return
            self._released = True
        self._store.hub.release(self.model)

    # What callers that only know ``LoadedModel`` read.
    @property
    def digest(self) -> str:
        return self.model.digest


def bind_all(refs: dict[str, Any], store: ModelStore, owner: str) -> dict[str, ModelBinding]:
    """Resolve every reference of a task (all or nothing)."""
    out: dict[str, ModelBinding] = {}
    try:
        for alias, entry in sorted(refs.items()):
            out[alias] = ModelBinding(alias, entry, store, owner)
    except BaseException:
        for binding in out.values():
            binding.close()
        raise
    return out


__all__ = ["ModelBinding", "ModelIncompatible", "ModelNotInstalled", "bind_all"]
