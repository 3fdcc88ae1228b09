"""The store behind `forge cache`: list, sizes, verify (and fix), gc, rm, and push/pull
to the remote cache."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from trtllm_forge.api.core import context_or_default, store
from trtllm_forge.context import RunContext
from trtllm_forge.stages import pipeline_stages, stage_names
from trtllm_forge.store.store import Store


def cache_entries(*, ctx: RunContext | None = None) -> list[Any]:
    """Every artifact in the store, validated, with the recipes whose last build uses it."""
    from trtllm_forge.store import maintenance

    return maintenance.entries(store(ctx))


def cache_usage(*, ctx: RunContext | None = None) -> dict[str, int]:
    """Bytes on disk per stage."""
    from trtllm_forge.store import maintenance

    return maintenance.usage(store(ctx), stage_names())


def cache_verify(*, fix: bool = False, ctx: RunContext | None = None) -> dict[str, Any]:
    """Re-read every artifact against its manifest digests; ``fix`` deletes the damaged
    ones (builds rebuild them). ``checked``: entries seen; ``damaged``: the bad ones."""
    from trtllm_forge.store import maintenance

    the_store = store(ctx)
    found = maintenance.entries(the_store, deep=True)
    bad = [e for e in found if e.problem is not None]
    if fix:
        _remove_entries(the_store, bad)
    return {"checked": len(found), "damaged": bad, "fixed": fix}


def cache_gc(
    *, unreferenced: bool = True, dry_run: bool = False, ctx: RunContext | None = None
) -> dict[str, Any]:
    """Delete damaged entries, leftovers of killed builds and, with ``unreferenced``,
    entries no recipe's last build uses; without it, only the damaged entries."""
    from trtllm_forge.store import maintenance

    the_store = store(ctx)
    if unreferenced:
        return maintenance.gc(the_store, keep_referenced=True, dry_run=dry_run)
    bad = [e for e in maintenance.entries(the_store) if e.problem is not None]
    if not dry_run:
        _remove_entries(the_store, bad)
    return {
        "removed": [e.to_json() for e in bad],
        "freed_bytes": sum(e.size for e in bad),  # what the real run frees, dry or not
        "dry_run": dry_run,
    }


def _remove_entries(the_store: Store, entries: Sequence[Any]) -> None:
    from trtllm_forge.store import maintenance

    for entry in entries:
        maintenance.remove(the_store, key_prefix=entry.key, stage=None, everything=False)


def cache_rm(
    *,
    key: str | None = None,
    stage: str | None = None,
    everything: bool = False,
    ctx: RunContext | None = None,
) -> list[Any]:
    """Delete artifacts by key prefix (4+ hex characters), by stage, or all of them."""
    from trtllm_forge.errors import recipe_error
    from trtllm_forge.store import maintenance

    if not (key or stage or everything):
        raise recipe_error("say what to delete", hint="forge cache rm KEY | --stage STAGE | --all")
    if key is not None and len(key.split(":", 1)[-1]) < 4:
        raise recipe_error("key prefix too short", hint="give at least 4 hex characters")
    the_store = store(ctx)
    if stage is not None:
        maintenance.check_stage_name(the_store, stage, stage_names())
    return maintenance.remove(the_store, key_prefix=key, stage=stage, everything=everything)


def cache_push(*, target: str | None = None, ctx: RunContext | None = None) -> list[Any]:
    """Upload a recipe's stages, one key (prefix), or every valid entry to FORGE_REMOTE."""
    from trtllm_forge.pipeline import cache_sync

    ctx = context_or_default(ctx)
    return cache_sync.push(target, store(ctx), ctx, pipeline_stages())


def cache_pull(*, target: str | None = None, ctx: RunContext | None = None) -> list[Any]:
    """Download a recipe's stages, one key (prefix), or every entry from FORGE_REMOTE."""
    from trtllm_forge.pipeline import cache_sync

    ctx = context_or_default(ctx)
    return cache_sync.pull(target, store(ctx), ctx, pipeline_stages())


def cache_remote_entries(*, ctx: RunContext | None = None) -> list[tuple[str, str]]:
    """(stage, key) of every complete entry on FORGE_REMOTE (those with a manifest)."""
    from trtllm_forge.pipeline import cache_sync

    ctx = context_or_default(ctx)
    return cache_sync.remote_cache(store(ctx), ctx).entries()
