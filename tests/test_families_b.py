"""Falcon, BLOOM and MPT (families-B): what only these families have.

The conformance suite (tests/test_family_conformance.py) proves each variant below like
every family: fused QKV rows re-ordered to [q; k; v], reference forward = transformers,
each feature bites, ORT greedy tokens and logits, TP=2 / PP=2, int8_wo and fp8 with an
fp8 KV cache (``falcon-new-one-norm``: conversion and reference forward only). Here: the
config fields, biases exactly where HF has them, ALiBi slopes against transformers',
refusals, the embedding LayerNorm on the first PP rank, ALiBi with six heads over two
ranks, and (slow tier) the tiny recipes through the CLI.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open

from tests.engine_support import (
    random_prompts,
    random_texts,
    rel_diff,
    tiny_checkpoint,
    tiny_engine,
)
from tests.family_cases import CASES
from tests.tinymodels import make_tiny_hf
from trtllm_forge.checkpoint.convert import convert_hf_checkpoint
from trtllm_forge.checkpoint.forward import alibi_slopes
from trtllm_forge.checkpoint.io import CheckpointReader
from trtllm_forge.engine.runtime import load_engine
from trtllm_forge.engine.verify import load_reference, reference_greedy, reference_logits
from trtllm_forge.errors import ForgeError

# name -> (tiny arch, config overrides): the suite's cases (tests/family_cases.py).
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    name: (CASES[name].arch, CASES[name].overrides)
    for name in (
        "falcon-7b-like",  # old decoder: MQA, parallel attention, no bias
        "falcon-40b-like",  # new decoder: GQA, ln_attn + ln_mlp, biases
        "falcon-sequential",
        "falcon-new-one-norm",
        "bloom",
        "mpt",
    )
}
PROMPTS = random_prompts(8)
TEXT = random_texts(1)[0]
NEW_TOKENS = 32


def _hf_tensors(hf: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(hf / "model.safetensors"), "pt") as f:
        return {name: f.get_tensor(name) for name in f.keys()}


def _config(path: Path) -> dict[str, Any]:
    return json.loads((path / "config.json").read_text())


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    root = tmp_path_factory.mktemp("families-b")
    out = {}
    for name, (arch, overrides) in VARIANTS.items():
        hf = make_tiny_hf(arch, root / name / "hf", **overrides)
        convert_hf_checkpoint(hf, root / name / "ckpt", dtype="float32")
        out[name] = (hf, root / name / "ckpt")
    return out


@pytest.mark.parametrize("name", list(VARIANTS))
def test_biases_are_where_hf_has_them(name: str, converted: dict[str, tuple[Path, Path]]) -> None:
    """Every layer's fused QKV bias exists exactly when HF's does; MPT has no bias at all
    (its LayerNorm neither); BLOOM's embedding LayerNorm keeps both of its tensors."""
    hf, ckpt = converted[name]
    source = _hf_tensors(hf)
    qkv_source = {
        "falcon": "transformer.h.{i}.self_attention.query_key_value",
        "bloom": "transformer.h.{i}.self_attention.query_key_value",
        "mpt": "transformer.blocks.{i}.attn.Wqkv",
    }[VARIANTS[name][0]]
    with CheckpointReader(ckpt) as reader:
        for i in range(_config(ckpt)["num_hidden_layers"]):
            for param in ("weight", "bias"):
                src = f"{qkv_source.format(i=i)}.{param}"
                assert reader.has(f"transformer.layers.{i}.attention.qkv.{param}") == (
                    src in source
                )
        if name == "bloom":
            assert reader.has("transformer.ln_embed.weight") and reader.has(
                "transformer.ln_embed.bias"
            )
        if name == "mpt":
            assert not any(n.endswith(".bias") for n in reader.names())


def test_config_fields(converted: dict[str, tuple[Path, Path]]) -> None:
    old, new = _config(converted["falcon-7b-like"][1]), _config(converted["falcon-40b-like"][1])
    assert old["architecture"] == new["architecture"] == "FalconForCausalLM"
    assert (old["num_key_value_heads"], new["num_key_value_heads"]) == (1, 2)  # MQA vs GQA
    assert (old["new_decoder_architecture"], new["new_decoder_architecture"]) == (False, True)
    assert old["parallel_attention"] and new["parallel_attention"]
    assert (old["bias"], new["bias"]) == (False, True)
    assert old["position_embedding_type"] == "rope_gpt_neox" and old["hidden_act"] == "gelu"
    assert not _config(converted["falcon-sequential"][1])["parallel_attention"]
    bloom, mpt = _config(converted["bloom"][1]), _config(converted["mpt"][1])
    assert bloom["architecture"] == "BloomForCausalLM" and mpt["architecture"] == "MPTForCausalLM"
    assert bloom["position_embedding_type"] == mpt["position_embedding_type"] == "alibi"
    assert bloom["intermediate_size"] == mpt["intermediate_size"] == 256  # 4 x hidden
    assert (bloom["hidden_act"], mpt["hidden_act"]) == ("gelu_pytorch_tanh", "gelu")
    assert (bloom["bias"], mpt["bias"]) == (True, False)
    assert mpt["alibi_bias_max"] == 8.0


@pytest.mark.parametrize("heads", [1, 4, 6, 12, 16, 20])
def test_alibi_slopes_match_bloom_and_mpt(heads: int) -> None:
    from transformers.models.bloom.modeling_bloom import build_alibi_tensor
    from transformers.models.mpt.modeling_mpt import build_mpt_alibi_tensor

    bloom = build_alibi_tensor(torch.ones(1, 2, dtype=torch.long), heads, torch.float32)
    assert torch.allclose(alibi_slopes(heads), bloom[:, 0, 1], rtol=1e-6)
    for bias_max in (8.0, 6.0):
        mpt = build_mpt_alibi_tensor(heads, 2, alibi_bias_max=bias_max)  # [heads, 1, 2]
        assert torch.allclose(alibi_slopes(heads, bias_max), mpt[:, 0, 1] - mpt[:, 0, 0])


@pytest.mark.parametrize(
    ("arch", "overrides", "match"),
    [
        ("falcon", {"alibi": True}, "alibi"),
        ("bloom", {"apply_residual_connection_post_layernorm": True}, "post_layernorm"),
        ("mpt", {"attn_config": {"clip_qkv": 6.0}}, "clip_qkv"),
        ("mpt", {"attn_config": {"qk_ln": True}}, "qk_ln"),
    ],
)
def test_unsupported_variants_are_refused(
    tmp_path: Path, arch: str, overrides: dict[str, Any], match: str
) -> None:
    hf = make_tiny_hf(arch, tmp_path / "hf", **overrides)
    with pytest.raises(ForgeError, match=match):
        convert_hf_checkpoint(hf, tmp_path / "ckpt", dtype="float32")


def test_embedding_layernorm_lives_on_the_first_pp_rank(tmp_path: Path) -> None:
    _, sharded = tiny_checkpoint(tmp_path, "bloom", tp=2, pp=2, num_hidden_layers=3)
    with CheckpointReader(sharded) as reader:
        first, last = set(reader.names(0)), set(reader.names(2))
        assert {"transformer.ln_embed.weight", "transformer.ln_embed.bias"} <= first
        assert not any("ln_embed" in n for n in last) and "transformer.ln_f.bias" in last
        # ALiBi stores nothing: every rank holds norms, linears and embeddings only.
        assert not any("alibi" in n for r in range(4) for n in reader.names(r))


@pytest.mark.parametrize("arch", ["bloom", "mpt"])
def test_alibi_with_six_heads_split_over_two_ranks(tmp_path: Path, arch: str) -> None:
    """Non-power-of-two head count: each rank must take its own heads' slopes."""
    sizes = {"hidden_size": 48, "num_attention_heads": 6}
    build = tiny_engine(tmp_path, arch, tp=2, **sizes)
    engine, reference = load_engine(build.engine), load_reference(build.hf)
    assert engine.generate(PROMPTS[:4], 16) == [
        reference_greedy(reference, p, 16) for p in PROMPTS[:4]
    ]
    assert rel_diff(reference_logits(reference, TEXT, 128), engine.score(TEXT)) < 1e-4


@pytest.mark.slow  # one CLI subprocess per recipe: ~25 s each on 2 cores
@pytest.mark.parametrize("family", ["falcon", "bloom", "mpt"])
def test_tiny_recipe_builds_and_verifies(tmp_path: Path, family: str) -> None:
    """recipes/tiny-<family>.yaml through the real CLI (model made as make_models.py does)."""
    from tests.helpers import forge

    root = Path(__file__).resolve().parents[1] / "recipes"
    make_tiny_hf(family, tmp_path / "tiny" / family, with_tokenizer=True)
    recipe = tmp_path / f"tiny-{family}.yaml"
    recipe.write_text((root / f"tiny-{family}.yaml").read_text())
    run = forge("build", str(recipe))
    assert run.code == 0, run.err[-2000:]
    assert "token_agreement" in run.out
