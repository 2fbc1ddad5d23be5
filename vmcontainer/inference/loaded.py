"""One model, loaded: its ORT session, its signature and the per-call hot path.

A ``LoadedModel`` is shared by every task and thread that uses the same model
bytes (the hub keys them by SHA-256), so it holds nothing per call.  What is
per call - the deadline, the ``RunOptions`` the watchdog may terminate - lives
in the script's ``ModelHandle`` and ``CallScope``.

The hot path (``check_feeds`` + ``run_checked``) is written for a batch-1 run
of a small model, where ORT itself takes about 8-15 us: input metadata is
precomputed once, there are no per-call allocations besides the result dict,
and the session's own binding is called directly - ``InferenceSession.run``
re-validates the feed names (we already did) and costs ~5 us more without a
caller-supplied ``RunOptions``.  If a future ORT drops that binding, the
public ``run`` is used instead.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import onnxruntime as ort

from ..errors import ModelError, ModelInputError
from ..scheduler.scope import CallScope, Interrupt
from .memory import arena_cap
from .onnx_wire import ModelFacts
from .profile import DeviceProfile, MicroBatch
from .signature import Signature, TensorSpec
from .validate import validate_model_bytes

log = logging.getLogger("vmcontainer.inference")

RunFn = Callable[[list[str], dict[str, np.ndarray], Any], list[np.ndarray]]


class LoadedModel:
    """A validated model and (once created) its session; shared across tasks by digest."""

    def __init__(self, name: str, digest: str, blob: bytes, profile: DeviceProfile, *,
                 watchdog: Any = None, batching: MicroBatch | None = None):
        self.facts: ModelFacts = validate_model_bytes(name, blob, limits=profile.model_limits())
        self.name = name
        self.digest = digest
        self.size = len(blob)
        self.refs = 0
        self.session: ort.InferenceSession | None = None
        self.signature: Signature | None = None
        self.create_ms: float | None = None
        self.warm_ms: float | None = None
        self.batcher: Any = None
        self._profile = profile
        self._watchdog = watchdog
        self._batching = batching if batching is not None else profile.batching_for(name)
        self._blob: bytes | None = bytes(blob)
        self._lock = threading.Lock()
        self._run: RunFn | None = None
        self._expected: Signature | None = None
        self._output_names: list[str] = []
        self._checks: tuple[tuple[str, np.dtype, int, tuple[tuple[int, int], ...]], ...] = ()
        self._shared: tuple[tuple[str, int, str, int], ...] = ()
        if profile.preload:
            self.ensure()
            self.warm(profile.warmup_budget_ms / 1000)

    # -- session ---------------------------------------------------------------------

    def ensure(self) -> RunFn:
        """Create the session if it does not exist yet (lazy mode); return the run function."""
        run = self._run
        if run is not None:
            return run
        with self._lock:
            if self._run is None:
                self._create()
            return self._run  # type: ignore[return-value]

    def _create(self) -> None:
        start = time.perf_counter()
        try:
            session = ort.InferenceSession(
                self._blob, sess_options=self._profile.session_options(),
                providers=self._profile.available_providers(),
            )
        except Exception as exc:  # any ORT failure: one ModelError
            raise ModelError(f"model {self.name!r} does not load: {_ort_message(exc)}") from None
        signature = Signature.of_session(session)
        if self._expected is not None and signature != self._expected:
            raise ModelError(f"model {self.name!r} does not match its declared signature: "
                             f"declared {self._expected.describe()}, loaded {signature.describe()}")
        self.create_ms = (time.perf_counter() - start) * 1000
        self.session = session
        self.signature = signature
        self._output_names = [o.name for o in signature.outputs]
        self._checks = tuple((s.name, s.dtype, len(s.shape), s.fixed_dims)
                             for s in signature.inputs)
        self._shared = _shared_dims(signature.inputs)
        if self._batching is not None:
            from .batching import MicroBatcher  # only models that opt in pay for the import

            self.batcher = MicroBatcher(self, self._batching)
        binding = getattr(session, "_sess", None)
        self._run = binding.run if binding is not None and hasattr(binding, "run") else session.run
        self._blob = None  # ORT holds its own copy now

    def warm(self, budget_s: float) -> None:
        """One run on zeros (dynamic dims = 1) so the first real call does not pay for
        arena growth and kernel first-use; best effort, terminated after ``budget_s``."""
        if self.session is None or budget_s <= 0:
            return
        feeds = {s.name: np.zeros(tuple(d if type(d) is int else 1 for d in s.shape), s.dtype)
                 for s in self.inputs}
        ro = ort.RunOptions()
        ro.log_severity_level = 4
        scope = CallScope(budget_s)
        scope.attach_run(ro)
        if self._watchdog is not None:
            self._watchdog.watch(scope)
        start = time.perf_counter()
        try:
            self._run(self._output_names, feeds, ro)  # type: ignore[misc]
        except Exception as exc:  # zeros are not valid input for every model
            log.debug("warm-up of %s skipped: %s", self.name, _ort_message(exc))
        self.warm_ms = (time.perf_counter() - start) * 1000

    def expect_signature(self, declared: Signature) -> None:
        """A lazily loaded model bundle: check its session against ``declared`` when
        it is created (eager loads are checked by the store right away)."""
        self._expected = declared

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        self.ensure()
        return self.signature.inputs  # type: ignore[union-attr]

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        self.ensure()
        return self.signature.outputs  # type: ignore[union-attr]

    def current(self) -> LoadedModel:
        """A loaded model is its own binding (cf. ``refs.ModelBinding``)."""
        return self

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.close()

    # -- feeds -------------------------------------------------------------------------

    def check_feeds(self, model_name: str, feeds: Any) -> dict[str, np.ndarray]:
        """Exact names, dtypes, ranks and fixed sizes; no conversion.  Returns ``feeds``."""
        checks = self._checks
        if type(feeds) is not dict or len(feeds) != len(checks):
            self._feeds_error(model_name, feeds)
        for name, dtype, ndim, fixed in checks:
            arr = feeds.get(name)
            if type(arr) is not np.ndarray or arr.dtype != dtype or arr.ndim != ndim:
                self._feeds_error(model_name, feeds)
            if fixed:
                shape = arr.shape
                for axis, size in fixed:
                    if shape[axis] != size:
                        self._feeds_error(model_name, feeds)
        for a, axis_a, b, axis_b in self._shared:
            if feeds[a].shape[axis_a] != feeds[b].shape[axis_b]:
                self._feeds_error(model_name, feeds)
        return feeds

    def convert_feeds(self, model_name: str, feeds: Any) -> dict[str, np.ndarray]:
        """``run(..., convert=True)``: lists, scalars and arrays of another dtype are
        converted to the input's dtype when numpy's ``same_kind`` casting allows it
        (int -> float, float64 -> float32), never float -> int or anything -> bool."""
        if type(feeds) is not dict:
            self._feeds_error(model_name, feeds)
        out: dict[str, Any] = {}
        for spec in self.inputs:
            if spec.name not in feeds:
                self._feeds_error(model_name, feeds)
            value = feeds[spec.name]
            if type(value) is not np.ndarray:
                if not isinstance(value, (list, tuple, int, float, bool, np.generic)):
                    raise ModelInputError(
                        f"model {model_name!r}: input {spec.name!r} cannot be converted from "
                        f"{type(value).__name__}")
                try:
                    value = np.asarray(value)
                except (ValueError, TypeError) as exc:
                    raise ModelInputError(
                        f"model {model_name!r}: input {spec.name!r} is not a regular array: {exc}"
                    ) from None
            if value.dtype != spec.dtype:
                if value.dtype.kind not in "biuf" or not np.can_cast(value.dtype, spec.dtype,
                                                                      "same_kind"):
                    raise ModelInputError(
                        f"model {model_name!r}: input {spec.name!r} expects {spec.dtype.name}; "
                        f"{value.dtype.name} does not convert safely (cast explicitly)")
                value = value.astype(spec.dtype)
            out[spec.name] = value
        extra = set(feeds) - set(out)
        if extra:
            self._feeds_error(model_name, feeds)
        return self.check_feeds(model_name, out)

    def _feeds_error(self, model_name: str, feeds: Any) -> None:
        """Say exactly what was expected and what came (the slow path of the checks)."""
        prefix = f"model {model_name!r}"
        if type(feeds) is not dict:
            raise ModelInputError(f"{prefix}: feeds must be a dict of input name -> array, "
                                  f"got {type(feeds).__name__}")
        expected = [s.name for s in self.inputs]
        if set(feeds) != set(expected):
            raise ModelInputError(f"{prefix}: expected inputs {sorted(expected)}, "
                                  f"got {sorted(map(str, feeds))}")
        for spec in self.inputs:
            arr = feeds[spec.name]
            what = f"{prefix}: input {spec.name!r}"
            if type(arr) is not np.ndarray:
                raise ModelInputError(f"{what} must be a numpy array of {spec.dtype.name}, got "
                                      f"{type(arr).__name__} (or pass convert=True)")
            if arr.dtype != spec.dtype:
                raise ModelInputError(f"{what} expects dtype {spec.dtype.name}, got "
                                      f"{arr.dtype.name} (convert explicitly with .astype, or "
                                      "pass convert=True)")
            if arr.ndim != len(spec.shape) or any(
                    type(d) is int and d != n for d, n in zip(spec.shape, arr.shape)):
                raise ModelInputError(f"{what} expects shape {list(spec.shape)}, got "
                                      f"{list(arr.shape)}")
        for a, axis_a, b, axis_b in self._shared:
            dim = self.inputs[[s.name for s in self.inputs].index(a)].shape[axis_a]
            if feeds[a].shape[axis_a] != feeds[b].shape[axis_b]:
                raise ModelInputError(
                    f"{prefix}: dimension {dim!r} is {feeds[a].shape[axis_a]} in input {a!r} "
                    f"but {feeds[b].shape[axis_b]} in input {b!r}")
        raise ModelInputError(f"{prefix}: bad feeds")  # not reached: a check above fails

    # -- running -----------------------------------------------------------------------

    def run_checked(self, model_name: str, feeds: dict[str, np.ndarray], ro: Any,
                    scope: CallScope) -> dict[str, np.ndarray]:
        """Run already-checked feeds under ``ro`` (terminated by the watchdog or cancel)."""
        names = self._output_names
        start = time.perf_counter()
        try:
            results = self._run(names, feeds, ro)  # type: ignore[misc]
        except Exception as exc:  # any ORT failure: one typed error
            raise self.run_error(model_name, exc, ro, scope) from None
        finally:
            scope.model_time += time.perf_counter() - start
        return dict(zip(names, results))

    def run_error(self, model_name: str, exc: Exception, ro: Any,
                  scope: CallScope | None) -> BaseException:
        """The public error for a failed ORT run."""
        if ro is not None and ro.terminate:
            if scope is not None:
                try:
                    scope.check()  # the timeout or cancellation that terminated it
                except Interrupt as intr:
                    return intr
            return Interrupt("timeout", "model run terminated")
        message = _ort_message(exc)
        if "Failed to allocate" in message or "Available memory of" in message:
            cap = arena_cap()
            budget = f" of {cap >> 20} MB" if cap else ""
            return ModelError(f"model {model_name!r} ran out of its inference memory budget"
                              f"{budget}: {message[-160:]}")
        if type(exc).__name__ == "InvalidArgument":
            return ModelInputError(f"model {model_name!r} rejected its inputs: {message}")
        return ModelError(f"model {model_name!r} failed: {message}")


def _shared_dims(specs: tuple[TensorSpec, ...]) -> tuple[tuple[str, int, str, int], ...]:
    """Pairs of (input, axis) that share a named dynamic dimension ("N" in two inputs):
    their sizes must agree, and saying so beats ORT's broadcast error."""
    first: dict[str, tuple[str, int]] = {}
    pairs = []
    for spec in specs:
        for axis, dim in enumerate(spec.shape):
            if isinstance(dim, str):
                if dim in first:
                    pairs.append((*first[dim], spec.name, axis))
                else:
                    first[dim] = (spec.name, axis)
    return tuple(pairs)


def _ort_message(exc: BaseException) -> str:
    """ORT's message without its source paths (they would leave the device in logs)."""
    text = str(exc)
    for marker in ("Status Message: ", "] : "):
        if marker in text:
            text = text.split(marker, 1)[1]
    return " ".join(text.split())[:300]
