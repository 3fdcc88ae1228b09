"""Falcon, BLOOM and MPT end to end on tiny random models (families-B).

Conversion (config fields, tensors equal the HF ones re-ordered, reference forward
equals transformers), sharding (embedding LayerNorm on the first PP rank), ONNX
engines (greedy tokens equal transformers; TP=2 and PP=2 equal TP=1) and the
int8_wo / fp8 quantization methods with the bounds tests/test_quant_methods.py uses.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open

from tests.engine_support import (
    quantized_logits_check,
    random_prompts,
    random_texts,
    rel_diff,
    tiny_checkpoint,
    tiny_engine,
)
from tests.tinymodels import make_tiny_hf
from trtllm_forge.checkpoint.convert import convert_hf_checkpoint
from trtllm_forge.checkpoint.forward import CheckpointForward, alibi_slopes
from trtllm_forge.checkpoint.io import CheckpointReader
from trtllm_forge.engine.runtime import load_engine
from trtllm_forge.engine.verify import load_reference, reference_greedy, reference_logits
from trtllm_forge.errors import ForgeError
from trtllm_forge.quant.quantize import load_hf_model

# name -> (tiny arch, config overrides)
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "falcon-7b-like": ("falcon", {}),  # old decoder: MQA, parallel attention, no bias
    "falcon-40b-like": ("falcon", {"new_decoder_architecture": True, "bias": True}),
    "falcon-sequential": (
        "falcon",
        {"multi_query": False, "parallel_attn": False, "bias": True, "num_kv_heads": 4},
    ),
    "falcon-new-one-norm": (
        "falcon",
        {"new_decoder_architecture": True, "num_ln_in_parallel_attn": 1},
    ),
    "bloom": ("bloom", {}),
    "mpt": ("mpt", {}),
}
ENGINE_VARIANTS = ["falcon-7b-like", "falcon-40b-like", "falcon-sequential", "bloom", "mpt"]
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
def test_reference_forward_matches_transformers(
    name: str, converted: dict[str, tuple[Path, Path]]
) -> None:
    hf, ckpt = converted[name]
    ids = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = load_hf_model(hf)(input_ids=ids).logits
    forward = CheckpointForward(ckpt)
    try:
        got = forward.logits(ids)
    finally:
        forward.close()
    assert float((got - expected).abs().max() / expected.abs().max()) < 1e-5


def _expected_qkv(name: str, fused: torch.Tensor, cfg: dict[str, Any]) -> torch.Tensor:
    """HF fused QKV rows regrouped to [q; k; v] by reshaping (independent of the converter)."""
    heads, kv, d = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_size"]
    tail = fused.shape[1:]
    if name.startswith("falcon"):
        grouped = fused.reshape(kv, heads // kv + 2, d, *tail)
        q = grouped[:, :-2].reshape(-1, *tail)
        return torch.cat([q, grouped[:, -2].reshape(-1, *tail), grouped[:, -1].reshape(-1, *tail)])
    if name == "bloom":
        return fused.reshape(heads, 3, d, *tail).transpose(0, 1).reshape(-1, *tail)
    return fused  # MPT Wqkv is already [q; k; v]


@pytest.mark.parametrize("name", list(VARIANTS))
def test_tensors_equal_hf(name: str, converted: dict[str, tuple[Path, Path]]) -> None:
    hf, ckpt = converted[name]
    source = _hf_tensors(hf)
    cfg = _config(ckpt)
    qkv_source = {
        "falcon": "transformer.h.{i}.self_attention.query_key_value",
        "bloom": "transformer.h.{i}.self_attention.query_key_value",
        "mpt": "transformer.blocks.{i}.attn.Wqkv",
    }[VARIANTS[name][0]]
    with CheckpointReader(ckpt) as reader:
        for i in range(cfg["num_hidden_layers"]):
            for param in ("weight", "bias"):
                target = f"transformer.layers.{i}.attention.qkv.{param}"
                src = f"{qkv_source.format(i=i)}.{param}"
                assert reader.has(target) == (src in source), target
                if src in source:
                    assert torch.equal(reader.get(target), _expected_qkv(name, source[src], cfg))
        embed = "transformer.wte.weight" if name == "mpt" else "transformer.word_embeddings.weight"
        assert torch.equal(reader.get("transformer.vocab_embedding.weight"), source[embed])
        assert torch.equal(reader.get("lm_head.weight"), source[embed])  # tied head
        if name == "bloom":
            ln = "transformer.word_embeddings_layernorm"
            assert torch.equal(reader.get("transformer.ln_embed.weight"), source[f"{ln}.weight"])
            assert torch.equal(reader.get("transformer.ln_embed.bias"), source[f"{ln}.bias"])
        if name == "falcon-40b-like":
            mlp_ln = source["transformer.h.1.ln_mlp.bias"]
            assert torch.equal(reader.get("transformer.layers.1.mlp_layernorm.bias"), mlp_ln)
        if name == "mpt":  # LayerNorm without bias, no linear biases
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


@pytest.mark.parametrize("name", ENGINE_VARIANTS)
def test_engine_matches_transformers_and_parallel_matches_tp1(tmp_path: Path, name: str) -> None:
    arch, overrides = VARIANTS[name]
    single = tiny_engine(tmp_path, arch, **overrides)
    engine, reference = load_engine(single.engine), load_reference(single.hf)
    generated = engine.generate(PROMPTS, NEW_TOKENS)  # one left-padded batch
    assert generated == [reference_greedy(reference, p, NEW_TOKENS) for p in PROMPTS]
    assert rel_diff(reference_logits(reference, TEXT, 128), engine.score(TEXT)) < 1e-4
    for tp, pp in ((2, 1), (1, 2)):
        parallel = load_engine(tiny_engine(tmp_path, arch, tp=tp, pp=pp, **overrides).engine)
        assert (parallel.tp_size, parallel.pp_size) == (tp, pp)
        assert parallel.generate(PROMPTS, NEW_TOKENS) == generated, (tp, pp)
        assert rel_diff(engine.score(TEXT), parallel.score(TEXT)) < 1e-5


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


# Bounds of tests/test_quant_methods.py (fake-quant logits vs float; ORT vs fake quant).
QUANT_CASES = {"int8_wo": (None, 0.05), "fp8": ("fp8", 0.2)}
QUANT_VARIANTS = ["falcon-7b-like", "falcon-40b-like", "bloom", "mpt"]


@pytest.mark.parametrize("method", list(QUANT_CASES))
@pytest.mark.parametrize("name", QUANT_VARIANTS)
def test_quantized_family_verifies(tmp_path: Path, name: str, method: str) -> None:
    from trtllm_forge.quant.calibration import CalibrationSpec
    from trtllm_forge.quant.quantize import quantize_checkpoint

    arch, overrides = VARIANTS[name]
    kv_cache, logit_tol = QUANT_CASES[method]
    hf = make_tiny_hf(arch, tmp_path / "hf", with_tokenizer=True, **overrides)
    convert_hf_checkpoint(hf, tmp_path / "canonical", dtype="float16")
    out = tmp_path / method
    quantize_checkpoint(
        hf_dir=hf,
        canonical_dir=tmp_path / "canonical",
        out_dir=out,
        method=method,
        kv_cache=kv_cache,
        calibration=CalibrationSpec(samples=8, seq_len=32, seed=0),
    )
    ids = torch.randint(0, 256, (2, 20), generator=torch.Generator().manual_seed(7))
    vs_float, vs_fake = quantized_logits_check(hf, out, tmp_path / "onnx", ids)
    assert 0 < vs_float < logit_tol
    assert vs_fake < 1e-4
    assert _config(out)["quantization"]["quant_algo"] == {"int8_wo": "W8A16", "fp8": "FP8"}[method]


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
