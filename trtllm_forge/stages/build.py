"""build: shard for TP/PP, lower each rank to ONNX, build the backend's engines.

Sub-artifacts are cached under their own keys so that a change of backend does
not re-shard, and a change of tp re-shards without recalibrating:

- ``shard``: per-rank TensorRT-LLM checkpoint (exportable for `trtllm-build`);
- ``timing-cache`` (tensorrt): keyed by GPU SM + TensorRT version only.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

from trtllm_forge.errors import dependency_error
from trtllm_forge.pipeline.stage import KeyInputs, StageJob, StageOutput, fields_of, versions
from trtllm_forge.recipe.load import LoadedRecipe
from trtllm_forge.store.store import Artifact

SHARD_VERSION = "1"
ENGINE_DIR = "engine"

BUILD_FIELDS = (
    "parallel.tp",
    "parallel.pp",
    "build.backend",
    "build.profile",
    "build.int8_activations",
    "build.compute_dtype",
    "build.max_batch_size",
    "build.max_input_len",
    "build.max_seq_len",
    "build.plugins",
    "build.opt_level",
    "build.workspace_gb",
)


class BuildStage:
    name = "build"
    # 2: the ONNX lowering names and orders attention masks per sliding window (same
    # numbers, other bytes), so engines built before do not share a key with new ones.
    # 3: single-rank onnxruntime engines also hold genai_config.json and the snapshot's
    # tokenizer files (onnxruntime-genai loads the folder), so fetch is an input too.
    version = "3"
    upstream: tuple[str, ...] = ("fetch", "calibrate")

    def preflight(self, loaded: LoadedRecipe) -> None:
        require_backend(loaded.recipe.build.backend)  # exit 4 before any work is done

    def key_inputs(self, job: StageJob) -> KeyInputs:
        backend = job.recipe.build.backend
        if backend == "hf":  # a Hugging Face folder (trtllm_forge/hf), not an engine
            from trtllm_forge.stages import hf_build as hf_stage

            return hf_stage.key_inputs(job)
        require_backend(backend)  # exit 4 before any work when the toolchain is missing
        tools = versions("onnx")
        if backend == "tensorrt":
            tools.update(
                _tensorrt_identity()
            )  # TensorRT engines are bound to the GPU and TRT version
        elif backend == "trtllm":
            tools.update(versions("tensorrt-llm", "tensorrt"))
        return KeyInputs(fields_of(job.recipe, *BUILD_FIELDS), tools=tools)

    def run(self, job: StageJob, out_dir: Path) -> StageOutput:
        if job.recipe.build.backend == "hf":
            from trtllm_forge.stages import hf_build as hf_stage

            return hf_stage.run(job, out_dir, checkpoint_dir(job.upstream["calibrate"]))
        from trtllm_forge.engine.backends import build_engine

        shard = sharded_checkpoint(job)
        backend = job.recipe.build.backend
        options = _options(job.recipe.build)
        if backend == "tensorrt":
            options = replace(options, timing_cache=_timing_cache_copy(job, out_dir))
        meta = build_engine(
            backend, shard.path, out_dir / ENGINE_DIR, options, progress=job.ctx.progress
        )
        if backend == "tensorrt":
            _keep_timing_cache(job, out_dir)
        if backend == "onnxruntime":
            _write_genai_files(job, out_dir / ENGINE_DIR, meta)
        return StageOutput(
            info={
                "backend": backend,
                "shard_key": shard.key,
                "checkpoint_dir": str(shard.path),
                "engine": _summary(meta),
            }
        )

    def check(self, artifact: Artifact) -> None:
        """Nothing to refuse in a build artifact once it exists (verify judges it)."""


STAGE = BuildStage()


def sharded_checkpoint(job: StageJob) -> Artifact:
    """The per-rank checkpoint for the recipe's tp/pp (a cached sub-artifact)."""
    assert job.sub_artifact is not None
    calibrated = job.upstream["calibrate"]
    tp, pp = job.recipe.parallel.tp, job.recipe.parallel.pp
    doc = {
        "fields": {"parallel.tp": tp, "parallel.pp": pp},
        "upstream": {"calibrate": calibrated.content_digest},
        "tools": versions("torch", "safetensors"),
    }

    def produce(out: Path) -> StageOutput:
        from trtllm_forge.checkpoint.shard import shard_checkpoint

        summary = shard_checkpoint(
            checkpoint_dir(calibrated), out, tp=tp, pp=pp, progress=job.ctx.progress
        )
        return StageOutput(info={"tp": tp, "pp": pp, **dict(summary or {})})

    return job.sub_artifact("shard", SHARD_VERSION, doc, produce)


def _write_genai_files(job: StageJob, engine: Path, meta: dict[str, Any]) -> None:
    """genai_config.json + tokenizer files, so onnxruntime-genai runs a tp = pp = 1 engine."""
    from trtllm_forge.engine.genai import write_genai_folder
    from trtllm_forge.stages.fetch import snapshot_dir

    write_genai_folder(engine, meta, snapshot_dir(job.upstream["fetch"]))


def checkpoint_dir(artifact: Artifact) -> Path:
    """Where a calibrate artifact's checkpoint files are (pass-through ones reference convert's)."""
    root = artifact.external_root
    return root if root is not None else artifact.path


def engine_dir(artifact: Artifact) -> Path:
    return artifact.path / ENGINE_DIR


def _options(build: Any) -> Any:
    from trtllm_forge.engine.backends import BuildOptions

    return BuildOptions(
        max_batch_size=build.max_batch_size,
        max_input_len=build.max_input_len,
        max_seq_len=build.max_seq_len,
        plugins=dict(build.plugins),
        opt_level=build.opt_level,
        workspace_gb=build.workspace_gb,
        profile=build.profile,
        int8_activations=build.int8_activations,
        compute_dtype=build.compute_dtype,
    )


def _summary(meta: dict[str, Any]) -> dict[str, Any]:
    """The engine.json facts worth showing without opening the engine."""
    onnx = meta.get("onnx") or {}
    quant = meta.get("quantization") or {}
    return {
        "backend": meta.get("backend"),
        **(meta.get("mapping") or {}),
        "quant_algo": quant.get("quant_algo"),
        "kv_cache_quant_algo": quant.get("kv_cache_quant_algo"),
        "opset": onnx.get("opset"),
        "profile": onnx.get("profile", "portable") if onnx else None,
        "limits": meta.get("limits"),
    }


# -- TensorRT timing cache: its own artifact, keyed by GPU SM + TensorRT version only,
# so every engine built on the same kind of GPU reuses the tactic timings.
TIMING_CACHE = "timing.cache"


def _tensorrt_identity() -> dict[str, str]:
    """TensorRT version and GPU compute capability (only called once TensorRT is known present)."""
    import tensorrt  # type: ignore[import-untyped, unused-ignore]  # stubs: tests only
    import torch

    major, minor = torch.cuda.get_device_capability()
    return {"tensorrt": str(tensorrt.__version__), "gpu_sm": f"{major}{minor}"}


def _timing_cache_key_doc() -> dict[str, Any]:
    return {"tools": _tensorrt_identity()}


def _timing_cache_copy(job: StageJob, out_dir: Path) -> Path:
    """A private copy of the stored timing cache (TensorRT rewrites the file it is given);
    it stays in the build artifact as a record of the timings the engine was built with."""
    target = out_dir / TIMING_CACHE
    found = job.store.lookup("timing-cache", _timing_cache_key())
    if isinstance(found, Artifact):
        shutil.copyfile(found.path / TIMING_CACHE, target)
    return target


def _timing_cache_key() -> str:
    from trtllm_forge.pipeline.keys import stage_key

    return stage_key({"stage": "timing-cache", "version": "1", **_timing_cache_key_doc()})


def _keep_timing_cache(job: StageJob, out_dir: Path) -> None:
    """Store the timing cache the first time this GPU/TensorRT pair builds."""
    assert job.sub_artifact is not None
    produced = out_dir / TIMING_CACHE

    def produce(out: Path) -> StageOutput:
        shutil.copyfile(produced, out / TIMING_CACHE)
        return StageOutput(info={"bytes": produced.stat().st_size})

    if produced.is_file():
        job.sub_artifact("timing-cache", "1", _timing_cache_key_doc(), produce)


def require_backend(backend: str) -> None:
    """Exit 4 with one line when the backend cannot build on this machine."""
    if backend == "hf":
        return  # writing a Hugging Face folder needs nothing beyond forge's own dependencies
    from trtllm_forge.engine.backends import backend_unavailable

    reason = backend_unavailable(backend)
    if reason:
        raise dependency_error(reason, hint=_INSTALL_HINTS.get(backend))


_INSTALL_HINTS = {
    "tensorrt": "install TensorRT ≥ 10.8 on a machine with an NVIDIA GPU (`pip install 'trtllm-forge[tensorrt]'`), "
    "or use build.backend: onnxruntime",
    "trtllm": "install TensorRT-LLM ≤ 1.2 on a GPU machine (`pip install 'tensorrt-llm<=1.2.1'`), "
    "or use build.backend: onnxruntime",
}
