"""Engine backends: build a per-rank checkpoint into an engine directory.

This package module stays light (it is imported by recipe validation on the CLI
start path); each backend module is imported only when it builds.

* ``onnxruntime`` (default): lower to ONNX + ORT segments + engine.json.
* ``tensorrt``: the same ONNX, parsed by TensorRT's OnnxParser and serialized per rank.
* ``trtllm``: runs ``trtllm-build`` (TensorRT-LLM ≤ 1.2) on the checkpoint itself.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trtllm_forge.context import NullProgress, Progress
from trtllm_forge.engine.backends.plugins import BACKENDS, validate_plugins
from trtllm_forge.errors import recipe_error

_NO_PROGRESS = NullProgress()

__all__ = ["BACKENDS", "BuildOptions", "backend_unavailable", "build_engine", "validate_plugins"]


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
        if not 0 < self.max_input_len < self.max_seq_len:
            raise recipe_error(
                f"max_input_len ({self.max_input_len}) must be positive and below max_seq_len ({self.max_seq_len})"
            )
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


def _module(backend: str) -> Any:
    if backend not in BACKENDS:
        raise recipe_error(
            f"unknown backend {backend!r}", hint=f"choose one of {', '.join(BACKENDS)}"
        )
    return importlib.import_module(f"trtllm_forge.engine.backends.{backend}")


def backend_unavailable(backend: str) -> str | None:
    """A one-line reason the backend cannot build on this machine, or None when it can."""
    reason: str | None = _module(backend).unavailable_reason()
    return reason


def build_engine(
    backend: str,
    checkpoint_dir: Path,
    out_dir: Path,
    options: BuildOptions = BuildOptions(),
    *,
    progress: Progress = _NO_PROGRESS,
) -> dict[str, Any]:
    """Build ``checkpoint_dir`` (per-rank TRT-LLM layout) into ``out_dir``; returns engine.json.

    Raises ForgeError: RECIPE for bad options/plugins, DEPENDENCY when the backend's
    tools or hardware are missing.
    """
    options.check(backend)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    meta: dict[str, Any] = _module(backend).build(
        Path(checkpoint_dir), out_dir, options, progress=progress
    )
    return meta
