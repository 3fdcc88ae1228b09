"""A store can be copied or moved: refs and in-store references are relative to
FORGE_HOME, older absolute ones are still understood, and `cache gc` keeps what a
moved store's recipes use (it used to delete every artifact in use)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from tests.helpers import write_recipe
from trtllm_forge import api
from trtllm_forge.context import RunContext, Settings
from trtllm_forge.store import maintenance
from trtllm_forge.store.store import Store

# In-process (the CLI's copy of this is tests/reliability/test_relocation.py): one import
# of forge for the whole test keeps it cheap enough for the default tier.


def _build(recipe: Path, home: Path) -> dict[str, str]:
    ctx = RunContext(settings=Settings(home=home))
    results = api.build(recipe=recipe, until="calibrate", ctx=ctx)
    return {r.stage: r.status for r in results}


def _gc(home: Path, *, dry_run: bool = False) -> dict[str, Any]:
    return maintenance.gc(Store(home), dry_run=dry_run)


def _make_absolute(home: Path, old_home: Path) -> None:
    """Rewrite the store as forge wrote it before refs were relative: every recorded
    in-store path absolute, under the store's previous location ``old_home``."""
    for ref_file in (home / "refs").glob("*.json"):
        ref = json.loads(ref_file.read_text())
        for stage in ref["stages"].values():
            stage["path"] = str(old_home / stage["path"])
            stage["uses"] = {k: str(old_home / v) for k, v in stage.get("uses", {}).items()}
        ref_file.write_text(json.dumps(ref))
    for manifest_file in (home / "artifacts").glob("*/*/manifest.json"):
        manifest = json.loads(manifest_file.read_text())
        external = manifest.get("external")
        if external and not Path(external["root"]).is_absolute():
            external["root"] = str(old_home / external["root"])
            manifest_file.write_text(json.dumps(manifest))


def test_moved_store_keeps_its_artifacts_through_gc(
    tmp_path: Path, tiny_models: dict[str, Path]
) -> None:
    model = str(tiny_models["llama"])
    recipe = write_recipe(tmp_path / "r.yaml", source={"path": model})
    home = tmp_path / "home"
    assert set(_build(recipe, home).values()) == {"built"}
    # The same recipe now says bfloat16: the first convert (and its pass-through) is unused.
    write_recipe(recipe, source={"path": model}, convert={"dtype": "bfloat16"})
    assert _build(recipe, home)["convert"] == "built"
    ref = json.loads(next((home / "refs").glob("*.json")).read_text())
    assert all(not Path(s["path"]).is_absolute() for s in ref["stages"].values())
    manifests = (home / "artifacts" / "calibrate").glob("*/manifest.json")
    roots = {json.loads(m.read_text())["external"]["root"] for m in manifests}
    assert all(root.startswith("artifacts/convert/") for root in roots)  # pass-throughs

    moved = tmp_path / "moved"
    shutil.move(home, moved)
    dry, real = _gc(moved, dry_run=True), _gc(moved)
    assert [r["path"] for r in dry["removed"]] == [r["path"] for r in real["removed"]]
    assert sorted(r["stage"] for r in real["removed"]) == ["calibrate", "convert"]
    assert dry["freed_bytes"] == real["freed_bytes"] > 0  # a dry run used to say 0 B
    assert _build(recipe, moved) == {"fetch": "hit", "convert": "hit", "calibrate": "hit"}

    # A store written by an older forge (absolute paths of where it used to live), then moved.
    _make_absolute(moved, old_home=home)
    assert _gc(moved)["removed"] == []
    assert _build(recipe, moved) == {"fetch": "hit", "convert": "hit", "calibrate": "hit"}
