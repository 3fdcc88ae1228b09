"""A store can be copied or moved (issue 17): refs hold paths relative to
$FORGE_HOME, so a copy is all cache hits and `forge cache gc` in it deletes
nothing a recipe uses. It used to delete every artifact in use ("deleted 6
item(s)"), and `--dry-run` said "0 B freed" for the same store."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.reliability.conftest import Reference
from tests.reliability.harness import audit_store, forge, record, store_entries

pytestmark = pytest.mark.reliability


def test_copied_store_is_all_hits_and_gc_keeps_what_is_used(
    reference: Reference, tmp_path: Path
) -> None:
    copy = tmp_path / "elsewhere" / "forge-home"
    shutil.copytree(reference.home, copy, symlinks=True)
    before = store_entries(copy)
    dry = forge(copy, "cache", "gc", "--dry-run", "--json")
    real = forge(copy, "cache", "gc", "--json")
    assert dry.code == real.code == 0, dry.text + real.text
    assert dry.json()["removed"] == real.json()["removed"] == []
    assert store_entries(copy) == before and audit_store(copy) == []

    run = forge(copy, "build", str(reference.recipe), "--until", reference.until, "--json")
    assert run.code == 0, run.text
    statuses = {s["stage"]: s["status"] for s in run.json()["stages"]}
    assert set(statuses.values()) == {"hit"}, statuses
    # The copy's hits are its own entries, not the original store's.
    assert all(Path(s["path"]).is_relative_to(copy) for s in run.json()["stages"])

    # The original is gone (a move): still nothing in use is deleted, still all hits.
    moved = tmp_path / "moved"
    shutil.move(copy, moved)
    assert forge(moved, "cache", "gc", "--json").json()["removed"] == []
    again = forge(moved, "build", str(reference.recipe), "--until", reference.until, "--json")
    assert {s["status"] for s in again.json()["stages"]} == {"hit"}, again.text
    record("relocation", {"artifacts": len(before), "stages": len(statuses), "all_hits": True})
