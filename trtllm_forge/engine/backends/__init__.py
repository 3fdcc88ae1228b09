"""Engine backends: build a per-rank checkpoint into an engine directory.

This package module stays light (it is imported by recipe validation on the CLI
start path); each backend module is imported only when it builds.

* ``onnxruntime`` (default): lower to ONNX + ORT segments + engine.json.
* ``tensorrt``: the same ONNX, parsed by TensorRT's OnnxParser and serialized per rank.
* ``trtllm``: runs ``trtllm-build`` (TensorRT-LLM ≤ 1.2) on the checkpoint itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trtllm_forge.context import NullProgress, Progress
from trtllm_forge.engine.backends.options import BuildOptions
from trtllm_forge.engine.backends.plugins import BACKENDS, validate_plugins
from trtllm_forge.registry import Registry

_NO_PROGRESS = NullProgress()
_DEFAULT_OPTIONS = BuildOptions()  # frozen: one instance serves every default

__all__ = ["BACKENDS", "BuildOptions", "backend_unavailable", "build_engine", "validate_plugins"]


def _onnxruntime() -> Any:
    from trtllm_forge.engine.backends import onnxruntime

    return onnxruntime


def _tensorrt() -> Any:
    from trtllm_forge.engine.backends import tensorrt

    return tensorrt


def _trtllm() -> Any:
    from trtllm_forge.engine.backends import trtllm

    return trtllm


# Backend name -> its module, imported only when it is asked for: each pulls in onnx,
# TensorRT or both (trtllm_forge/registry.py). No plugins: a backend is built in.
_MODULES: Registry[Any] = Registry(
    "backends",
    "backend",
    deferred={"onnxruntime": _onnxruntime, "tensorrt": _tensorrt, "trtllm": _trtllm},
)
assert set(_MODULES.names()) == set(BACKENDS), "every backend has its module, and no other"


def _module(backend: str) -> Any:
    return _MODULES.get(backend)


def backend_unavailable(backend: str) -> str | None:
    """A one-line reason the backend cannot build on this machine, or None when it can."""
    reason: str | None = _module(backend).unavailable_reason()
    return reason


def build_engine(
    backend: str,
    checkpoint_dir: Path,
    out_dir: Path,
    options: BuildOptions = _DEFAULT_OPTIONS,
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
