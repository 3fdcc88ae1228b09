"""The api's core: check, build, plan and export a recipe; the store; inspect."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from trtllm_forge.context import RunContext
from trtllm_forge.pipeline.runner import BuildResult, Runner, StageResult
from trtllm_forge.recipe.load import LoadedRecipe
from trtllm_forge.store.store import Store


def context_or_default(ctx: RunContext | None) -> RunContext:
    return ctx or RunContext.default()


def runner(
    loaded: LoadedRecipe, ctx: RunContext | None = None, the_store: Store | None = None
) -> Runner:
    """The pipeline runner over forge's five stages (the runner itself knows none)."""
    from trtllm_forge.stages import pipeline_stages

    return Runner(loaded, context_or_default(ctx), pipeline_stages(), the_store)


def check(*, recipe: str | Path, sources: bool = True) -> LoadedRecipe:
    """Load and validate a recipe (schema + static cross-checks), and unless ``sources``
    is false, the files and local model it names (preflight.check_sources)."""
    from trtllm_forge.pipeline.preflight import load_checked

    return load_checked(recipe, sources=sources)


def build(
    *,
    recipe: str | Path,
    until: str | None = None,
    force: Sequence[str] = (),
    ctx: RunContext | None = None,
    on_result: Callable[[StageResult], None] | None = None,
) -> BuildResult:
    """Run every stage that is not cached, up to ``until``: the stages' results in order,
    and each stage's artifact (``.artifacts``)."""
    loaded = check(recipe=recipe)
    return runner(loaded, ctx).build(until=until, force=force, on_result=on_result)


def plan(
    *, recipe: str | Path, until: str | None = None, ctx: RunContext | None = None
) -> list[StageResult]:
    """Per stage: cached or not, and for a miss which inputs changed since the last build."""
    loaded = check(recipe=recipe)
    return runner(loaded, ctx).plan(until=until)


def recipe_schema() -> dict[str, Any]:
    """The recipe JSON Schema (for editor validation, e.g. yaml-language-server)."""
    from trtllm_forge.recipe.schema import Recipe

    return Recipe.model_json_schema()


def store(ctx: RunContext | None = None) -> Store:
    settings = context_or_default(ctx).settings
    return Store(settings.home, lock_timeout_s=settings.lock_timeout_s)


def export_trtllm_checkpoint(
    *, recipe: str | Path, dest: str | Path, overwrite: bool = False, ctx: RunContext | None = None
) -> dict[str, Any]:
    """Write the recipe's per-rank TensorRT-LLM checkpoint (for `trtllm-build`) to ``dest``.

    Builds fetch → convert → calibrate and the shard sub-artifact as needed (all cached).
    """
    from trtllm_forge.pipeline.preflight import check_trtllm_export
    from trtllm_forge.stages.build import sharded_checkpoint

    loaded = check(recipe=recipe)
    check_trtllm_export(loaded)  # before any stage runs
    target = empty_target(Path(dest), overwrite)
    stages = runner(loaded, ctx)
    if loaded.recipe.source.path is None:  # a hub or GGUF source: its config.json is
        _refuse_fetched_layout(stages)  # known after fetch, checked before convert
    shard = sharded_checkpoint(stages.build(until="calibrate").job)
    copied = copy_checkpoint(shard.path, target)
    return {
        "dest": str(target),
        "files": copied,
        "shard_key": shard.key,
        "tp": loaded.recipe.parallel.tp,
        "pp": loaded.recipe.parallel.pp,
    }


def _refuse_fetched_layout(stages: Runner) -> None:
    """A family trtllm-build cannot read (MoE experts), refused before convert and calibrate."""
    from trtllm_forge.pipeline.preflight import refuse_trtllm_layout
    from trtllm_forge.stages.convert import source_config

    fetched = stages.build(until="fetch")
    refuse_trtllm_layout(stages.loaded, source_config(fetched.job))


def export_hf(
    *,
    recipe: str | Path,
    dest: str | Path,
    format: str | None = None,
    overwrite: bool = False,
    ctx: RunContext | None = None,
) -> dict[str, Any]:
    """Write the recipe's quantized Hugging Face folder (ModelOpt format or
    compressed-tensors) to ``dest``, outside the store.

    ``format`` defaults to the recipe's ``build.format``. A quantization the format
    cannot carry is refused before anything is built or written. Builds fetch →
    convert → calibrate as needed (cached).
    """
    from trtllm_forge.hf.folder import write_hf_folder
    from trtllm_forge.stages.build import checkpoint_dir
    from trtllm_forge.stages.fetch import snapshot_dir

    loaded = check(recipe=recipe)
    chosen = _hf_format(loaded, format)
    target = empty_target(Path(dest), overwrite)
    context = context_or_default(ctx)
    artifacts = runner(loaded, context).build(until="calibrate").artifacts
    parallel = loaded.recipe.parallel
    summary = write_hf_folder(
        hf_dir=snapshot_dir(artifacts["fetch"]),
        calibrated_dir=checkpoint_dir(artifacts["calibrate"]),
        out_dir=target,
        target=chosen,  # type: ignore[arg-type]
        tp=parallel.tp,
        pp=parallel.pp,
        progress=context.progress,
    )
    return {"dest": str(target), **summary}


def export_triton(
    *,
    recipe: str | Path,
    dest: str | Path,
    overwrite: bool = False,
    ctx: RunContext | None = None,
) -> dict[str, Any]:
    """Write a Triton model repository for the recipe's artifact to ``dest`` through the
    triton plugin (plugins/forge-triton; exit 4 before any work when it is missing).

    ONNX engines become a Python-backend model running forge's runtime; ``build.backend:
    hf`` folders TensorRT-LLM's llmapi model; ``trtllm`` recipes the classic ensemble
    around the exported per-rank checkpoint (built with ``trtllm-build`` on the GPU host).
    """
    from trtllm_forge.exporters import exporter

    export = exporter("triton")
    loaded = check(recipe=recipe)
    target = empty_target(Path(dest), overwrite)
    return export(_export_source(runner(loaded, ctx)), target)


def _export_source(stages: Runner) -> Any:
    """Build what the recipe's backend deploys (cached) and describe it for an exporter."""
    from trtllm_forge.exporters import ExportSource
    from trtllm_forge.stages.build import engine_dir, sharded_checkpoint
    from trtllm_forge.stages.fetch import snapshot_dir

    recipe = stages.loaded.recipe
    backend = recipe.build.backend
    built = stages.build(until="calibrate" if backend == "trtllm" else "build")
    upstream = built.artifacts
    if backend == "trtllm":  # forge does not run trtllm-build here: export its input
        kind, files = "trtllm-checkpoint", sharded_checkpoint(built.job).path
    elif backend == "hf":
        from trtllm_forge.hf.names import HF_DIR

        kind, files = "hf-checkpoint", upstream["build"].path / HF_DIR
    else:
        kind, files = "onnx-engine", engine_dir(upstream["build"])
    quant = recipe.quantize
    return ExportSource(
        name=recipe.name,
        kind=kind,
        files=files,
        tokenizer=snapshot_dir(upstream["fetch"]),
        tp=recipe.parallel.tp,
        pp=recipe.parallel.pp,
        build=recipe.build.model_dump(mode="json"),
        quant={"method": quant.method, "kv_cache": quant.kv_cache},
    )


def _hf_format(loaded: Any, requested: str | None) -> str:
    """The format to write: ``--format``, else the recipe's; refuse what it cannot carry."""
    from trtllm_forge.errors import recipe_error
    from trtllm_forge.quant import records

    chosen = requested or loaded.recipe.build.format
    if chosen not in records.TARGETS:
        raise recipe_error(
            f"unknown Hugging Face format {chosen!r}" if chosen else "no format given",
            hint=f"pass --format {' or --format '.join(records.TARGETS)}",
        )
    quant = loaded.recipe.quantize
    fmt = records.format_name(quant.method, quant.model_dump(mode="json"))
    kv = None if quant.kv_cache == "none" else quant.kv_cache
    reason = records.why_not(chosen, fmt, kv)
    if reason:
        able = records.carriers(fmt, kv)
        raise recipe_error(
            f"the {chosen} format cannot carry this recipe's quantization: {reason}",
            hint=f"formats that can: {', '.join(able)}" if able else "no Hugging Face format can",
            location=loaded.locate("quantize.method"),
        )
    return str(chosen)


def copy_checkpoint(src: Path, dest: Path) -> list[str]:
    """Copy config.json and rank files (never the manifest) into ``dest``."""
    import shutil

    names = ["config.json", *sorted(p.name for p in src.glob("rank*.safetensors"))]
    if (src / "quant_cfg.json").exists():
        names.append("quant_cfg.json")
    dest.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copyfile(src / name, dest / name)
    return names


def empty_target(dest: Path, overwrite: bool) -> Path:
    from trtllm_forge.errors import recipe_error

    dest = dest.expanduser().resolve()
    if dest.exists() and not dest.is_dir():
        raise recipe_error(f"{dest} exists and is not a directory")
    if dest.exists() and any(dest.iterdir()) and not overwrite:
        raise recipe_error(
            f"{dest} is not empty", hint="choose an empty directory or pass --overwrite"
        )
    return dest


def inspect(*, target: str, ctx: RunContext | None = None) -> dict[str, Any]:
    """Describe an engine dir, a checkpoint dir, or any artifact (by path or key prefix)."""
    from trtllm_forge.inspect import inspect_target

    return inspect_target(target, store(ctx))
