"""`forge quantize`: a model in, a quantized TensorRT-LLM checkpoint out, through the
stages `forge build` runs (and its cache)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from trtllm_forge.api.core import check, context_or_default, copy_checkpoint, empty_target, runner
from trtllm_forge.context import RunContext
from trtllm_forge.errors import ForgeError
from trtllm_forge.pipeline.runner import BuildResult
from trtllm_forge.store.store import Artifact


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
    spelled: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """fetch → convert → calibrate for MODEL (hub id, local dir or .gguf file), sharing the
    cache with `forge build`, then write a TensorRT-LLM checkpoint (tp×pp ranks) to ``out``.

    The arguments become a recipe (written under FORGE_HOME, where refs and plan see it);
    an error about one of them names the argument as ``spelled`` maps recipe fields
    (``{"quantize.group_size": "--group-size"}``; default: these keyword names), never a
    line of that file.
    """
    import time

    target = empty_target(Path(out), overwrite)
    context = context_or_default(ctx)
    doc = quantize_recipe(
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
    recipe_path = _write_recipe(context, doc)
    with _errors_named(recipe_path, spelled or QUANTIZE_ARGUMENTS):
        loaded = check(recipe=recipe_path)
        t0 = time.perf_counter()
        built = runner(loaded, context).build(until="calibrate")
    summary = _write_quantized(built, target)
    summary.update(model=model, method=method, kv_cache=kv_cache, recipe=str(recipe_path))
    summary["seconds"] = round(time.perf_counter() - t0, 3)
    if evaluate and method != "none":
        summary["perplexity"] = _perplexity(built.artifacts)
    return summary


def _write_quantized(built: BuildResult, target: Path) -> dict[str, Any]:
    """Copy the calibrated (and, for tp×pp > 1, sharded) checkpoint into ``target``."""
    from trtllm_forge.stages.build import checkpoint_dir, sharded_checkpoint

    job = built.job
    parallel = job.recipe.parallel
    source = sharded_checkpoint(job) if (parallel.tp, parallel.pp) != (1, 1) else None
    calibrated = job.upstream["calibrate"]
    files = copy_checkpoint(source.path if source else checkpoint_dir(calibrated), target)
    return {
        "dest": str(target),
        "files": files,
        "tp": parallel.tp,
        "pp": parallel.pp,
        "stages": [r.to_json() for r in built],
        "calibrate_seconds": calibrated.manifest.get("seconds"),
        "bytes_before": _checkpoint_bytes(job.upstream["convert"].path),
        "bytes_after": _checkpoint_bytes(checkpoint_dir(calibrated)),
        "quantized_modules": len(calibrated.info.get("quantized_modules") or []),
        "quantization": calibrated.info.get("quantization"),
    }


def _perplexity(upstream: dict[str, Artifact]) -> dict[str, Any]:
    from trtllm_forge.quickeval import perplexity_delta
    from trtllm_forge.stages.build import checkpoint_dir
    from trtllm_forge.stages.fetch import snapshot_dir

    return perplexity_delta(
        reference_ckpt=upstream["convert"].path,
        quantized_ckpt=checkpoint_dir(upstream["calibrate"]),
        tokenizer_dir=snapshot_dir(upstream["fetch"]),
    )


def _checkpoint_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.glob("rank*.safetensors"))


# How `quantize`'s keyword arguments spell the recipe fields they fill (a field not
# listed is found through its parent; `params` fills the rest of ``quantize``).
QUANTIZE_ARGUMENTS = {
    "source": "model",
    "convert.dtype": "dtype",
    "quantize": "params",
    "quantize.method": "method",
    "quantize.kv_cache": "kv_cache",
    "quantize.calibration": "calibration",
    "quantize.calibration.file": "calibration_file",
    "parallel.tp": "tp",
    "parallel.pp": "pp",
}


@contextmanager
def _errors_named(recipe_path: Path, spelled: Mapping[str, str]) -> Iterator[None]:
    """Re-word an error located in the recipe ``quantize`` wrote: the user typed an
    argument, not that file, so the message names the argument and drops the location."""
    try:
        yield
    except ForgeError as err:
        where = err.location
        if where is None or where.field is None or Path(where.file) != recipe_path:
            raise
        name = _spelling(where.field, spelled)
        raise ForgeError(err.code, f"{name}: {err.message}", hint=err.hint) from None


def _spelling(field: str, spelled: Mapping[str, str]) -> str:
    """The argument that sets ``field`` (its nearest listed parent's; the field itself
    when nothing is listed)."""
    parts = field.split(".")
    for end in range(len(parts), 0, -1):
        name = spelled.get(".".join(parts[:end]))
        if name is not None:
            return name if end == len(parts) else f"{name} ({field})"
    return field


def quantize_recipe(
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
) -> dict[str, Any]:
    """`forge quantize` is a recipe in disguise: the document its arguments make."""
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
    doc["name"] = f"quantize-{short(digest_json(doc), 10)}"
    return doc


def _write_recipe(ctx: RunContext, doc: dict[str, Any]) -> Path:
    """Write where refs and plan can see it: $FORGE_HOME/recipes/<name>.yaml."""
    import yaml  # type: ignore[import-untyped, unused-ignore]  # no types-PyYAML in the lock

    path = ctx.settings.home / "recipes" / f"{doc['name']}.yaml"
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
