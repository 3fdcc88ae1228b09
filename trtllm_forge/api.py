"""Programmatic entry points. Keyword-only, no printing; errors are ForgeError."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from trtllm_forge.context import RunContext
from trtllm_forge.pipeline.runner import Runner, StageResult
from trtllm_forge.recipe.load import LoadedRecipe, load_recipe
from trtllm_forge.store.store import Store


def _context(ctx: RunContext | None) -> RunContext:
    return ctx or RunContext.default()


def check(*, recipe: str | Path) -> LoadedRecipe:
    """Load and validate a recipe (schema + static cross-checks)."""
    from trtllm_forge.pipeline.preflight import check_static

    loaded = load_recipe(recipe)
    check_static(loaded)
    return loaded


def build(*, recipe: str | Path, until: str | None = None, force: Sequence[str] = (),
          ctx: RunContext | None = None,
          on_result: Callable[[StageResult], None] | None = None) -> list[StageResult]:
    """Run every stage that is not cached, up to ``until``."""
    loaded = check(recipe=recipe)
    return Runner(loaded, _context(ctx)).build(until=until, force=force, on_result=on_result)


def plan(*, recipe: str | Path, until: str | None = None, ctx: RunContext | None = None) -> list[StageResult]:
    """Per stage: cached or not, and for a miss which inputs changed since the last build."""
    loaded = check(recipe=recipe)
    return Runner(loaded, _context(ctx)).plan(until=until)


def store(ctx: RunContext | None = None) -> Store:
    settings = _context(ctx).settings
    return Store(settings.home, lock_timeout_s=settings.lock_timeout_s)


def export_trtllm_checkpoint(*, recipe: str | Path, dest: str | Path, overwrite: bool = False,
                             ctx: RunContext | None = None) -> dict[str, Any]:
    """Write the recipe's per-rank TensorRT-LLM checkpoint (for `trtllm-build`) to ``dest``.

    Builds fetch → convert → calibrate and the shard sub-artifact as needed (all cached).
    """
    from trtllm_forge.stages.build import sharded_checkpoint

    target = _empty_target(Path(dest), overwrite)
    runner = Runner(check(recipe=recipe), _context(ctx))
    runner.build(until="calibrate")
    assert runner.job is not None
    shard = sharded_checkpoint(runner.job)
    copied = copy_checkpoint(shard.path, target)
    return {"dest": str(target), "files": copied, "shard_key": shard.key,
            "tp": runner.loaded.recipe.parallel.tp, "pp": runner.loaded.recipe.parallel.pp}


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
        raise recipe_error(f"{dest} is not empty", hint="choose an empty directory or pass --overwrite")
    return dest


def inspect(*, target: str, ctx: RunContext | None = None) -> dict[str, Any]:
    """Describe an engine dir, a checkpoint dir, or any artifact (by path or key prefix)."""
    from trtllm_forge.inspect import inspect_target

    return inspect_target(target, store(ctx))
