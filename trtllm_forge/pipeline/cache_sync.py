"""``forge cache push|pull [RECIPE|KEY]``: move entries between the store and FORGE_REMOTE.

A RECIPE means its stages (the ones the api passes) in order: push sends every stage the store holds for it;
pull computes each stage's key (which needs its upstream's content digest, so
stages come one at a time) and fetches it without running anything. A KEY (or a
prefix of at least 4 hex characters) means that one entry; no argument means every
entry.

Unlike ``forge build``, which treats the remote as best effort, these commands
are about the remote: a remote that cannot be used, or an entry that is damaged
or missing, is an error (exit 6).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from trtllm_forge.context import RunContext
from trtllm_forge.errors import recipe_error, store_error
from trtllm_forge.pipeline.stage import Stage
from trtllm_forge.store.digest import short
from trtllm_forge.store.remote import open_remote, redact
from trtllm_forge.store.store import Artifact, Store
from trtllm_forge.store.transfer import Miss, RemoteCache


@dataclass
class Moved:
    stage: str
    key: str
    status: str  # pushed | already | pulled | hit | absent | damaged
    files: int = 0
    bytes: int = 0
    note: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def remote_cache(store: Store, ctx: RunContext) -> RemoteCache:
    url = ctx.settings.remote
    if not url:
        raise recipe_error(
            "no remote cache configured",
            hint="set FORGE_REMOTE=s3://bucket/prefix or file:///shared/folder (docs/ci.md)",
        )
    return RemoteCache(store, open_remote(url), ctx.progress)


def push(target: str | None, store: Store, ctx: RunContext, stages: Sequence[Stage]) -> list[Moved]:
    cache = remote_cache(store, ctx)
    moved: list[Moved] = []
    seen: set[str] = set()
    for artifact in _local_targets(target, store, ctx, stages):
        for item in cache.push(artifact):
            if item.key in seen:
                continue
            seen.add(item.key)
            status = "already" if item.already else "pushed"
            moved.append(
                Moved(item.stage, item.key, status, item.uploaded_files, item.uploaded_bytes)
            )
    return moved


def pull(target: str | None, store: Store, ctx: RunContext, stages: Sequence[Stage]) -> list[Moved]:
    cache = remote_cache(store, ctx)
    recipe = target is not None and _is_recipe(target)
    if recipe:
        moved = _pull_recipe(Path(str(target)), store, ctx, cache, stages)
    else:
        moved = [_pull_one(cache, stage, key) for stage, key in _remote_targets(target, cache)]
    # A recipe's stages stop at the first one nobody pushed yet: not an error. A key the
    # user named that has no manifest, or any damaged entry, is.
    unusable = ("damaged",) if recipe or target is None else ("damaged", "absent")
    bad = [m for m in moved if m.status in unusable]
    if bad:
        first = bad[0]
        raise store_error(
            f"{len(bad)} entr{'y' if len(bad) == 1 else 'ies'} could not be pulled from "
            f"{redact(cache.backend.url)}: {first.note}",
            hint="a damaged entry is rebuilt by `forge build` and pushed again; "
            "an entry without its manifest was never completely pushed",
        )
    return moved


# -- targets ----------------------------------------------------------------------
def _is_recipe(target: str) -> bool:
    return target.endswith((".yaml", ".yml")) or Path(target).is_file()


def _key_prefix(target: str) -> str:
    prefix = target.split(":", 1)[-1].lower()
    if len(prefix) < 4 or any(c not in "0123456789abcdef" for c in prefix):
        raise recipe_error(
            f"{target!r} is neither a recipe file nor an artifact key",
            hint="give a recipe .yaml, or a key / key prefix of at least 4 hex characters",
        )
    return prefix


def _local_targets(
    target: str | None, store: Store, ctx: RunContext, stages: Sequence[Stage]
) -> list[Artifact]:
    if target is not None and _is_recipe(target):
        return _recipe_artifacts(Path(target), store, ctx, stages)
    prefix = None if target is None else _key_prefix(target)
    found = [
        a
        for a in store.artifacts()
        if isinstance(a, Artifact) and (prefix is None or a.key.split(":", 1)[1].startswith(prefix))
    ]
    if target is not None and not found:
        raise store_error(f"no valid local artifact has a key starting with {prefix}")
    return found


def _recipe_artifacts(
    recipe: Path, store: Store, ctx: RunContext, stages: Sequence[Stage]
) -> list[Artifact]:
    from trtllm_forge.pipeline.preflight import load_checked
    from trtllm_forge.pipeline.runner import Runner

    runner = Runner(load_checked(recipe), ctx, stages, store)
    hits = [r for r in runner.plan() if r.status == "hit" and r.key]
    found = [store.lookup(r.stage, r.key) for r in hits if r.key]
    artifacts = [a for a in found if isinstance(a, Artifact)]
    if not artifacts:
        raise store_error(
            f"nothing of {recipe} is built in this store",
            hint=f"run `forge build {recipe}` first",
        )
    return artifacts


def _remote_targets(target: str | None, cache: RemoteCache) -> list[tuple[str, str]]:
    entries = cache.entries()
    if target is None:
        return entries
    prefix = _key_prefix(target)
    matches = [(s, k) for s, k in entries if k.split(":", 1)[1].startswith(prefix)]
    if not matches:
        return [("?", f"blake3:{prefix}")]  # reported as absent (no manifest on the remote)
    return matches


# -- pulling ----------------------------------------------------------------------
def _pull_one(cache: RemoteCache, stage: str, key: str) -> Moved:
    if stage == "?":
        return Moved(
            stage, key, "absent", note=f"no manifest for a key starting {short(key)} on the remote"
        )
    if isinstance(cache.store.lookup(stage, key), Artifact):
        return Moved(stage, key, "hit")
    got = cache.pull(stage, key)
    if isinstance(got, Miss):
        return Moved(stage, key, "absent" if got.absent else "damaged", note=got.reason)
    files = got.manifest.get("files", {})
    return Moved(stage, key, "pulled", len(files), sum(int(m["size"]) for m in files.values()))


def _pull_recipe(
    recipe: Path, store: Store, ctx: RunContext, cache: RemoteCache, stages: Sequence[Stage]
) -> list[Moved]:
    """Each stage's key from its upstream's content, then its entry; stops at a miss."""
    from trtllm_forge.pipeline.preflight import load_checked
    from trtllm_forge.pipeline.runner import Runner

    moved: list[Moved] = []
    t0 = time.perf_counter()

    def fetch(stage: str, key: str) -> Artifact | None:
        item = _pull_one(cache, stage, key)
        moved.append(item)
        found = store.lookup(stage, key)
        return found if isinstance(found, Artifact) else None

    Runner(load_checked(recipe), ctx, stages, store).walk_keys(fetch)
    ctx.progress.log(f"pull: {len(moved)} stage(s) in {time.perf_counter() - t0:.2f}s")
    return moved
