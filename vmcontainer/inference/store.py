"""The container's model registry: models installed from model bundles, by name.

A model bundle (``vmtool build-model``) carries one model and no script.  It
installs with ``Container.install`` like a task and lands here: the newest
release of each model name, with its own anti-rollback mark (kept apart from
tasks by the bundle name ``model:NAME``).  Tasks reach these models through
``model_refs`` in their manifest, resolved by ``refs.ModelBinding``:

* ``pin`` (the default) - exactly the bytes with this SHA-256; installing a
  newer release of the model changes nothing for the task;
* ``compatible`` - the newest installed release whose signature can stand in
  for the one the task was built against (``signature.incompatibilities``);
  a model update reaches the task at its next call, with no script rebuild.

The store holds one hub claim on each model's current release; tasks hold
their own claims on what they use, so replacing a release never unloads a
model a pinned task still runs on.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from ..bundle import format as fmt
from ..bundle.verifier import VerifiedBundle
from ..errors import ModelError
from .hub import ModelHub
from .loaded import LoadedModel
from .profile import MicroBatch
from .signature import Signature

log = logging.getLogger("vmcontainer.inference")


class ModelRefError(ModelError):
    """A task's model reference cannot be satisfied at install."""


class ModelNotInstalled(ModelRefError):
    """The referenced model (or the pinned release of it) is not installed."""


class ModelIncompatible(ModelRefError):
    """The installed model's signature cannot stand in for the one the task expects."""


@dataclass(frozen=True)
class ModelInfo:
    """Public description of an installed model bundle (``Container.install`` returns it).

    ``name`` is the bundle's name (``model:NAME``: what updates and anti-rollback
    track); ``model`` is the name tasks reference."""

    name: str
    model: str
    release: int
    sha256: str
    size: int
    signature: dict[str, Any]
    signers: tuple[str, ...]
    installed_at: float
    micro_batch: dict[str, Any] | None = None
    meta: dict[str, Any] = field(default_factory=dict)


class ModelRelease:
    """One installed release: its info, its loaded model and a publish counter."""

    __slots__ = ("generation", "info", "model", "signature")

    def __init__(self, info: ModelInfo, model: LoadedModel, signature: Signature, generation: int):
        self.info = info
        self.model = model
        self.signature = signature
        self.generation = generation


class ModelStore:
    def __init__(self, hub: ModelHub):
        self.hub = hub
        self._current: dict[str, ModelRelease] = {}
        self._high_water: dict[str, int] = {}
        self._generation = 0
        self._lock = threading.Lock()

    # -- installing ----------------------------------------------------------------------

    def high_water(self, bundle_name: str) -> int | None:
        """Anti-rollback mark for a model bundle name (``model:NAME``)."""
        return self._high_water.get(bundle_name[len(fmt.MODEL_BUNDLE_PREFIX):])

    def install(self, verified: VerifiedBundle) -> ModelInfo:
        """Load a verified model bundle and make it the model's current release."""
        m = verified.manifest
        name = verified.name[len(fmt.MODEL_BUNDLE_PREFIX):]
        digest = m["models"][name]
        info_section = m["model_info"]
        declared = Signature.from_dict(info_section.get("signature"))
        batching = None
        if name not in self.hub.profile.micro_batch and info_section.get("micro_batch"):
            batching = MicroBatch.parse(name, info_section["micro_batch"])  # device profile wins
        model = self.hub.acquire(name, digest, verified.models[name], batching=batching)
        try:
            actual = model.signature
            if actual is not None and actual != declared:
                raise ModelError(f"model {name!r} does not match its declared signature: "
                                 f"declared {declared.describe()}, loaded {actual.describe()}")
        except BaseException:
            self.hub.release(model)
            raise
        if model.signature is None:
            model.expect_signature(declared)
        info = ModelInfo(
            name=verified.name, model=name, release=verified.release, sha256=digest,
            size=len(verified.models[name]), signature=declared.describe(),
            signers=verified.signers, installed_at=time.time(),
            micro_batch=info_section.get("micro_batch"), meta=dict(m["meta"]))
        with self._lock:
            self._generation += 1
            old = self._current.get(name)
            self._current[name] = ModelRelease(info, model, declared, self._generation)
            hw = self._high_water.get(name, -1)
            self._high_water[name] = max(hw, verified.release)
        if old is not None:
            self.hub.release(old.model)
        log.info("installed model %s release %d (%s)", name, info.release, digest[:12])
        return info

    def remove(self, bundle_name: str) -> ModelInfo:
        """Uninstall a model: new references fail; tasks already using it keep it."""
        name = bundle_name[len(fmt.MODEL_BUNDLE_PREFIX):]
        with self._lock:
            release = self._current.pop(name, None)
            if release is not None:
                self._generation += 1
        if release is None:
            raise ModelNotInstalled(f"no model named {name!r} is installed")
        self.hub.release(release.model)
        return release.info

    # -- lookups ---------------------------------------------------------------------------

    def current(self, name: str) -> ModelRelease | None:
        return self._current.get(name)

    def infos(self) -> list[ModelInfo]:
        return sorted((r.info for r in list(self._current.values())), key=lambda i: i.model)

    def has(self, bundle_name: str) -> bool:
        return bundle_name[len(fmt.MODEL_BUNDLE_PREFIX):] in self._current

    def close(self) -> None:
        with self._lock:
            releases = list(self._current.values())
            self._current.clear()
        for release in releases:
            self.hub.release(release.model)
