"""What a backend builds with: the engine limits and switches of the recipe's ``build``
section, checked against the backend before any work."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from trtllm_forge.engine.backends.plugins import validate_plugins
from trtllm_forge.errors import recipe_error
from trtllm_forge.rules import lengths_problem


@dataclass(frozen=True)
class BuildOptions:
    """Engine limits and backend switches (the recipe's ``build`` section).

    ``timing_cache``: a TensorRT timing-cache file, read if it exists and written
    after the build (the caller keeps it as its own artifact).
    ``strongly_typed``: None means automatic (on for FP8 checkpoints, as TRT-LLM does).
    """

    max_batch_size: int = 8
    max_input_len: int = 512
    max_seq_len: int = 1024
    plugins: Mapping[str, str | bool] = field(default_factory=dict)
    opt_level: int = 3
    workspace_gb: float = 4.0
    timing_cache: Path | None = None
    strongly_typed: bool | None = None
    profile: str = "portable"  # ONNX lowering: portable (standard ops) or ort (contrib ops)
    int8_activations: bool = False  # ort profile: MatMulNBits accuracy_level 4 (CPU int8)
    compute_dtype: str = "float32"  # ort profile: float32 (CPU) or float16 (CUDA)

    def limits(self) -> dict[str, int]:
        return {
            "max_batch_size": self.max_batch_size,
            "max_input_len": self.max_input_len,
            "max_seq_len": self.max_seq_len,
        }

    def check(self, backend: str) -> None:
        problem = lengths_problem(self.max_input_len, self.max_seq_len)
        if problem:  # the recipe schema asks the same rule; this is for library callers
            raise recipe_error(problem)
        if self.profile not in ("portable", "ort"):
            raise recipe_error(
                f"unknown build profile {self.profile!r}", hint="choose portable or ort"
            )
        if self.profile == "ort" and backend != "onnxruntime":
            raise recipe_error(
                f"build.profile ort emits ONNX Runtime contrib ops that backend {backend!r} cannot run",
                hint="use build.backend: onnxruntime, or build.profile: portable",
            )
        problems = validate_plugins(backend, self.plugins)
        if problems:
            raise recipe_error("; ".join(problems))
