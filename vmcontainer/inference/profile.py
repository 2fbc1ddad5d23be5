"""Device profiles: how this device wants ONNX Runtime sessions configured.

The app (or a profile file) sets these; scripts never see ``SessionOptions``.
Whatever the profile says, the container never enables custom op libraries,
profiling output or optimized-model files.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnxruntime as ort

_OPT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


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

    def session_options(self) -> ort.SessionOptions:
        so = ort.SessionOptions()
        so.intra_op_num_threads = self.intra_op_threads
        so.inter_op_num_threads = self.inter_op_threads
        so.graph_optimization_level = _OPT_LEVELS[self.graph_optimization]
        so.execution_mode = (
            ort.ExecutionMode.ORT_PARALLEL if self.parallel_execution else ort.ExecutionMode.ORT_SEQUENTIAL
        )
        so.enable_cpu_mem_arena = self.memory_arena
        so.enable_mem_pattern = self.memory_pattern
        so.enable_profiling = False
        so.optimized_model_filepath = ""
        so.log_severity_level = 3
        # Spinning threads burn a core for nothing on a phone.
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.add_session_config_entry("session.inter_op.allow_spinning", "0")
        return so

    def available_providers(self) -> list[str]:
        have = set(ort.get_available_providers())
        chosen = [p for p in self.providers if p in have]
        if "CPUExecutionProvider" not in chosen:
            chosen.append("CPUExecutionProvider")
        return chosen
