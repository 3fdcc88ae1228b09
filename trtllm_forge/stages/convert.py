"""convert: HF safetensors → canonical TensorRT-LLM checkpoint (tp=pp=1, target dtype).

Streams tensor by tensor; the key holds the converter version of the model's
architecture family, so a converter fix invalidates exactly its family.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trtllm_forge.pipeline.preflight import check_model
from trtllm_forge.pipeline.stage import KeyInputs, StageJob, StageOutput, fields_of, versions
from trtllm_forge.recipe.load import LoadedRecipe
from trtllm_forge.stages.fetch import snapshot_dir
from trtllm_forge.store.store import Artifact


class ConvertStage:
    name = "convert"
    version = "1"
    upstream: tuple[str, ...] = ("fetch",)

    def preflight(self, loaded: LoadedRecipe) -> None:
        """Converting needs only forge's own dependencies; the model is checked against
        the recipe in key_inputs, once fetch has made its config.json readable."""

    def key_inputs(self, job: StageJob) -> KeyInputs:
        hf_config = source_config(job)
        check_model(job.loaded, hf_config)  # cross-checks before any conversion work
        family = _family(hf_config)
        return KeyInputs(
            fields_of(job.recipe, "convert.dtype"),
            tools=versions("torch", "safetensors"),
            extra={"family": family.name, "converter": family.version},
        )

    def run(self, job: StageJob, out_dir: Path) -> StageOutput:
        from trtllm_forge.checkpoint.convert import convert_hf_checkpoint

        src = snapshot_dir(job.upstream["fetch"])
        _validate_weights(
            src
        )  # a lying header is a clear exit 5 before any offset in it is trusted
        summary = convert_hf_checkpoint(
            src, out_dir, dtype=job.recipe.convert.dtype, progress=job.ctx.progress
        )
        return StageOutput(info=dict(summary))

    def check(self, artifact: Artifact) -> None:
        """Nothing to refuse in a convert artifact once it exists."""


STAGE = ConvertStage()


def _validate_weights(src: Path) -> None:
    from trtllm_forge.checkpoint.validate import validate_safetensors

    for file in sorted(src.glob("*.safetensors")):
        validate_safetensors(file)


def source_config(job: StageJob) -> dict[str, Any]:
    """The source model's config.json (memoised per run)."""
    if "hf_config" not in job.scratch:
        from trtllm_forge.sources.policy import read_config

        job.scratch["hf_config"] = read_config(snapshot_dir(job.upstream["fetch"]))
    return dict(job.scratch["hf_config"])


def _family(hf_config: dict[str, Any]) -> Any:
    from trtllm_forge.models.registry import family_for

    return family_for(hf_config)
