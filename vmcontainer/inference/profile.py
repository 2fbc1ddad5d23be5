"""Device profiles: how this device wants ONNX Runtime sessions configured.

The app (``DeviceProfile(...)``) or a profile file (``DeviceProfile.from_file``)
sets these; scripts never see ``SessionOptions``.  Whatever a profile says,
the container never enables custom op libraries, profiling output,
optimized-model files or external data: ``from_dict`` refuses those keys by
name (a profile file is configuration that may come from anywhere), and only
allow-listed ORT session config entries pass.

Every field is plain data (str, int, float, bool, None, tuple, dict) so a
profile crosses process boundaries as ``dataclasses.asdict`` and back.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import onnxruntime as ort

from ..errors import ModelError
from .memory import ensure_arena_cap
from .validate import ModelLimits

_OPT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}

# Profile keys that are refused outright, with the reason given to whoever wrote them.
_REFUSED = {
    "custom_op_libraries": "custom op libraries run native code outside the sandbox",
    "register_custom_ops_library": "custom op libraries run native code outside the sandbox",
    "custom_ops": "custom op libraries run native code outside the sandbox",
    "enable_profiling": "profiling writes files on the device",
    "profile_file_prefix": "profiling writes files on the device",
    "optimized_model_filepath": "optimized-model files are written to (and read from) disk",
    "external_data": "models never read external data files",
    "external_initializers": "models never read external data files",
    "provider_options": "provider options can name files and libraries; only provider names "
                        "are configurable",
}

_REFUSED_PROVIDERS = {
    "AzureExecutionProvider": "it sends inputs to a remote endpoint",
}

# ORT session config entries a profile may set; everything else (model save/load
# formats, EP context files, external initializer files, ...) is refused.
ALLOWED_SESSION_CONFIG = frozenset({
    "session.intra_op.allow_spinning",
    "session.inter_op.allow_spinning",
    "session.set_denormal_as_zero",
    "session.disable_prepacking",
    "session.dynamic_block_base",
    "session.x64quantprecision",
    "session.qdqisint8allowed",
    "session.disable_quant_qdq",
    "session.enable_quant_qdq_cleanup",
    "session.disable_double_qdq_remover",
    "session.intra_op_thread_affinities",
    "session.force_spinning_stop",
    "session.disable_aot_function_inlining",
    "mlas.enable_gemm_fastmath_arm64_bfloat16",
})


class ProfileError(ModelError, ValueError):
    """A device profile asks for something invalid or refused."""


@dataclass(frozen=True)
class MicroBatch:
    """Opt-in merging of concurrent runs of one model (see ``batching``)."""

    window_ms: float = 2.0  # longest a request waits for a free run slot
    max_batch: int = 64  # most requests merged into one run
    max_concurrent: int = 1  # merged runs of the model in flight at once ("run slots")

    @classmethod
    def parse(cls, model: str, data: Any) -> MicroBatch:
        if isinstance(data, MicroBatch):
            return data
        if not isinstance(data, Mapping) or not set(data) <= {"window_ms", "max_batch",
                                                              "max_concurrent"}:
            raise ProfileError(f"micro_batch[{model!r}] takes window_ms, max_batch and "
                               "max_concurrent")
        out = cls(**dict(data))
        if not (isinstance(out.window_ms, (int, float)) and 0 < out.window_ms <= 100):
            raise ProfileError(f"micro_batch[{model!r}].window_ms must be in (0, 100]")
        if type(out.max_batch) is not int or not 2 <= out.max_batch <= 4096:
            raise ProfileError(f"micro_batch[{model!r}].max_batch must be an int in 2..4096")
        if type(out.max_concurrent) is not int or not 1 <= out.max_concurrent <= 64:
            raise ProfileError(f"micro_batch[{model!r}].max_concurrent must be an int in 1..64")
        return out


@dataclass(frozen=True)
class DeviceProfile:
    intra_op_threads: int = 1
    inter_op_threads: int = 1
    graph_optimization: str = "all"
    parallel_execution: bool = False
    memory_arena: bool = True
    memory_pattern: bool = True
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    max_model_bytes: int = 32 << 20
    min_opset: int = 7
    max_opset: int = 21
    max_constant_bytes: int = 256 << 20  # largest constant-shaped allocation accepted at load
    memory_limit_mb: int | None = 1024  # process-wide ORT CPU arena cap; None = uncapped
    preload: bool = True  # create + warm sessions at install (else lazily at first run)
    warmup_budget_ms: float = 50.0  # the install-time warm-up run is terminated after this
    micro_batch: dict[str, dict[str, Any]] = field(default_factory=dict)  # model -> MicroBatch
    session_config: dict[str, str] = field(default_factory=dict)  # allow-listed ORT entries

    def __post_init__(self) -> None:
        object.__setattr__(self, "providers", tuple(self.providers))
        for name in ("intra_op_threads", "inter_op_threads"):
            value = getattr(self, name)
            if type(value) is not int or not 0 <= value <= 64:
                raise ProfileError(f"{name} must be an int in 0..64 (0 = ONNX Runtime's default)")
        if self.graph_optimization not in _OPT_LEVELS:
            raise ProfileError(f"graph_optimization must be one of {sorted(_OPT_LEVELS)}")
        if not all(isinstance(p, str) for p in self.providers):
            raise ProfileError("providers must be execution provider names")
        refused = sorted(set(self.providers) & _REFUSED_PROVIDERS.keys())
        if refused:
            raise ProfileError(f"execution provider {refused[0]} is refused: "
                               f"{_REFUSED_PROVIDERS[refused[0]]}")
        if not 1 <= self.min_opset <= self.max_opset:
            raise ProfileError("need 1 <= min_opset <= max_opset")
        if self.memory_limit_mb is not None and (
                type(self.memory_limit_mb) is not int or self.memory_limit_mb < 16):
            raise ProfileError("memory_limit_mb must be an int >= 16, or None")
        batches = {}
        for model, cfg in dict(self.micro_batch).items():
            mb = MicroBatch.parse(model, cfg)
            batches[model] = {"window_ms": mb.window_ms, "max_batch": mb.max_batch,
                              "max_concurrent": mb.max_concurrent}
        object.__setattr__(self, "micro_batch", batches)
        config = {str(k): str(v) for k, v in dict(self.session_config).items()}
        bad = sorted(set(config) - ALLOWED_SESSION_CONFIG)
        if bad:
            raise ProfileError(f"session config entries {bad} are not allowed "
                               f"(allowed: {sorted(ALLOWED_SESSION_CONFIG)})")
        object.__setattr__(self, "session_config", config)

    def __hash__(self) -> int:
        return hash(json.dumps(asdict(self), sort_keys=True))

    # -- loading --------------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DeviceProfile:
        """Build a profile from plain data, refusing unknown and forbidden keys by name."""
        if not isinstance(data, Mapping):
            raise ProfileError("a device profile is a JSON object")
        for key in data:
            if key in _REFUSED:
                raise ProfileError(f"profile key {key!r} is refused: {_REFUSED[key]}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ProfileError(f"unknown profile keys {unknown} (known: {sorted(known)})")
        try:
            return cls(**dict(data))
        except TypeError as exc:
            raise ProfileError(f"bad device profile: {exc}") from None

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> DeviceProfile:
        """Read a JSON profile file (see ``docs/models.md`` for an example)."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ProfileError(f"cannot read device profile {Path(path).name}: "
                               f"{type(exc).__name__}") from None
        return cls.from_dict(data)

    # -- what the hub uses ------------------------------------------------------------

    def model_limits(self) -> ModelLimits:
        return ModelLimits(max_bytes=self.max_model_bytes, min_opset=self.min_opset,
                           max_opset=self.max_opset, max_constant_bytes=self.max_constant_bytes)

    def batching_for(self, model: str) -> MicroBatch | None:
        cfg = self.micro_batch.get(model)
        return None if cfg is None else MicroBatch(**cfg)

    def session_options(self) -> ort.SessionOptions:
        so = ort.SessionOptions()
        so.intra_op_num_threads = self.intra_op_threads
        so.inter_op_num_threads = self.inter_op_threads
        so.graph_optimization_level = _OPT_LEVELS[self.graph_optimization]
        so.execution_mode = (
            ort.ExecutionMode.ORT_PARALLEL if self.parallel_execution
            else ort.ExecutionMode.ORT_SEQUENTIAL
        )
        so.enable_cpu_mem_arena = self.memory_arena
        so.enable_mem_pattern = self.memory_pattern
        so.enable_profiling = False
        so.optimized_model_filepath = ""
        so.log_severity_level = 4  # ORT logs failed runs (terminate) at ERROR to stderr
        # Spinning threads burn a core for nothing on a phone.
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.add_session_config_entry("session.inter_op.allow_spinning", "0")
        for key, value in self.session_config.items():
            so.add_session_config_entry(key, value)
        if self.memory_limit_mb is not None and ensure_arena_cap(self.memory_limit_mb << 20):
            so.add_session_config_entry("session.use_env_allocators", "1")
        return so

    def available_providers(self) -> list[str]:
        have = set(ort.get_available_providers())
        chosen = [p for p in self.providers if p in have]
        if "CPUExecutionProvider" not in chosen:
            chosen.append("CPUExecutionProvider")
        return chosen
