"""calibrate: quantize the canonical checkpoint (a pass-through for method none).

The key holds the quantization parameters, the digests of the calibration
text and of the tokenizer, and the modelopt/torch versions — and deliberately
not ``parallel``: changing tp/pp reuses this (expensive) artifact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trtllm_forge.pipeline.stage import KeyInputs, StageJob, StageOutput, versions
from trtllm_forge.quant.device import key_fields, require_device
from trtllm_forge.quant.key_view import key_view
from trtllm_forge.recipe.load import LoadedRecipe
from trtllm_forge.stages.fetch import snapshot_dir
from trtllm_forge.store.digest import digest_json
from trtllm_forge.store.store import Artifact

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
)


def passes_through(recipe: Any) -> bool:
    return recipe.quantize.method == "none" and recipe.quantize.kv_cache == "none"


def layout_revision(quant: dict[str, Any]) -> int:
    """Revision of the checkpoint layout forge writes for this quantize section.

    2: per-token SmoothQuant folds smoothing into norm biases too, and into each
    family's own MLP-input norm (Gemma 2's pre_feedforward_layernorm).
    """
    if quant.get("method") == "smoothquant" and quant.get("activations") == "per_token":
        return 2
    return 1


class CalibrateStage:
    name = "calibrate"
    # 2: the artifact also holds linears.safetensors (per-module calibration records the
    # Hugging Face targets build from); older artifacts lack it. 3: GPTQ's weights are
    # kept there as int4 values (weight_int4), not float32.
    version = "3"
    upstream: tuple[str, ...] = ("fetch", "convert")

    def preflight(self, loaded: LoadedRecipe) -> None:
        require_calibration_device(loaded.recipe)  # cuda without a GPU: exit 4 now

    def key_inputs(self, job: StageJob) -> KeyInputs:
        quant = key_view(job.recipe.quantize.model_dump(mode="json"))
        if passes_through(job.recipe):
            return KeyInputs({"quantize.method": "none", "quantize.kv_cache": "none"})
        calib = quant.pop("calibration")
        calib_file = calib.pop("file")
        placement = key_fields(calib.pop("device"), calib.pop("dtype"))
        if calib.get("mode") == "whole":  # the default keys as before the field existed
            calib.pop("mode")
        fields = {f"quantize.{k}": v for k, v in quant.items()}
        fields.update({f"quantize.calibration.{k}": v for k, v in calib.items()})
        fields.update(placement)  # empty for cpu/float32: older keys stay valid
        revision = layout_revision(quant)
        if revision > 1:  # only where the written bytes changed: other keys stay valid
            fields["quantize.layout_revision"] = revision
        extra = {
            "calibration_data": self._calibration_digest(job, calib_file),
            "tokenizer": self._tokenizer_digest(job),
        }
        return KeyInputs(
            fields, tools=versions("nvidia-modelopt", "torch", "transformers"), extra=extra
        )

    def run(self, job: StageJob, out_dir: Path) -> StageOutput:
        convert_art = job.upstream["convert"]
        if passes_through(job.recipe):
            # Reference the converted checkpoint instead of copying it.
            files = {rel: dict(meta) for rel, meta in convert_art.manifest["files"].items()}
            return StageOutput(
                info={"method": "none", "passthrough": True},
                external={"root": str(convert_art.path), "files": files, "rehash": True},
            )
        if job.recipe.quantize.calibration.mode == "layerwise":
            return StageOutput(info=self._run_layerwise(job, out_dir))
        from trtllm_forge.quant.api import quantize_checkpoint

        q = job.recipe.quantize
        summary = quantize_checkpoint(
            hf_dir=snapshot_dir(job.upstream["fetch"]),
            canonical_dir=convert_art.path,
            out_dir=out_dir,
            spec=q,
            calibration_file=self._calibration_path(job),
            progress=job.ctx.progress,
        )
        return StageOutput(info=dict(summary))

    def check(self, artifact: Artifact) -> None:
        """Nothing to refuse in a calibrate artifact once it exists."""

    def _run_layerwise(self, job: StageJob, out_dir: Path) -> dict[str, Any]:
        """Layer by layer, finished layers kept beside the staging folder: a build killed
        mid-walk leaves them there and the next build of this key adopts them."""
        import shutil

        from trtllm_forge.quant.layerwise import layerwise_checkpoint
        from trtllm_forge.quant.layerwise_store import adopt

        work = out_dir.with_name(out_dir.name + ".layers")
        adopt(work, out_dir.name.rsplit("-", 2)[0])  # calibrate-<key>-<pid>-<id>.layers
        inputs = self.key_inputs(job)
        identity = digest_json(
            {
                "fields": inputs.fields,
                "tools": inputs.tools,
                "extra": inputs.extra,
                "upstream": {name: art.key for name, art in sorted(job.upstream.items())},
            }
        )
        summary = layerwise_checkpoint(
            hf_dir=snapshot_dir(job.upstream["fetch"]),
            canonical_dir=job.upstream["convert"].path,
            out_dir=out_dir,
            work_dir=work,
            identity=identity,
            spec=job.recipe.quantize,
            calibration_file=self._calibration_path(job),
            progress=job.ctx.progress,
        )
        shutil.rmtree(work, ignore_errors=True)
        return dict(summary)

    def _calibration_path(self, job: StageJob) -> Path | None:
        from trtllm_forge.pipeline.preflight import named_file

        return named_file(job.loaded, "quantize.calibration.file")

    def _calibration_digest(self, job: StageJob, file: str | None) -> str:
        path = self._calibration_path(job) if file else None
        return job.store.memo.digest(path or _builtin_corpus())

    def _tokenizer_digest(self, job: StageJob) -> str:
        root = snapshot_dir(job.upstream["fetch"])
        found = {
            name: job.store.memo.digest(root / name)
            for name in TOKENIZER_FILES
            if (root / name).is_file()
        }
        return digest_json(found)


def require_calibration_device(recipe: Any) -> None:
    """Exit 4 before any work when the recipe calibrates on a GPU this machine lacks."""
    if not passes_through(recipe):
        require_device(recipe.quantize.calibration.device)


def _builtin_corpus() -> Path:
    from trtllm_forge.quant.calibration import builtin_corpus_path

    return builtin_corpus_path()


STAGE = CalibrateStage()
