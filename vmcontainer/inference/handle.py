"""``ModelHandle``: what ``vm.model(name)`` gives a script.

Names, dtypes and shapes, ``run`` and ``run_batch`` - never the session, never
``onnxruntime``.  A handle lives for one call: it is made by the call's ``vm``
module, so it can own that call's ``RunOptions`` (attached to the call's scope
once, so cancel and the watchdog can terminate any run it makes) instead of
building and registering a new one per run.  ``RunOptions.terminate`` is
sticky, which is right here: once it is set, the call is over.

Conversions are explicit: ``run(feeds)`` takes numpy arrays of exactly the
declared dtype; ``run(feeds, convert=True)`` also takes lists, scalars and
arrays that cast to it under numpy's ``same_kind`` rule (see docs/models.md).
"""

from __future__ import annotations

from time import monotonic as _monotonic
from typing import Any

import numpy as np
import onnxruntime as ort

from ..errors import ModelInputError
from ..scheduler.scope import CallScope, Interrupt, fault
from .loaded import LoadedModel

MAX_BATCH_ELEMENTS = 50_000_000  # as the numpy facade's allocation cap


class ModelHandle:
    """One model as one call of one script sees it."""

    __slots__ = ("_model", "_name", "_ro", "_scope")

    def __init__(self, name: str, model: Any, scope: CallScope, watchdog: Any):
        model = model.current()  # a compatible reference resolves to the newest model here
        model.ensure()  # lazy sessions are created at first use, not at first run
        ro = ort.RunOptions()
        ro.log_severity_level = 4
        scope.attach_run(ro)
        if watchdog is not None and scope.should_watch():
            watchdog.watch(scope)
        object.__setattr__(self, "_name", name)
        object.__setattr__(self, "_model", model)
        object.__setattr__(self, "_scope", scope)
        object.__setattr__(self, "_ro", ro)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("model handles are read-only")

    def __repr__(self) -> str:
        return f"<model {self._name!r}>"

    @property
    def name(self) -> str:
        return self._name

    @property
    def inputs(self) -> list[dict[str, Any]]:
        """``[{"name", "dtype", "shape"}]``; dynamic dimensions are names or None."""
        return [s.describe() for s in self._model.inputs]

    @property
    def outputs(self) -> list[dict[str, Any]]:
        return [s.describe() for s in self._model.outputs]

    def run(self, feeds: dict[str, np.ndarray], convert: bool = False) -> dict[str, np.ndarray]:
        """Run once: ``{input name: array}`` -> ``{output name: array}``."""
        model: LoadedModel = self._model
        if convert:
            feeds = model.convert_feeds(self._name, feeds)
        else:
            model.check_feeds(self._name, feeds)
        scope = self._scope
        _admit(scope)
        if model.batcher is not None:
            return model.batcher.run(self._name, feeds, scope, self._ro)
        return model.run_checked(self._name, feeds, self._ro, scope)

    def run_batch(self, feeds_list: list[dict[str, np.ndarray]],
                  convert: bool = False) -> list[dict[str, np.ndarray]]:
        """Stack per-item feeds along axis 0, run once, split the outputs back.

        Every input and output must have a dynamic first axis; each item may hold
        any number of rows (including one)."""
        if type(feeds_list) is not list or not feeds_list:
            raise ModelInputError("run_batch takes a non-empty list of feed dicts")
        model: LoadedModel = self._model
        checked = [model.convert_feeds(self._name, f) if convert else
                   model.check_feeds(self._name, f) for f in feeds_list]
        for spec in model.inputs:
            if not spec.shape or type(spec.shape[0]) is int:
                raise ModelInputError(f"model {self._name!r}: run_batch needs a dynamic first "
                                      f"axis on input {spec.name!r} (shape {list(spec.shape)})")
        names = [s.name for s in model.inputs]
        sizes = [f[names[0]].shape[0] for f in checked]
        total_elements = sum(int(a.size) for f in checked for a in f.values())
        if total_elements > MAX_BATCH_ELEMENTS:  # checked before concatenating (one C call)
            raise fault("limit", f"run_batch of {total_elements} elements exceeds {MAX_BATCH_ELEMENTS}")
        if len(checked) == 1:
            return [self.run(checked[0])]
        try:
            stacked = {n: np.concatenate([f[n] for f in checked], axis=0) for n in names}
        except ValueError as exc:
            raise ModelInputError(f"model {self._name!r}: run_batch items do not stack: {exc}"
                                  ) from None
        out = self.run(stacked)
        total = sum(sizes)
        for key, value in out.items():
            if value.ndim == 0 or value.shape[0] != total:
                raise ModelInputError(f"model {self._name!r}: output {key!r} does not follow the "
                                      "batch axis; call run() per item")
        bounds = np.cumsum(sizes)[:-1]
        split = {k: np.split(v, bounds) for k, v in out.items()}
        return [{k: split[k][i] for k in split} for i in range(len(checked))]


def _admit(scope: CallScope) -> None:
    """Deadline, cancel, swallowed-fault and model-run-cap checks before a run."""
    if scope.fault is not None or scope.cancelled or _monotonic() > scope.deadline:
        scope.check()
    runs = scope.model_runs + 1
    scope.model_runs = runs
    cap = scope.max_model_runs
    if cap is not None and runs > cap:
        raise Interrupt("limit", f"more than {cap} model runs in one call")
