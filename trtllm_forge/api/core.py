"""Programmatic entry points. Keyword-only, no printing; errors are ForgeError."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from trtllm_forge.context import RunContext
from trtllm_forge.pipeline.runner import Runner, StageResult
from trtllm_forge.recipe.load import LoadedRecipe
from trtllm_forge.store.store import Store


def _context(ctx: RunContext | None) -> RunContext:
    return ctx or RunContext.default()


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
) -> list[StageResult]:
    """Run every stage that is not cached, up to ``until``."""
    loaded = check(recipe=recipe)
    return Runner(loaded, _context(ctx)).build(until=until, force=force, on_result=on_result)


def plan(
    *, recipe: str | Path, until: str | None = None, ctx: RunContext | None = None
) -> list[StageResult]:
    """Per stage: cached or not, and for a miss which inputs changed since the last build."""
    loaded = check(recipe=recipe)
    return Runner(loaded, _context(ctx)).plan(until=until)


def store(ctx: RunContext | None = None) -> Store:
    settings = _context(ctx).settings
    return Store(settings.home, lock_timeout_s=settings.lock_timeout_s)


def cache_push(*, target: str | None = None, ctx: RunContext | None = None) -> list[Any]:
    """Upload a recipe's stages, one key (prefix), or every valid entry to FORGE_REMOTE."""
    from trtllm_forge.pipeline import cache_sync

    ctx = _context(ctx)
    return cache_sync.push(target, store(ctx), ctx)


def cache_pull(*, target: str | None = None, ctx: RunContext | None = None) -> list[Any]:
    """Download a recipe's stages, one key (prefix), or every entry from FORGE_REMOTE."""
    from trtllm_forge.pipeline import cache_sync

    ctx = _context(ctx)
    return cache_sync.pull(target, store(ctx), ctx)


def cache_remote_entries(*, ctx: RunContext | None = None) -> list[tuple[str, str]]:
    """(stage, key) of every complete entry on FORGE_REMOTE (those with a manifest)."""
    from trtllm_forge.pipeline import cache_sync

    ctx = _context(ctx)
    return cache_sync.remote_cache(store(ctx), ctx).entries()


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
    target = _empty_target(Path(dest), overwrite)
    runner = Runner(loaded, _context(ctx))
    runner.build(until="calibrate")
    assert runner.job is not None
    shard = sharded_checkpoint(runner.job)
    copied = copy_checkpoint(shard.path, target)
    return {
        "dest": str(target),
        "files": copied,
        "shard_key": shard.key,
        "tp": runner.loaded.recipe.parallel.tp,
        "pp": runner.loaded.recipe.parallel.pp,
    }


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
    target = _empty_target(Path(dest), overwrite)
    runner = Runner(loaded, _context(ctx))
    runner.build(until="calibrate")
    assert runner.job is not None
    parallel = loaded.recipe.parallel
    summary = write_hf_folder(
        hf_dir=snapshot_dir(runner.job.upstream["fetch"]),
        calibrated_dir=checkpoint_dir(runner.job.upstream["calibrate"]),
        out_dir=target,
        target=chosen,  # type: ignore[arg-type]
        tp=parallel.tp,
        pp=parallel.pp,
        progress=runner.ctx.progress,
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
    target = _empty_target(Path(dest), overwrite)
    runner = Runner(loaded, _context(ctx))
    return export(_export_source(runner), target)


def _export_source(runner: Runner) -> Any:
    """Build what the recipe's backend deploys (cached) and describe it for an exporter."""
    from trtllm_forge.exporters import ExportSource
    from trtllm_forge.stages.build import engine_dir, sharded_checkpoint
    from trtllm_forge.stages.fetch import snapshot_dir

    recipe = runner.loaded.recipe
    backend = recipe.build.backend
    runner.build(until="calibrate" if backend == "trtllm" else "build")
    assert runner.job is not None
    upstream = runner.job.upstream
    if backend == "trtllm":  # forge does not run trtllm-build here: export its input
        kind, files = "trtllm-checkpoint", sharded_checkpoint(runner.job).path
    elif backend == "hf":
        from trtllm_forge.hf.stage import HF_DIR

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


def _empty_target(dest: Path, overwrite: bool) -> Path:
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


def quantize(
    *,
    model: str,
    method: str,
    out: str | Path,
    params: dict[str, Any] | None = None,
    kv_cache: str = "none",
    calibration_file: str | None = None,
    calibration: dict[str, Any] | None = None,
    dtype: str = "float16",
    tp: int = 1,
    pp: int = 1,
    overwrite: bool = False,
    evaluate: bool = True,
    ctx: RunContext | None = None,
) -> dict[str, Any]:
    """fetch → convert → calibrate for MODEL (hub id, local dir or .gguf file), sharing the
    cache with `forge build`, then write a TensorRT-LLM checkpoint (tp×pp ranks) to ``out``."""
    import time

    from trtllm_forge.stages.build import checkpoint_dir, sharded_checkpoint
    from trtllm_forge.stages.fetch import snapshot_dir

    target = _empty_target(Path(out), overwrite)
    context = _context(ctx)
    recipe_path = _write_quantize_recipe(
        context,
        model=model,
        method=method,
        params=params or {},
        kv_cache=kv_cache,
        calibration_file=calibration_file,
        calibration=calibration or {},
        dtype=dtype,
        tp=tp,
        pp=pp,
    )
    runner = Runner(check(recipe=recipe_path), context)
    t0 = time.perf_counter()
    results = runner.build(until="calibrate")
    assert runner.job is not None
    job = runner.job
    source = sharded_checkpoint(job) if (tp, pp) != (1, 1) else None
    calibrated = job.upstream["calibrate"]
    files = copy_checkpoint(source.path if source else checkpoint_dir(calibrated), target)
    summary: dict[str, Any] = {
        "model": model,
        "method": method,
        "kv_cache": kv_cache,
        "dest": str(target),
        "files": files,
        "tp": tp,
        "pp": pp,
        "recipe": str(recipe_path),
        "stages": [r.to_json() for r in results],
        "seconds": round(time.perf_counter() - t0, 3),
        "calibrate_seconds": calibrated.manifest.get("seconds"),
        "bytes_before": _checkpoint_bytes(job.upstream["convert"].path),
        "bytes_after": _checkpoint_bytes(checkpoint_dir(calibrated)),
        "quantized_modules": len(calibrated.info.get("quantized_modules") or []),
        "quantization": calibrated.info.get("quantization"),
    }
    if evaluate and method != "none":
        from trtllm_forge.quickeval import perplexity_delta

        summary["perplexity"] = perplexity_delta(
            reference_ckpt=job.upstream["convert"].path,
            quantized_ckpt=checkpoint_dir(calibrated),
            tokenizer_dir=snapshot_dir(job.upstream["fetch"]),
        )
    return summary


def _checkpoint_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.glob("rank*.safetensors"))


def _write_quantize_recipe(
    ctx: RunContext,
    *,
    model: str,
    method: str,
    params: dict[str, Any],
    kv_cache: str,
    calibration_file: str | None,
    calibration: dict[str, Any],
    dtype: str,
    tp: int,
    pp: int,
) -> Path:
    """`forge quantize` is a recipe in disguise: write it where refs and plan can see it."""
    import yaml

    from trtllm_forge.store.digest import digest_json, short

    quantize_section: dict[str, Any] = {"method": method, "kv_cache": kv_cache, **params}
    calib = {k: v for k, v in calibration.items() if v is not None}  # samples, device, dtype
    if calibration_file:
        calib["file"] = str(Path(calibration_file).expanduser().resolve())
    if calib:
        quantize_section["calibration"] = calib
    doc = {
        "schema_version": 1,
        "name": "",
        "source": _source_for(model),
        "convert": {"dtype": dtype},
        "quantize": quantize_section,
        "parallel": {"tp": tp, "pp": pp},
        "verify": {"enabled": False},
    }
    ident = short(digest_json(doc), 10)
    doc["name"] = f"quantize-{ident}"
    path = ctx.settings.home / "recipes" / f"quantize-{ident}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _source_for(model: str) -> dict[str, Any]:
    candidate = Path(model).expanduser()
    if candidate.is_file() and candidate.suffix == ".gguf":
        return {"gguf": str(candidate.resolve())}
    if candidate.exists():
        return {"path": str(candidate.resolve())}
    return {"hf": model}
