"""GPT-2, GPT-NeoX, GPTBigCode, GPT-J and Gemma end to end on tiny random models.

Per family: the converted tensors are the HF tensors (transposed / re-ordered where
the layout says so), the float32 reference forward equals transformers, the ORT
engine's greedy tokens equal transformers' (8 prompts × 32 tokens), TP=2 and PP=2
engines equal TP=1, and int8_wo / fp8 quantized checkpoints verify with the Llama
tolerances of tests/test_quant_methods.py.
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
    tiny_engine,
)
from trtllm_forge.checkpoint.convert import convert_hf_checkpoint
from trtllm_forge.checkpoint.forward import CheckpointForward
from trtllm_forge.checkpoint.io import CheckpointReader, read_config
from trtllm_forge.engine.runtime import load_engine
from trtllm_forge.engine.verify import load_reference, reference_greedy, reference_logits
from trtllm_forge.quant.fakequant import dequantized_weight
from trtllm_forge.quant.quantize import load_hf_model, quantize_checkpoint
from trtllm_forge.quant.targets import linear_targets

FAMILIES = ["gpt2", "gpt_neox", "gpt_bigcode", "gptj", "gemma"]
PROMPTS = random_prompts(8)
TEXT = random_texts(1)[0]
NEW_TOKENS = 32


def _hf_tensors(hf: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(hf / "model.safetensors"), "pt") as f:
        return {k: f.get_tensor(k).float() for k in f.keys()}


def _neox_qkv(w: torch.Tensor, heads: int) -> torch.Tensor:
    """[heads, 3, d, ...] rows -> [3, heads, d, ...] rows (written out independently of the rule)."""
    return w.reshape(heads, 3, -1, *w.shape[1:]).transpose(0, 1).reshape(w.shape)


# (TRT-LLM tensor, how to compute it from the HF tensors) spot checks per family.
EXPECTED: dict[str, dict[str, Any]] = {
    "gpt2": {
        "transformer.vocab_embedding.weight": lambda t: t["transformer.wte.weight"],
        "transformer.position_embedding.weight": lambda t: t["transformer.wpe.weight"],
        "lm_head.weight": lambda t: t["transformer.wte.weight"],
        "transformer.layers.1.attention.qkv.weight": lambda t: (
            t["transformer.h.1.attn.c_attn.weight"].T
        ),
        "transformer.layers.1.attention.qkv.bias": lambda t: t["transformer.h.1.attn.c_attn.bias"],
        "transformer.layers.0.attention.dense.weight": lambda t: (
            t["transformer.h.0.attn.c_proj.weight"].T
        ),
        "transformer.layers.0.mlp.fc.weight": lambda t: t["transformer.h.0.mlp.c_fc.weight"].T,
        "transformer.layers.0.mlp.proj.bias": lambda t: t["transformer.h.0.mlp.c_proj.bias"],
        "transformer.layers.0.post_layernorm.bias": lambda t: t["transformer.h.0.ln_2.bias"],
        "transformer.ln_f.weight": lambda t: t["transformer.ln_f.weight"],
    },
    "gpt_neox": {
        "transformer.vocab_embedding.weight": lambda t: t["gpt_neox.embed_in.weight"],
        "lm_head.weight": lambda t: t["embed_out.weight"],
        "transformer.layers.1.attention.qkv.weight": lambda t: _neox_qkv(
            t["gpt_neox.layers.1.attention.query_key_value.weight"], 4
        ),
        "transformer.layers.1.attention.qkv.bias": lambda t: _neox_qkv(
            t["gpt_neox.layers.1.attention.query_key_value.bias"], 4
        ),
        "transformer.layers.0.attention.dense.bias": lambda t: t[
            "gpt_neox.layers.0.attention.dense.bias"
        ],
        "transformer.layers.0.mlp.fc.weight": lambda t: t[
            "gpt_neox.layers.0.mlp.dense_h_to_4h.weight"
        ],
        "transformer.layers.0.mlp.proj.weight": lambda t: t[
            "gpt_neox.layers.0.mlp.dense_4h_to_h.weight"
        ],
        "transformer.layers.0.post_layernorm.weight": lambda t: t[
            "gpt_neox.layers.0.post_attention_layernorm.weight"
        ],
        "transformer.ln_f.bias": lambda t: t["gpt_neox.final_layer_norm.bias"],
    },
    "gpt_bigcode": {
        "transformer.position_embedding.weight": lambda t: t["transformer.wpe.weight"],
        "lm_head.weight": lambda t: t["transformer.wte.weight"],
        # Multi-query c_attn is already [q; k; v] in nn.Linear layout: copied as is.
        "transformer.layers.1.attention.qkv.weight": lambda t: t[
            "transformer.h.1.attn.c_attn.weight"
        ],
        "transformer.layers.1.attention.qkv.bias": lambda t: t["transformer.h.1.attn.c_attn.bias"],
        "transformer.layers.0.mlp.fc.weight": lambda t: t["transformer.h.0.mlp.c_fc.weight"],
        "transformer.layers.0.mlp.proj.bias": lambda t: t["transformer.h.0.mlp.c_proj.bias"],
    },
    "gptj": {
        "lm_head.weight": lambda t: t["lm_head.weight"],
        "lm_head.bias": lambda t: t["lm_head.bias"],
        "transformer.layers.1.attention.qkv.weight": lambda t: torch.cat(
            [t[f"transformer.h.1.attn.{p}_proj.weight"] for p in "qkv"]
        ),
        "transformer.layers.0.attention.dense.weight": lambda t: t[
            "transformer.h.0.attn.out_proj.weight"
        ],
        "transformer.layers.0.input_layernorm.bias": lambda t: t["transformer.h.0.ln_1.bias"],
        "transformer.layers.0.mlp.fc.bias": lambda t: t["transformer.h.0.mlp.fc_in.bias"],
        "transformer.layers.0.mlp.proj.weight": lambda t: t["transformer.h.0.mlp.fc_out.weight"],
    },
    "gemma": {
        "transformer.vocab_embedding.weight": lambda t: t["model.embed_tokens.weight"],  # unscaled
        "lm_head.weight": lambda t: t["model.embed_tokens.weight"],
        # Gemma's RMSNorm multiplies by (1 + w): the checkpoint stores 1 + w.
        "transformer.layers.0.input_layernorm.weight": lambda t: (
            t["model.layers.0.input_layernorm.weight"] + 1
        ),
        "transformer.layers.1.post_layernorm.weight": lambda t: (
            t["model.layers.1.post_attention_layernorm.weight"] + 1
        ),
        "transformer.ln_f.weight": lambda t: t["model.norm.weight"] + 1,
        "transformer.layers.0.mlp.fc.weight": lambda t: t["model.layers.0.mlp.gate_proj.weight"],
        "transformer.layers.0.mlp.gate.weight": lambda t: t["model.layers.0.mlp.up_proj.weight"],
    },
}


def test_tiny_configs_exercise_the_features(family: dict[str, Any]) -> None:
    """The tiny models really use the feature each family is here for."""
    config = read_config(family["canonical"])
    features = {
        "gpt2": {"position_embedding_type": "learned_absolute", "hidden_act": "gelu_new"},
        "gpt_neox": {"rotary_embedding_dim": 8, "hidden_act": "gelu"},
        "gpt_bigcode": {"num_key_value_heads": 1, "hidden_act": "gelu_pytorch_tanh"},
        "gptj": {"position_embedding_type": "rope_gptj", "rotary_embedding_dim": 8},
        "gemma": {"embedding_multiplier": 8.0, "hidden_act": "gelu_pytorch_tanh"},
    }[family["arch"]]
    assert {k: config[k] for k in features} == features
    if family["arch"] in ("gpt_neox", "gptj"):
        assert config["forge"]["parallel_residual"] is True


@pytest.fixture(scope="module", params=FAMILIES)
def family(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    arch = str(request.param)
    root = tmp_path_factory.mktemp(arch)
    build = tiny_engine(root, arch)
    return {
        "arch": arch,
        "root": root,
        "hf": build.hf,
        "engine": build.engine,
        "canonical": root / "ckpt-float32",
    }


def test_converted_tensors_are_the_hf_tensors(family: dict[str, Any]) -> None:
    hf = _hf_tensors(family["hf"])
    with CheckpointReader(family["canonical"]) as reader:
        for name, expected in EXPECTED[family["arch"]].items():
            assert torch.equal(reader.get(name).float(), expected(hf).contiguous()), name


def test_reference_forward_matches_transformers(family: dict[str, Any]) -> None:
    assert _forward_rel_diff(family["hf"], family["canonical"]) < 1e-5


def test_engine_greedy_matches_transformers(family: dict[str, Any]) -> None:
    engine, reference = load_engine(family["engine"]), load_reference(family["hf"])
    assert engine.generate(PROMPTS, NEW_TOKENS) == [
        reference_greedy(reference, p, NEW_TOKENS) for p in PROMPTS
    ]
    assert rel_diff(reference_logits(reference, TEXT, 128), engine.score(TEXT)) < 1e-4


@pytest.mark.parametrize(("tp", "pp"), [(2, 1), (1, 2)])
def test_parallel_engine_matches_tp1(family: dict[str, Any], tp: int, pp: int) -> None:
    single = load_engine(family["engine"])
    parallel = load_engine(tiny_engine(family["root"], family["arch"], tp=tp, pp=pp).engine)
    assert (parallel.tp_size, parallel.pp_size) == (tp, pp)
    assert parallel.generate(PROMPTS, NEW_TOKENS) == single.generate(PROMPTS, NEW_TOKENS)
    assert rel_diff(single.score(TEXT), parallel.score(TEXT)) < 1e-5


# The Llama tolerances of tests/test_quant_methods.py (weights, fake-quant logits, ORT).
QUANT = {"int8_wo": (0.01, 0.05), "fp8": (0.05, 0.2)}
ORT_TOL = 1e-4


@pytest.mark.parametrize("method", list(QUANT))
def test_quantized_family_verifies(family: dict[str, Any], method: str) -> None:

    root, hf = family["root"], family["hf"]
    out = root / f"q_{method}"
    if not out.exists():
        convert_hf_checkpoint(hf, root / "canonical-f16", dtype="float16")
        quantize_checkpoint(
            hf_dir=hf,
            canonical_dir=root / "canonical-f16",
            out_dir=out,
            method=method,
            calibration=torch.randint(3, 250, (8, 32), generator=torch.Generator().manual_seed(0)),
        )
    weight_tol, logit_tol = QUANT[method]
    hf_config = json.loads((hf / "config.json").read_text())
    targets = linear_targets(hf_config)
    with CheckpointReader(out) as reader, CheckpointReader(root / "canonical-f16") as base:
        assert (
            read_config(out)["quantization"]["quant_algo"]
            == {"int8_wo": "W8A16", "fp8": "FP8"}[method]
        )
        for target in targets:
            original = base.get(f"{target.module}.weight").float()
            effective = dequantized_weight(reader, target.module)
            assert effective is not None, target.module
            rel = float((effective - original).norm() / original.norm())
            assert rel < weight_tol, (target.module, rel)
    ids = torch.randint(0, 256, (2, 20), generator=torch.Generator().manual_seed(7))
    vs_float, vs_fake = quantized_logits_check(hf, out, root / f"onnx_{method}", ids)
    assert 0 < vs_float < logit_tol
    assert vs_fake < ORT_TOL


def _forward_rel_diff(hf: Path, ckpt: Path) -> float:
    ids = torch.randint(3, 250, (2, 24), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = load_hf_model(hf)(input_ids=ids).logits
    forward = CheckpointForward(ckpt)
    try:
        got = forward.logits(ids)
    finally:
        forward.close()
    return float((got - want).abs().max() / want.abs().max())


def test_bigcode_without_multi_query_is_reordered_per_head(tmp_path: Path) -> None:
    from tests.tinymodels import make_tiny_hf

    hf = make_tiny_hf("gpt_bigcode", tmp_path / "hf", multi_query=False)
    convert_hf_checkpoint(hf, tmp_path / "ckpt", dtype="float32")
    assert read_config(tmp_path / "ckpt")["num_key_value_heads"] == 4
    assert _forward_rel_diff(hf, tmp_path / "ckpt") < 1e-5


def test_gptj_head_bias_is_padded_and_split_with_an_odd_vocab(tmp_path: Path) -> None:
    single = load_engine(tiny_engine(tmp_path, "gptj", vocab_size=251).engine)
    parallel = load_engine(tiny_engine(tmp_path, "gptj", tp=2, vocab_size=251).engine)
    with CheckpointReader(tmp_path / "ckpt-float32-tp2-pp1") as reader:
        assert reader.shape("lm_head.bias", 1) == (126,)  # 251 padded to 252, split in two
    assert parallel.generate(PROMPTS[:4], 16) == single.generate(PROMPTS[:4], 16)
    assert rel_diff(single.score(TEXT), parallel.score(TEXT)) < 1e-5


RECIPES = {"gpt2": "gpt2", "gpt_neox": "gpt-neox", "gpt_bigcode": "gpt-bigcode", "gptj": "gptj"}
RECIPES["gemma"] = "gemma"
RECIPES["gemma2"] = "gemma2"  # the family's own tests: tests/test_family_gemma2.py


@pytest.mark.slow  # one CLI subprocess per recipe: ~25 s each on 2 cores
@pytest.mark.parametrize("arch", list(RECIPES))
def test_tiny_recipe_builds_and_verifies(tmp_path: Path, arch: str) -> None:
    """recipes/tiny-<family>.yaml through the real CLI (model made as make_models.py does)."""
    from tests.helpers import forge
    from tests.tinymodels import make_tiny_hf

    root = Path(__file__).resolve().parents[1] / "recipes"
    make_tiny_hf(arch, tmp_path / "tiny" / arch, with_tokenizer=True)
    recipe = tmp_path / f"tiny-{RECIPES[arch]}.yaml"
    recipe.write_text((root / recipe.name).read_text())
    run = forge("build", str(recipe))
    assert run.code == 0, run.err[-2000:]
    assert "token_agreement" in run.out


def check_bfloat16_family(root: Path, arch: str) -> None:
    """HF weights saved in bfloat16 -> bfloat16 checkpoint -> ORT engine.

    Conversion: byte-copied tensors equal HF's, ``1 + w`` norms equal HF's plus one
    rounded to bfloat16. Engine: the gates of the Llama bfloat16 test
    (tests/test_engine_parity.py) against transformers in float32.
    """
    from trtllm_forge.engine.verify import verify_engine
    from trtllm_forge.models.registry import family_for

    build = tiny_engine(root, arch, dtype="bfloat16", torch_dtype="bfloat16")
    hf = {}
    with safe_open(str(build.hf / "model.safetensors"), "pt") as f:
        hf = {k: f.get_tensor(k) for k in f.keys()}
    assert {t.dtype for t in hf.values()} == {torch.bfloat16}
    plan = family_for(json.loads((build.hf / "config.json").read_text())).tensor_plan(
        json.loads((build.hf / "config.json").read_text())
    )
    checked = 0
    with CheckpointReader(build.checkpoint) as reader:
        assert {reader.get(n).dtype for n in reader.names()} == {torch.bfloat16}
        for rule in plan.rules:
            sources = [hf[s] for s in rule.sources]
            if rule.fusion in ("identity", "concat_rows"):
                expected = torch.cat(sources)
            elif rule.fusion == "add_one":
                expected = (sources[0].float() + 1).to(torch.bfloat16)
            else:
                continue
            assert torch.equal(reader.get(rule.target), expected), rule.target
            checked += 1
    assert checked > len(plan.rules) // 2
    result = verify_engine(
        build.engine,
        build.hf,
        prompts_token_ids=PROMPTS,
        texts_token_ids=random_texts(3, 128, seed=5),
        max_new_tokens=NEW_TOKENS,
        gates={"min_top1": 0.98, "max_ppl_ratio": 1.005},
    )
    assert result.passed, result.gates


@pytest.mark.parametrize("arch", ["gemma", "gpt_neox"])
def test_bfloat16_checkpoint_verifies(tmp_path: Path, arch: str) -> None:
    check_bfloat16_family(tmp_path, arch)
