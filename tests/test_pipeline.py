"""The cached stage pipeline end to end on a tiny real model, through the real CLI."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from tests.helpers import forge, write_recipe


@pytest.fixture
def model(tmp_path: Path, tiny_models: dict[str, Path]) -> Path:
    dst = tmp_path / "model"
    shutil.copytree(tiny_models["llama"], dst)
    return dst


def _statuses(run) -> dict[str, str]:  # type: ignore[no-untyped-def]
    assert run.code == 0, run.err
    return {s["stage"]: s["status"] for s in run.json()["stages"]}


def test_second_build_is_all_hits_and_fast(tmp_path: Path, model: Path) -> None:
    recipe = write_recipe(
        tmp_path / "r.yaml", source={"path": str(model)}, convert={"dtype": "float16"}
    )
    first = forge("build", str(recipe), "--until", "convert", "--json")
    assert _statuses(first) == {"fetch": "built", "convert": "built"}
    t0 = time.perf_counter()
    second = forge("build", str(recipe), "--until", "convert", "--json")
    wall = time.perf_counter() - t0
    assert _statuses(second) == {"fetch": "hit", "convert": "hit"}
    # Same artifacts, same keys.
    assert [s["key"] for s in first.json()["stages"]] == [s["key"] for s in second.json()["stages"]]
    assert wall < 5.0  # generous bound for loaded CI machines; the figure itself is in bench/


def test_dtype_change_reruns_convert_only_and_plan_names_it(tmp_path: Path, model: Path) -> None:
    recipe = write_recipe(
        tmp_path / "r.yaml", source={"path": str(model)}, convert={"dtype": "float16"}
    )
    assert forge("build", str(recipe), "--until", "convert").code == 0
    write_recipe(recipe, source={"path": str(model)}, convert={"dtype": "bfloat16"})
    plan = forge("plan", str(recipe), "--until", "convert", "--json")
    stages = {s["stage"]: s for s in plan.json()["stages"]}
    assert stages["fetch"]["status"] == "hit"
    assert stages["convert"]["status"] == "miss"
    assert stages["convert"]["changed"] == ["convert.dtype"]
    text = forge("plan", str(recipe), "--until", "convert")
    assert "convert.dtype" in text.out
    rebuilt = forge("build", str(recipe), "--until", "convert", "--json")
    assert _statuses(rebuilt) == {"fetch": "hit", "convert": "built"}


def test_source_edit_changes_fetch_key(tmp_path: Path, model: Path) -> None:
    recipe = write_recipe(tmp_path / "r.yaml", source={"path": str(model)})
    first = forge("build", str(recipe), "--until", "convert", "--json")
    cfg = json.loads((model / "config.json").read_text())
    cfg["rms_norm_eps"] = 1e-5 if cfg.get("rms_norm_eps") != 1e-5 else 1e-6
    (model / "config.json").write_text(json.dumps(cfg))
    second = forge("build", str(recipe), "--until", "convert", "--json")
    assert _statuses(second) == {"fetch": "built", "convert": "built"}
    assert first.json()["stages"][0]["key"] != second.json()["stages"][0]["key"]


def test_force_rebuilds_identical_artifact(tmp_path: Path, model: Path) -> None:
    recipe = write_recipe(tmp_path / "r.yaml", source={"path": str(model)})
    first = forge("build", str(recipe), "--until", "convert", "--json")
    forced = forge("build", str(recipe), "--until", "convert", "--force", "convert", "--json")
    assert _statuses(forced) == {"fetch": "hit", "convert": "built"}
    path = Path(forced.json()["stages"][1]["path"])
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["key"] == first.json()["stages"][1]["key"]


def test_manifest_records_inputs_files_and_versions(tmp_path: Path, model: Path) -> None:
    recipe = write_recipe(
        tmp_path / "r.yaml", source={"path": str(model)}, convert={"dtype": "bfloat16"}
    )
    run = forge("build", str(recipe), "--until", "convert", "--json")
    path = Path(run.json()["stages"][1]["path"])
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["inputs"]["fields"] == {"convert.dtype": "bfloat16"}
    assert manifest["inputs"]["tools"]["torch"]
    assert set(manifest["files"]) >= {"config.json", "rank0.safetensors"}
    for name, entry in manifest["files"].items():
        assert entry["digest"].startswith("blake3:")
        assert (path / name).stat().st_size == entry["size"]


def test_cache_ls_du_rm_gc(tmp_path: Path, model: Path) -> None:
    recipe = write_recipe(tmp_path / "r.yaml", source={"path": str(model)})
    assert forge("build", str(recipe), "--until", "convert").code == 0
    listing = forge("cache", "ls", "--json").json()["artifacts"]
    assert {a["stage"] for a in listing} == {"fetch", "convert"}
    assert all(a["valid"] and a["recipes"] == ["t"] for a in listing)
    du = forge("cache", "du", "--json").json()
    assert du["total"] > 0
    # gc keeps what the recipe's last build uses
    assert forge("cache", "gc", "--json").json()["removed"] == []
    convert_key = next(a["key"] for a in listing if a["stage"] == "convert")
    removed = forge("cache", "rm", convert_key.split(":")[1][:12], "--json").json()["removed"]
    assert [r["stage"] for r in removed] == ["convert"]
    again = forge("build", str(recipe), "--until", "convert", "--json")
    assert _statuses(again) == {"fetch": "hit", "convert": "built"}
