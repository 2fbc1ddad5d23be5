"""Host-owned ONNX Runtime sessions and the model API scripts see.

One ``InferenceSession`` per model digest, created by the host with the
device profile's options, shared by every task and thread that uses that
model (``InferenceSession.run`` is thread-safe) and dropped when no installed
task references it.  Scripts get a ``ModelHandle``: names, dtypes, shapes,
``run`` and ``run_batch`` - never the session, never ``onnxruntime``.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnxruntime as ort

from ..errors import ModelError, ModelInputError
from ..scheduler.scope import CallScope, Interrupt
from .profile import DeviceProfile
from .validate import validate_model_bytes
from .watchdog import Watchdog

_ORT_DTYPES = {
    "tensor(float)": np.dtype(np.float32),
    "tensor(double)": np.dtype(np.float64),
    "tensor(float16)": np.dtype(np.float16),
    "tensor(int64)": np.dtype(np.int64),
    "tensor(int32)": np.dtype(np.int32),
    "tensor(int16)": np.dtype(np.int16),
    "tensor(int8)": np.dtype(np.int8),
    "tensor(uint8)": np.dtype(np.uint8),
    "tensor(uint16)": np.dtype(np.uint16),
    "tensor(uint32)": np.dtype(np.uint32),
    "tensor(uint64)": np.dtype(np.uint64),
    "tensor(bool)": np.dtype(np.bool_),
}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: np.dtype
    shape: tuple[int | str | None, ...]

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype.name, "shape": list(self.shape)}


class LoadedModel:
    """A session plus its signature; shared across tasks by digest."""

    def __init__(self, name: str, digest: str, blob: bytes, profile: DeviceProfile):
        validate_model_bytes(name, blob, max_bytes=profile.max_model_bytes)
        try:
            self.session = ort.InferenceSession(
                blob, sess_options=profile.session_options(),
                providers=profile.available_providers(),
            )
        except Exception as exc:
            raise ModelError(f"model {name!r} does not load: {str(exc)[:300]}") from None
        self.digest = digest
        self.inputs = tuple(_spec(i) for i in self.session.get_inputs())
        self.outputs = tuple(_spec(o) for o in self.session.get_outputs())
        self._output_names = [o.name for o in self.outputs]
        self.refs = 0

    def check_feeds(self, model_name: str, feeds: Any) -> dict[str, np.ndarray]:
        if type(feeds) is not dict:
            raise ModelInputError(f"model {model_name!r}: feeds must be a dict of input name -> array")
        expected = {s.name for s in self.inputs}
        if set(feeds) != expected:
            raise ModelInputError(
                f"model {model_name!r}: expected inputs {sorted(expected)}, got {sorted(map(str, feeds))}"
            )
        out: dict[str, np.ndarray] = {}
        for spec in self.inputs:
            arr = feeds[spec.name]
            if type(arr) is not np.ndarray:
                raise ModelInputError(
                    f"model {model_name!r}: input {spec.name!r} must be a numpy array of "
                    f"{spec.dtype.name}, got {type(arr).__name__}"
                )
            if arr.dtype != spec.dtype:
                raise ModelInputError(
                    f"model {model_name!r}: input {spec.name!r} expects dtype {spec.dtype.name}, "
                    f"got {arr.dtype.name} (convert explicitly with .astype)"
                )
            if arr.ndim != len(spec.shape) or any(
                isinstance(d, int) and d != n for d, n in zip(spec.shape, arr.shape)
            ):
                raise ModelInputError(
                    f"model {model_name!r}: input {spec.name!r} expects shape "
                    f"{list(spec.shape)}, got {list(arr.shape)}"
                )
            out[spec.name] = arr
        return out

    def run(self, model_name: str, feeds: Any, scope: CallScope, watchdog: Watchdog) -> dict[str, np.ndarray]:
        checked = self.check_feeds(model_name, feeds)
        scope.check()
        scope.model_runs += 1
        if scope.max_model_runs is not None and scope.model_runs > scope.max_model_runs:
            raise Interrupt("limit", f"more than {scope.max_model_runs} model runs in one call")
        ro = ort.RunOptions()
        ro.log_severity_level = 4
        scope.attach_run(ro)
        if scope.should_watch():
            watchdog.watch(scope)
        start = time.perf_counter()
        try:
            results = self.session.run(self._output_names, checked, ro)
        except Exception as exc:
            if ro.terminate:
                scope.check()  # raises the timeout or cancellation that terminated it
                raise Interrupt("timeout", "model run terminated") from None
            raise ModelError(f"model {model_name!r} failed: {str(exc)[:300]}") from None
        finally:
            scope.model_time += time.perf_counter() - start
            scope.detach_run(ro)
        return dict(zip(self._output_names, results))


def _spec(node: Any) -> TensorSpec:
    dtype = _ORT_DTYPES.get(node.type)
    if dtype is None:
        raise ModelError(f"tensor {node.name!r} has unsupported type {node.type}")
    return TensorSpec(node.name, dtype, tuple(node.shape))


class ModelHub:
    """Sessions by digest, reference-counted by installed task releases."""

    def __init__(self, profile: DeviceProfile | None = None):
        self.profile = profile or DeviceProfile()
        self.watchdog = Watchdog()
        self._models: dict[str, LoadedModel] = {}
        self._lock = threading.Lock()

    def acquire(self, name: str, digest: str, blob: bytes) -> LoadedModel:
        with self._lock:
            model = self._models.get(digest)
            if model is None:
                model = LoadedModel(name, digest, blob, self.profile)
                self._models[digest] = model
            model.refs += 1
            return model

    def release(self, model: LoadedModel) -> None:
        with self._lock:
            model.refs -= 1
            if model.refs <= 0:
                self._models.pop(model.digest, None)

    def loaded(self) -> int:
        with self._lock:
            return len(self._models)

    def close(self) -> None:
        self.watchdog.close()


class ModelHandle:
    """What ``vm.model(name)`` returns to a script."""

    __slots__ = ("_name", "_model", "_scope", "_watchdog")

    def __init__(self, name: str, model: LoadedModel, scope: CallScope, watchdog: Watchdog):
        object.__setattr__(self, "_name", name)
        object.__setattr__(self, "_model", model)
        object.__setattr__(self, "_scope", scope)
        object.__setattr__(self, "_watchdog", watchdog)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("model handles are read-only")

    def __repr__(self) -> str:
        return f"<model {self._name!r}>"

    @property
    def name(self) -> str:
        return self._name

    @property
    def inputs(self) -> list[dict[str, Any]]:
        return [s.describe() for s in self._model.inputs]

    @property
    def outputs(self) -> list[dict[str, Any]]:
        return [s.describe() for s in self._model.outputs]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._model.run(self._name, feeds, self._scope, self._watchdog)

    def run_batch(self, feeds_list: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        """Stack per-item feeds along axis 0, run once, split the outputs back."""
        if type(feeds_list) is not list or not feeds_list:
            raise ModelInputError("run_batch takes a non-empty list of feed dicts")
        names = [s.name for s in self._model.inputs]
        for feeds in feeds_list:
            self._model.check_feeds(self._name, feeds)
        sizes = [feeds[names[0]].shape[0] for feeds in feeds_list]
        stacked = {n: np.concatenate([f[n] for f in feeds_list], axis=0) for n in names}
        out = self.run(stacked)
        bounds = np.cumsum(sizes)[:-1]
        split = {k: np.split(v, bounds) for k, v in out.items()}
        return [{k: split[k][i] for k in split} for i in range(len(feeds_list))]
