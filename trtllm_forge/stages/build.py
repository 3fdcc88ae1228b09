"""build: shard for TP/PP, lower each rank to ONNX, build the backend's engines.

Sub-artifacts are cached under their own keys so that a change of backend does
not re-shard, and a change of tp re-shards without recalibrating:

- ``shard``: per-rank TensorRT-LLM checkpoint (exportable for `trtllm-build`);
- ``timing-cache`` (tensorrt): keyed by GPU SM + TensorRT version only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trtllm_forge.errors import dependency_error
from trtllm_forge.pipeline.stage import KeyInputs, StageJob, StageOutput, fields_of, versions
from trtllm_forge.store.store import Artifact

SHARD_VERSION = "1"
ENGINE_DIR = "engine"

BUILD_FIELDS = ("parallel.tp", "parallel.pp", "build.backend", "build.max_batch_size", "build.max_input_len",
                "build.max_seq_len", "build.plugins", "build.opt_level", "build.workspace_gb")


class BuildStage:
    name = "build"
    version = "1"
    upstream = ("calibrate",)

    def key_inputs(self, job: StageJob) -> KeyInputs:
        backend = job.recipe.build.backend
        _require_backend(backend)  # exit 4 before any work when the toolchain is missing
        tools = versions("onnx")
        extra: dict[str, Any] = {}
        if backend == "tensorrt":
            from trtllm_forge.engine.backends.tensorrt import toolchain_identity

            identity = toolchain_identity()  # TensorRT version + GPU SM: the engine is hardware-bound
            tools.update(identity)
        elif backend == "trtllm":
            tools.update(versions("tensorrt-llm", "tensorrt_llm"))
        return KeyInputs(fields_of(job.recipe, *BUILD_FIELDS), tools=tools, extra=extra)

    def run(self, job: StageJob, out_dir: Path) -> StageOutput:
        shard = sharded_checkpoint(job)
        from trtllm_forge.engine.backends import build_engine

        info = build_engine(
            backend=job.recipe.build.backend,
            checkpoint_dir=shard.path,
            out_dir=out_dir / ENGINE_DIR,
            options=job.recipe.build,
            timing_cache=_timing_cache(job) if job.recipe.build.backend == "tensorrt" else None,
            progress=job.ctx.progress,
        )
        return StageOutput(info={"backend": job.recipe.build.backend, "shard": shard.key,
                                 "checkpoint_dir": str(shard.path), **dict(info)})


STAGE = BuildStage()


def sharded_checkpoint(job: StageJob) -> Artifact:
    """The per-rank checkpoint for the recipe's tp/pp (a cached sub-artifact)."""
    assert job.sub_artifact is not None
    calibrated = job.upstream["calibrate"]
    tp, pp = job.recipe.parallel.tp, job.recipe.parallel.pp
    doc = {"fields": {"parallel.tp": tp, "parallel.pp": pp}, "upstream": {"calibrate": calibrated.content_digest},
           "tools": versions("torch", "safetensors")}

    def produce(out: Path) -> StageOutput:
        from trtllm_forge.checkpoint.shard import shard_checkpoint

        summary = shard_checkpoint(checkpoint_dir(calibrated), out, tp=tp, pp=pp, progress=job.ctx.progress)
        return StageOutput(info={"tp": tp, "pp": pp, **dict(summary or {})})

    return job.sub_artifact("shard", SHARD_VERSION, doc, produce)


def checkpoint_dir(artifact: Artifact) -> Path:
    """Where a calibrate artifact's checkpoint files are (pass-through ones reference convert's)."""
    root = artifact.external_root
    return root if root is not None else artifact.path


def _timing_cache(job: StageJob) -> Artifact:
    from trtllm_forge.engine.backends.tensorrt import toolchain_identity

    assert job.sub_artifact is not None
    doc = {"tools": toolchain_identity()}

    def produce(out: Path) -> StageOutput:
        return StageOutput(info={"note": "filled by the first TensorRT build on this GPU"})

    return job.sub_artifact("timing-cache", "1", doc, produce)


def _require_backend(backend: str) -> None:
    if backend == "onnxruntime":
        return
    if backend == "tensorrt":
        from trtllm_forge.engine.backends.tensorrt import tensorrt_available

        missing = tensorrt_available()
        if missing:
            raise dependency_error(missing, hint="install TensorRT ≥ 10.8 on a machine with an NVIDIA GPU "
                                   "(`pip install 'trtllm-forge[tensorrt]'`), or use build.backend: onnxruntime")
    if backend == "trtllm":
        import shutil

        if shutil.which("trtllm-build") is None:
            raise dependency_error("`trtllm-build` is not on PATH (the trtllm backend needs TensorRT-LLM ≤ 1.2)",
                                   hint="pip install 'tensorrt-llm<=1.2.1' on a GPU machine, or use "
                                   "build.backend: onnxruntime")
