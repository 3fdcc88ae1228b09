"""Recipe schema: docs generated from it stay in sync; schema/show commands work;
every shipped recipe validates."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from tests.helpers import forge
from trtllm_forge.recipe.docs import render
from trtllm_forge.recipe.load import load_recipe
from trtllm_forge.recipe.schema import Recipe

ROOT = Path(__file__).resolve().parents[1]


def test_docs_recipes_md_is_generated_from_schema() -> None:
    committed = (ROOT / "docs" / "recipes.md").read_text()
    assert committed == render(), "run: python -m trtllm_forge.recipe.docs > docs/recipes.md"


def test_every_field_is_documented() -> None:
    text = render()
    for model in Recipe.model_json_schema()["$defs"].values():
        for name in model.get("properties", {}):
            assert f"`{name}`" in text, name


def test_schema_command_prints_json_schema() -> None:
    run = forge("recipe", "schema")
    assert run.code == 0
    schema = json.loads(run.out)
    assert schema["title"] == "Recipe"
    assert schema["additionalProperties"] is False
    assert "schema_version" in schema["required"]


def test_show_fills_defaults(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("schema_version: 1\nname: x\nsource:\n  path: m\n")
    run = forge("recipe", "show", str(recipe))
    assert run.code == 0, run.err
    shown = yaml.safe_load(run.out)
    assert shown["build"]["backend"] == "onnxruntime"
    assert shown["quantize"] == {
        "kv_cache": "none",
        "exclude": ["lm_head"],
        "calibration": {
            "file": None,
            "samples": 64,
            "seq_len": 256,
            "seed": 0,
            "device": "cpu",
            "dtype": "float32",
            "mode": "whole",
        },
        "method": "none",
    }
    # What `show` prints is itself a valid recipe.
    again = tmp_path / "again.yaml"
    again.write_text(run.out)
    assert load_recipe(again).recipe == load_recipe(recipe).recipe


@pytest.mark.parametrize("path", sorted((ROOT / "recipes").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_recipes_validate(tmp_path: Path, path: Path) -> None:
    # The tiny models are generated, not committed (recipes/tiny/make_models.py): on a fresh
    # clone they are absent, so the recipe is checked beside a model made the same way.
    source = yaml.safe_load(path.read_text())["source"].get("path", "")
    if source.startswith("tiny/"):
        from tests.tinymodels import make_tiny_hf

        make_tiny_hf(source.removeprefix("tiny/"), tmp_path / source, with_tokenizer=True)
        path = Path(shutil.copy(path, tmp_path / path.name))
    run = forge("recipe", "check", str(path))
    # `recipe check` also checks the files a recipe names: the smollm2 recipe's real GGUF
    # and text are there only after `python -m bench.data`, and their absence is said clearly.
    if run.code == 5 and "does not exist" in run.err:
        assert "bench/.data" in run.err and path.name == "smollm2-135m.yaml", run.err
        return
    assert run.code == 0, run.err
