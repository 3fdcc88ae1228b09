"""Stage keys of the shipped recipes stay what they were when tests/stage_keys.json was
recorded: a refactor of the recipe schema, the method parameters or a stage must not move
any cache entry. A change that means to move one re-records the file
(``FORGE_RECORD_KEYS=1 pytest tests/test_key_stability.py``) and names the key and its
reason in the commit.

What is recorded is each stage's own part of its key: the recipe fields, the stage
version, the extra inputs (digests of the calibration text, the tokenizer, the source
files) and the names of the tools. Installed package versions and upstream content digests
are replaced by placeholders: they change with the environment, not with forge's code.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from trtllm_forge.context import RunContext, Settings
from trtllm_forge.pipeline.keys import key_document, stage_key
from trtllm_forge.pipeline.runner import Runner
from trtllm_forge.pipeline.stage import KeyInputs, StageJob, versions
from trtllm_forge.recipe.load import load_recipe
from trtllm_forge.recipe.schema import QUANT_METHODS
from trtllm_forge.stages import pipeline_stages, stage_names

ROOT = Path(__file__).resolve().parents[1]
RECORD = Path(__file__).with_name("stage_keys.json")
# Every shipped recipe whose model tests can make (the others name a hub model or bench data).
TINY_RECIPES = sorted(
    path
    for path in (ROOT / "recipes").glob("*.yaml")
    if str(yaml.safe_load(path.read_text())["source"].get("path", "")).startswith("tiny/")
)

# Parameters the tiny Llama (hidden size 64) can take; some set away from their defaults.
METHOD_PARAMS: dict[str, dict[str, Any]] = {
    "int4_wo": {"group_size": 32},
    "awq": {"group_size": 32, "kv_cache": "fp8"},
    "gptq": {"group_size": 32, "damping": 0.05, "act_order": True},
    "w4a8_awq": {"group_size": 32},
    "fp8_block": {"block_size": 32},
    "smoothquant": {"alpha": 0.8, "activations": "per_token", "kv_cache": "int8"},
    "fp8": {"granularity": "per_channel_per_token", "exclude": ["lm_head", "*.0.*"]},
    "int8_wo": {"calibration": {"samples": 8, "seq_len": 32, "seed": 3}},
}


def _own_key(name: str, version: str, inputs: KeyInputs, upstream: tuple[str, ...]) -> str:
    tools = {
        tool: "<installed>" if value == versions(tool)[tool] else value
        for tool, value in inputs.tools.items()
    }
    own = KeyInputs(inputs.fields, tools=tools, extra=inputs.extra)
    return stage_key(key_document(name, version, own, {u: f"<{u}>" for u in upstream}))


def _stage_keys(recipe: Path, home: Path) -> dict[str, str]:
    """Each stage's own key; the fetch stage runs (the others' keys read its snapshot)."""
    ctx = RunContext(settings=Settings(home=home))
    runner = Runner(load_recipe(recipe), ctx, pipeline_stages())
    fetched = runner.build(until="fetch")
    job = StageJob(runner.loaded, ctx, runner.store, upstream=dict(fetched.artifacts))
    keys = {}
    for stage in pipeline_stages():
        keys[stage.name] = _own_key(
            stage.name, stage.version, stage.key_inputs(job), stage.upstream
        )
    return keys


@pytest.fixture(scope="module")
def current_keys(
    recipe_models: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, dict[str, str]]:
    work = tmp_path_factory.mktemp("keys")
    (work / "tiny").symlink_to(recipe_models)
    keys: dict[str, dict[str, str]] = {}
    for path in TINY_RECIPES:
        copy = Path(shutil.copy(path, work / path.name))
        keys[path.name] = _stage_keys(copy, work / "home")
    # Every method on the tiny Llama: the shipped recipes use only two.
    base = yaml.safe_load((ROOT / "recipes" / "tiny-llama.yaml").read_text())
    for method in QUANT_METHODS:
        doc = {**base, "quantize": {"method": method, **METHOD_PARAMS.get(method, {})}}
        if method == "nvfp4":  # Hugging Face targets only
            doc["build"] = {**base["build"], "backend": "hf", "format": "modelopt"}
        variant = work / f"tiny-llama-{method}.yaml"
        variant.write_text(yaml.safe_dump(doc))
        keys[f"{variant.name} (quantize.method: {method})"] = _stage_keys(variant, work / "home")
    return keys


def test_stage_keys_match_the_recorded_ones(current_keys: dict[str, dict[str, str]]) -> None:
    if os.environ.get("FORGE_RECORD_KEYS") == "1":
        RECORD.write_text(json.dumps(current_keys, indent=2, sort_keys=True) + "\n")
    recorded: dict[str, Any] = json.loads(RECORD.read_text())
    assert sorted(current_keys) == sorted(recorded)
    moved = {
        f"{recipe} {stage}"
        for recipe, keys in current_keys.items()
        for stage, key in keys.items()
        if recorded[recipe].get(stage) != key
    }
    assert not moved, f"stage keys moved: {sorted(moved)}"


def test_the_record_covers_every_tiny_recipe_and_method() -> None:
    recorded = json.loads(RECORD.read_text())
    assert {path.name for path in TINY_RECIPES} <= set(recorded)
    for method in QUANT_METHODS:
        assert any(name.endswith(f"(quantize.method: {method})") for name in recorded), method
    assert all(set(keys) == set(stage_names()) for keys in recorded.values())
