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


def artifact_for(*, recipe: str | Path, stage: str, ctx: RunContext | None = None) -> Any:
    """The cached artifact of ``stage`` for a recipe, building what is missing."""
    results = build(recipe=recipe, until=stage, ctx=ctx)
    found = store(ctx).lookup(stage, str(results[-1].key))
    return found
