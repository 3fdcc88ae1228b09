"""Runners for ``forge bench`` / ``forge run``: one per runtime, opened by name."""

from __future__ import annotations

from pathlib import Path

from trtllm_forge.bench.runners.base import Limits, Runner
from trtllm_forge.errors import recipe_error

RUNTIMES = ("forge", "genai", "transformers")


def open_runner(
    runtime: str,
    path: Path,
    *,
    threads: int | None = None,
    device: str = "cpu",
    dtype: str = "float32",
    cuda_graph: bool | None = None,
) -> Runner:
    """Load ``path`` with ``runtime`` (forge engine dir, genai folder or HF model dir).
    ``cuda_graph`` (device cuda): None = each runtime's default (forge: on; genai: as the
    folder's config says), True/False = on/off for forge and genai alike."""
    if runtime == "forge":
        from trtllm_forge.bench.runners.forge import ForgeRunner

        return ForgeRunner.load(path, threads=threads, device=device, cuda_graph=cuda_graph)
    if runtime == "genai":
        from trtllm_forge.bench.runners.genai import GenaiRunner

        return GenaiRunner.load(path, device=device, cuda_graph=cuda_graph)
    if runtime == "transformers":
        from trtllm_forge.bench.runners.transformers import TransformersRunner

        return TransformersRunner.load(path, device=device, dtype=dtype, threads=threads)
    raise recipe_error(f"unknown runtime {runtime!r}", hint=f"known: {', '.join(RUNTIMES)}")


__all__ = ["RUNTIMES", "Limits", "Runner", "open_runner"]
