"""trtllm_forge/rules.py: each cross-field rule written once, asked at the edge (preflight,
the recipe schema) and by the library entry points (shard, engine spec, build options);
and checkpoint/config.py, the one reader of a TensorRT-LLM checkpoint's config.json."""

from __future__ import annotations

from pathlib import Path

import pytest

from trtllm_forge.checkpoint.config import model_spec
from trtllm_forge.engine.backends import BuildOptions
from trtllm_forge.engine.spec import check_parallel, read_checkpoint
from trtllm_forge.errors import ExitCode, ForgeError
from trtllm_forge.recipe.load import load_recipe
from trtllm_forge.rules import Misfit, lengths_problem, pp_misfit, tp_misfit, valid_tps

# 14 query heads over 2 key/value heads (as in test_preflight), an MLP of 14 × 348.
HEADS, KV_HEADS, WIDTHS = 14, 2, {"intermediate_size": 4872}


@pytest.mark.parametrize(
    ("tp", "part"),
    [(1, None), (2, None), (14, None), (3, "heads"), (7, "kv_heads"), (4, "heads")],
)
def test_tp_misfit_names_the_first_part_that_does_not_split(tp: int, part: str | None) -> None:
    found = tp_misfit(tp, heads=HEADS, kv_heads=KV_HEADS, widths=WIDTHS)
    assert (found.part if found else None) == part


def test_widths_split_too_and_valid_tps_passes_every_rule() -> None:
    assert tp_misfit(2, heads=4, kv_heads=4, widths={"moe_intermediate_size": 5}) == Misfit(
        "moe_intermediate_size", 5, 2
    )
    assert valid_tps(heads=HEADS, kv_heads=KV_HEADS, widths=WIDTHS) == [1, 2, 14]  # 7: kv
    assert pp_misfit(3, layers=2) == Misfit("layers", 2, 3) and pp_misfit(2, layers=2) is None


def test_one_rule_two_audiences() -> None:
    heads = Misfit("heads", 4, 3)
    assert heads.for_recipe() == "tp=3 does not divide the model's 4 attention heads"
    assert heads.for_checkpoint() == "num_attention_heads 4 is not divisible by tp 3"
    layers = Misfit("layers", 2, 3)
    assert layers.for_recipe() == "pp=3 is larger than the model's 2 layers"
    assert layers.for_checkpoint() == "pp 3 is larger than the number of layers 2"


def test_the_engine_spec_asks_the_same_rule(tmp_path: Path) -> None:
    spec = model_spec(
        {"architecture": "LlamaForCausalLM", "hidden_size": 64, "num_attention_heads": 4,
         "num_key_value_heads": 2, "num_hidden_layers": 2, "vocab_size": 32}
    )  # fmt: skip
    check_parallel(spec, 2, 2)
    with pytest.raises(ForgeError) as caught:
        check_parallel(spec, 3, 1)
    assert caught.value.code == ExitCode.RECIPE
    assert caught.value.message == Misfit("heads", 4, 3).for_checkpoint()


def test_the_lengths_rule_at_the_schema_and_in_build_options(tmp_path: Path) -> None:
    expected = lengths_problem(64, 64)
    assert expected == "max_input_len (64) must be positive and below max_seq_len (64)"
    assert lengths_problem(63, 64) is None
    with pytest.raises(ForgeError) as options:
        BuildOptions(max_input_len=64, max_seq_len=64).check("onnxruntime")
    assert options.value.message == expected
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "schema_version: 1\nname: t\nsource: {path: m}\n"
        "build: {max_input_len: 64, max_seq_len: 64}\n"
    )
    with pytest.raises(ForgeError) as schema:
        load_recipe(recipe)
    assert expected in schema.value.message and schema.value.code == ExitCode.RECIPE


def test_a_checkpoint_config_that_is_not_json_is_damage_not_a_crash(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"architecture": "LlamaForCausalLM",')
    with pytest.raises(ForgeError) as caught:
        read_checkpoint(tmp_path)
    assert caught.value.code == ExitCode.STORE
    assert "config.json is not valid JSON" in caught.value.message


def test_model_spec_gives_the_scale_and_windows_forward_and_lowering_share() -> None:
    spec = model_spec(
        {"architecture": "Gemma2ForCausalLM", "hidden_size": 64, "num_attention_heads": 4,
         "num_hidden_layers": 3, "vocab_size": 32, "head_size": 32,
         "query_pre_attn_scalar": 16,
         "forge": {"sliding_window": 8, "sliding_window_layers": [0, 2]}}
    )  # fmt: skip
    assert spec.attention_scale == 0.25  # query_pre_attn_scalar ** -0.5, not head_size's
    assert [spec.layer_window(layer) for layer in range(3)] == [8, None, 8]
