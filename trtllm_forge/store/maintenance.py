"""Store maintenance behind `forge cache`: list, sizes, verify, gc, rm."""

from __future__ import annotations

import os
import shutil
import stat
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trtllm_forge.store.store import Artifact, Invalid, Store, dir_size


@dataclass(frozen=True)
class Entry:
    stage: str
    key: str
    path: Path
    size: int
    created_unix: float | None
    problem: str | None  # None when valid
    recipes: tuple[str, ...]  # recipes whose last build uses this entry

    def to_json(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "key": self.key,
            "path": str(self.path),
            "size": self.size,
            "created_unix": self.created_unix,
            "valid": self.problem is None,
            "problem": self.problem,
            "recipes": list(self.recipes),
        }


def _referenced(store: Store) -> dict[str, list[str]]:
    """Artifact path → names of recipes whose last build uses it.

    Refs record paths relative to the store; older refs (and refs of a store that was
    copied or moved) hold absolute ones, which ``resolve_recorded`` maps to this store.
    """
    users: dict[str, list[str]] = {}
    for ref in store.refs().values():
        for stage in ref.get("stages", {}).values():
            used = [stage.get("path"), *dict(stage.get("uses") or {}).values()]  # + sub-artifacts
            for recorded in used:
                if isinstance(recorded, str) and recorded:
                    path = str(store.resolve_recorded(recorded))
                    users.setdefault(path, []).append(str(ref.get("name")))
    return users


def entries(store: Store, *, deep: bool = False) -> list[Entry]:
    """Every entry, validated (``deep``: re-read every file's bytes, for ``forge cache verify``)."""
    users = _referenced(store)
    out: list[Entry] = []
    for item in store.artifacts(deep=deep):
        if isinstance(item, Artifact):
            out.append(
                Entry(
                    item.stage,
                    item.key,
                    item.path,
                    dir_size(item.path),
                    item.manifest.get("created_unix"),
                    None,
                    tuple(users.get(str(item.path), ())),
                )
            )
        else:
            path, invalid = item
            out.append(
                Entry(
                    path.parent.name,
                    f"blake3:{path.name}",
                    path,
                    dir_size(path),
                    None,
                    invalid.reason if isinstance(invalid, Invalid) else "invalid",
                    tuple(users.get(str(path), ())),
                )
            )
    return out


def staging_leftovers(store: Store) -> list[Path]:
    """Staging dirs (and half-written refs) whose writer process is gone (crashed or killed builds)."""
    dead = []
    if store.tmp_root.exists():
        for path in store.tmp_root.iterdir():
            pid = _pid_of(path.name)
            if pid is None or not _alive(pid):
                dead.append(path)
    refs = store.root / "refs"
    for path in refs.glob("*.tmp") if refs.exists() else []:
        pid_part = path.name.split(".")[-2] if path.name.count(".") >= 2 else ""
        if not pid_part.isdigit() or not _alive(int(pid_part)):  # refs/<id>.<pid>.tmp
            dead.append(path)
    return dead


def _pid_of(name: str) -> int | None:
    parts = name.split("-")
    if len(parts) >= 4 and parts[-2].isdigit():
        return int(parts[-2])
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def usage(store: Store, stage_order: Sequence[str]) -> dict[str, int]:
    """Bytes on disk per stage. A file several entries share (one blob) counts once,
    under the earliest stage of ``stage_order`` holding it (the pipeline's order, which the
    store does not know), so the total is what the store occupies."""

    def pipeline_order(entry: Entry) -> int:
        return stage_order.index(entry.stage) if entry.stage in stage_order else len(stage_order)

    sizes: dict[str, int] = {}
    seen: set[tuple[int, int]] = set()
    for entry in sorted(entries(store), key=pipeline_order):
        sizes[entry.stage] = sizes.get(entry.stage, 0) + _unseen_bytes(entry.path, seen)
    sizes["(staging)"] = sum(_unseen_bytes(p, seen) for p in staging_leftovers(store))
    unheld = sum(_unseen_bytes(b, seen) for b in store.blobs.all())
    if unheld:
        sizes["(unused blobs)"] = unheld
    return sizes


def _files(path: Path) -> list[os.stat_result]:
    found = path.rglob("*") if path.is_dir() else [path]
    out = []
    for file in found:
        try:
            st = file.lstat()
        except FileNotFoundError:
            continue
        if stat.S_ISREG(st.st_mode):
            out.append(st)
    return out


def _unseen_bytes(path: Path, seen: set[tuple[int, int]]) -> int:
    total = 0
    for st in _files(path):
        if (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            total += st.st_size
    return total


def freed_by(store: Store, paths: list[Path]) -> int:
    """Bytes that deleting ``paths`` and then sweeping unheld blobs gives back: a file
    frees its bytes only when its last name goes (other artifacts may share it)."""
    names: Counter[tuple[int, int]] = Counter()
    stats: dict[tuple[int, int], os.stat_result] = {}
    for path in paths:
        for st in _files(path):
            names[(st.st_dev, st.st_ino)] += 1
            stats[(st.st_dev, st.st_ino)] = st
    for blob in _files(store.blobs.root) if store.blobs.root.is_dir() else []:
        inode = (blob.st_dev, blob.st_ino)
        if blob.st_nlink - names[inode] <= 1:  # the sweep takes the blob's name too
            names[inode] += 1
            stats[inode] = blob
    return sum(st.st_size for inode, st in stats.items() if st.st_nlink <= names[inode])


def gc(store: Store, *, keep_referenced: bool = True, dry_run: bool = False) -> dict[str, Any]:
    """Remove damaged entries, dead staging dirs, (by default) entries no recipe's last
    build uses, and blobs no entry holds any more."""
    doomed = [
        e for e in entries(store) if not (e.problem is None and keep_referenced and e.recipes)
    ]
    leftovers = staging_leftovers(store)
    # Measured before anything goes, so a dry run reports what the real run frees.
    freed = freed_by(store, [e.path for e in doomed] + leftovers)
    removed: list[dict[str, Any]] = [e.to_json() for e in doomed]
    for path in leftovers:
        size = dir_size(path) if path.is_dir() else path.stat().st_size
        removed.append({"path": str(path), "size": size, "stage": "(staging)"})
    if not dry_run:
        for entry in doomed:
            _remove_locked(store, entry)
        for path in leftovers:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        store.blobs.sweep()
    return {"removed": removed, "freed_bytes": freed, "dry_run": dry_run}


def _remove_locked(store: Store, entry: Entry) -> int:
    # Take the key's lock so we never delete an entry a build is committing.
    with store.lock(entry.key):
        return store.remove(entry.path) if entry.path.exists() else 0


def check_stage_name(store: Store, stage: str, pipeline_stages: Sequence[str]) -> None:
    """``cache rm --stage`` takes a pipeline stage or a sub-artifact kind the store holds;
    anything else (``../../x``, a typo) is a bad argument, not a silent "deleted 0"."""
    from trtllm_forge.errors import recipe_error

    base = store.root / "artifacts"
    held = sorted(p.name for p in base.iterdir() if p.is_dir()) if base.is_dir() else []
    known = list(dict.fromkeys([*pipeline_stages, *held]))
    if stage not in known:
        raise recipe_error(f"unknown stage {stage!r}", hint=f"stages: {', '.join(known)}")


def remove(
    store: Store, *, key_prefix: str | None, stage: str | None, everything: bool
) -> list[Entry]:
    chosen = []
    for entry in entries(store):
        hexkey = entry.key.split(":", 1)[-1]
        if (
            everything
            or (stage and entry.stage == stage)
            or (key_prefix and hexkey.startswith(key_prefix.split(":", 1)[-1]))
        ):
            _remove_locked(store, entry)
            chosen.append(entry)
    return chosen
