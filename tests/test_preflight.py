"""Checks before work (issue 17): hints offer only values that pass every rule, say
what a fix costs, and a model forge cannot convert is refused at `recipe check`."""

from __future__ import annotations

import ast
import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import assert_clean_error, forge, write_recipe
from trtllm_forge.errors import ForgeError
from trtllm_forge.pipeline.preflight import check_model
from trtllm_forge.recipe.load import load_recipe

# 14 query heads over 2 key/value heads, as in the newcomer's report.
CONFIG: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 896,
    "num_hidden_layers": 2,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "intermediate_size": 4480,
    "vocab_size": 256,
    "max_position_embeddings": 128,
}


def _refusal(tmp_path: Path, config: dict[str, Any], **sections: Any) -> ForgeError:
    recipe = write_recipe(tmp_path / "recipe.yaml", source={"path": "m"}, **sections)
    with pytest.raises(ForgeError) as info:
        check_model(load_recipe(recipe), config)
    return info.value


def _offered(hint: str | None) -> list[int]:
    match = re.search(r"choose tp from (\[[\d, ]*\])", hint or "")
    assert match, hint
    return list(ast.literal_eval(match.group(1)))


@pytest.mark.parametrize("tp", [4, 7, 3])
def test_tp_hint_offers_only_values_that_pass(tmp_path: Path, tp: int) -> None:
    offered = _offered(_refusal(tmp_path, CONFIG, parallel={"tp": tp}).hint)
    assert offered == [1, 2, 14]  # 7 divides the heads but not the 2 key/value heads
    for value in offered:  # each offered value passes every check
        recipe = write_recipe(tmp_path / "ok.yaml", source={"path": "m"}, parallel={"tp": value})
        check_model(load_recipe(recipe), CONFIG)


def test_group_size_hint_offers_fitting_tp_and_says_what_recalibrates(tmp_path: Path) -> None:
    # group 128: mlp.proj (input 4480) and attention.dense (896) split 14 ways hold no whole groups.
    error = _refusal(
        tmp_path,
        CONFIG,
        parallel={"tp": 14},
        quantize={"method": "int4_wo", "group_size": 128},
    )
    assert "group_size 128" in error.message
    offered = _offered(error.hint)
    assert 14 not in offered and offered
    assert "recalibrates" in (error.hint or "") and "reuses the calibration" in (error.hint or "")
    for value in offered:
        recipe = write_recipe(
            tmp_path / "ok.yaml",
            source={"path": "m"},
            parallel={"tp": value},
            quantize={"method": "int4_wo", "group_size": 128},
        )
        check_model(load_recipe(recipe), CONFIG)


def test_unconvertible_architecture_is_refused_by_recipe_check_and_plan(
    tmp_path: Path, tiny_models: dict[str, Path]
) -> None:
    model = tmp_path / "olmo2"
    shutil.copytree(tiny_models["llama"], model)
    config = json.loads((model / "config.json").read_text())
    config["architectures"] = ["Olmo2ForCausalLM"]
    (model / "config.json").write_text(json.dumps(config))
    recipe = write_recipe(tmp_path / "recipe.yaml", source={"path": str(model)})
    for command in ("recipe", "check"), ("plan",):
        run = forge(*command, str(recipe))
        assert_clean_error(run, 2, "Olmo2ForCausalLM", "recipe.yaml:", "docs/models.md")
        assert "did you mean" not in run.err  # a real transformers class, not a typo
    assert not any((tmp_path / "home").glob("artifacts/*/*"))


def test_hub_model_is_checked_from_its_config_before_its_weights(
    tmp_path: Path, tiny_models: dict[str, Path]
) -> None:
    """A hub model's config.json is fetched and checked first: here the weights' blob is
    missing from the cache, which is only reached if the config passes."""
    from tests.helpers import hub_cache

    config = json.loads((tiny_models["llama"] / "config.json").read_text())
    files = {"config.json": json.dumps(config).encode(), "model.safetensors": b"x" * 64}
    cache = tmp_path / "hub"
    hub_cache(cache, "acme/tiny", files)
    blob = next(
        p for p in (cache / "models--acme--tiny" / "blobs").iterdir() if p.stat().st_size == 64
    )
    blob.unlink()  # the weights were never downloaded
    recipe = write_recipe(tmp_path / "recipe.yaml", source={"hf": "acme/tiny"})
    env = {"HF_HUB_CACHE": str(cache)}
    incomplete = forge("plan", str(recipe), env=env)  # a convertible model reaches the weights
    assert_clean_error(incomplete, 5, "model.safetensors is missing")
    config["architectures"] = ["Olmo2ForCausalLM"]
    (cache / "models--acme--tiny" / "blobs").joinpath("cfg").write_text(json.dumps(config))
    snapshot_config = next((cache / "models--acme--tiny" / "snapshots").glob("*/config.json"))
    snapshot_config.unlink()
    snapshot_config.symlink_to(Path("../../blobs/cfg"))
    refused = forge("plan", str(recipe), env=env)
    assert_clean_error(refused, 2, "Olmo2ForCausalLM", "source.hf")


@pytest.mark.parametrize(
    ("sections", "code", "fragment"),
    [
        ({"parallel": {"tp": 3}}, 2, "does not divide the model's 4 attention heads"),
        ({"verify": {"text_file": "missing.txt"}}, 5, "verify text file does not exist"),
        ({"source": {"gguf": "."}}, 5, "GGUF file is not a regular file"),
    ],
)
def test_recipe_check_runs_the_checks_build_runs(
    tmp_path: Path, tiny_models: dict[str, Path], sections: dict[str, Any], code: int, fragment: str
) -> None:
    """`forge recipe check` said "ok" for each of these; build found them after work."""
    recipe = write_recipe(
        tmp_path / "recipe.yaml", **{"source": {"path": str(tiny_models["llama"])}, **sections}
    )
    assert_clean_error(forge("recipe", "check", str(recipe)), code, fragment, "recipe.yaml:")


def test_model_types_are_the_ones_transformers_pairs_with_each_architecture(
    recipe_models: Path,
) -> None:
    """MODEL_TYPES refuses configs whose model_type disagrees: a wrong entry would refuse
    real checkpoints, so each entry is checked against transformers' own tables and the
    shipped tiny models."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    from trtllm_forge.models.registry import MODEL_TYPES, REGISTRY

    # Every built-in architecture but those transformers has no class for (forge's own
    # models stand in for them: models/native.py).
    native = {name for name in REGISTRY.names() if REGISTRY.get(name).native}
    assert native == {"BaichuanForCausalLM", "ChatGLMModel", "ChatGLMForConditionalGeneration"}
    assert set(MODEL_TYPES) == set(REGISTRY.names()) - native
    for architecture, model_type in MODEL_TYPES.items():
        assert model_type in CONFIG_MAPPING_NAMES
        assert MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[model_type] == architecture
    configs = sorted(recipe_models.glob("*/config.json"))
    assert configs
    for config_file in configs:
        config = json.loads(config_file.read_text())
        assert MODEL_TYPES[config["architectures"][0]] == config["model_type"], config_file
