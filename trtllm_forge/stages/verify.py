"""verify: compare the engine with the transformers reference on the original weights.

Writes report.json / report.md / junit.xml. A failed gate fails the build
(exit 3) — also when the report comes from the cache.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from trtllm_forge.errors import ExitCode, ForgeError, source_error
from trtllm_forge.pipeline.stage import KeyInputs, StageJob, StageOutput, fields_of, versions
from trtllm_forge.recipe.load import LoadedRecipe
from trtllm_forge.stages.fetch import snapshot_dir
from trtllm_forge.store.store import Artifact

VERIFY_FIELDS = (
    "verify.enabled",
    "verify.prompts",
    "verify.max_new_tokens",
    "verify.texts",
    "verify.max_text_tokens",
    "verify.gates",
)


class VerifyStage:
    name = "verify"
    # 2: the runtime keeps Q/DQ as written (ORT's QDQ fusions off), which changes what a
    # quantized engine computes; reports and gate results made before are not reused.
    # 3: metrics accumulated block by block in float32 (were float64 over whole texts) and
    # the report lists the tokens scored per text: values and report.json changed.
    version = "3"
    upstream: tuple[str, ...] = ("fetch", "build")

    def preflight(self, loaded: LoadedRecipe) -> None:
        require_verify_device(loaded.recipe)  # verify.device: cuda without one: exit 4 now

    def key_inputs(self, job: StageJob) -> KeyInputs:
        extra: dict[str, Any] = {}
        if job.recipe.verify.device != "cpu":  # the default stays out: keys made before stand
            extra["device"] = job.recipe.verify.device
        if job.recipe.verify.text_file:
            extra["text_file"] = _guarded(job, lambda path: job.store.memo.digest(path))
        return KeyInputs(
            fields_of(job.recipe, *VERIFY_FIELDS),
            tools=versions("transformers", "torch", "onnxruntime"),
            extra=extra,
        )

    def run(self, job: StageJob, out_dir: Path) -> StageOutput:
        spec = job.recipe.verify
        if not spec.enabled:
            (out_dir / "report.json").write_text('{"skipped": true}\n')
            return StageOutput(info={"skipped": True, "passed": True})
        from trtllm_forge.engine.verify import verify_build

        if job.recipe.build.backend == "hf":  # a Hugging Face folder: its own loader
            from trtllm_forge.hf.verify import verify_build  # type: ignore[assignment]

        texts = list(spec.texts)
        if spec.text_file:
            texts.append(_guarded(job, lambda path: path.read_text(errors="replace")))
        result = verify_build(
            engine_dir=Path(job.upstream["build"].path) / "engine",
            reference_dir=snapshot_dir(job.upstream["fetch"]),
            prompts=list(spec.prompts),
            texts=texts,
            max_new_tokens=spec.max_new_tokens,
            max_text_tokens=spec.max_text_tokens,
            gates=spec.gates.model_dump(exclude_none=True),
            out_dir=out_dir,
            progress=job.ctx.progress,
            device=spec.device,
        )
        info = dict(result)
        # Paths inside the staging dir die with it; record names relative to the artifact.
        info["reports"] = {
            kind: Path(path).name for kind, path in (info.get("reports") or {}).items()
        }
        return StageOutput(info=info)

    def check(self, artifact: Artifact) -> None:
        failed = artifact.info.get("failed_gates") or []
        if failed:
            names = ", ".join(str(f) for f in failed)
            raise ForgeError(
                ExitCode.GATE,
                f"verify gate(s) failed: {names}",
                hint=f"see {artifact.path / 'report.md'}",
            )


def require_verify_device(recipe: Any) -> None:
    """Exit 4 before any stage runs when ``verify.device: cuda`` cannot run here."""
    # cpu needs nothing, and engine.verify imports numpy, onnx and torch: every `forge
    # build`, a no-op one too, would pay for them (docs/performance.md's start-up goal).
    if recipe.verify.enabled and recipe.verify.device != "cpu":
        from trtllm_forge.engine.verify import require_device

        require_device(recipe.verify.device, recipe.build.backend)


def _guarded(job: StageJob, use: Callable[[Path], str]) -> str:
    """``use(verify.text_file)``; a missing, unreadable or non-regular file is a source error
    at the recipe field (a FIFO or /dev/zero named there would be read forever)."""
    from trtllm_forge.pipeline.preflight import NAMED_FILES, named_file

    field = "verify.text_file"
    hint = NAMED_FILES[field][1]
    path = named_file(job.loaded, field)
    assert path is not None  # only called when verify.text_file is set
    try:
        return use(path)
    except OSError as exc:
        raise source_error(
            f"verify text file cannot be read ({exc.strerror or exc}): {path}",
            hint=hint,
            location=job.loaded.locate(field),
        ) from None


STAGE = VerifyStage()
