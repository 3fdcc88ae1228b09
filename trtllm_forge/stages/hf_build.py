"""The build stage for ``build.backend: hf``: a Hugging Face folder instead of an engine.

Its key holds the format, tp/pp (the serving hint written into forge.json) and the
versions of the libraries whose format it writes; the calibrate digest (upstream)
already covers the snapshot and the calibration.
"""

from __future__ import annotations

from pathlib import Path

from trtllm_forge.hf.names import HF_DIR
from trtllm_forge.pipeline.stage import KeyInputs, StageJob, StageOutput, fields_of

# Bump when the folder's bytes change for the same inputs.
HF_TARGET_VERSION = "1"
FIELDS = ("parallel.tp", "parallel.pp", "build.backend", "build.format")


def key_inputs(job: StageJob) -> KeyInputs:
    return KeyInputs(
        fields_of(job.recipe, *FIELDS),
        tools={"hf_target": HF_TARGET_VERSION},
    )


def run(job: StageJob, out_dir: Path, calibrated_dir: Path) -> StageOutput:
    from trtllm_forge.hf.folder import write_hf_folder
    from trtllm_forge.stages.fetch import snapshot_dir

    recipe = job.recipe
    assert recipe.build.format is not None  # the schema: backend hf needs a format
    summary = write_hf_folder(
        hf_dir=snapshot_dir(job.upstream["fetch"]),
        calibrated_dir=calibrated_dir,
        out_dir=out_dir / HF_DIR,
        target=recipe.build.format,
        tp=recipe.parallel.tp,
        pp=recipe.parallel.pp,
        progress=job.ctx.progress,
    )
    return StageOutput(info={"backend": "hf", "hf_dir": HF_DIR, **summary})
