"""GPT-2, GPT-NeoX, GPTBigCode, GPT-J and Gemma: what only these families have.

The conformance suite (tests/test_family_conformance.py) proves each tiny model like
every family: tensors (transposed / re-ordered where the layout says so), reference
forward = transformers, each feature bites, ORT greedy tokens and logits, TP=2 / PP=2,
int8_wo and fp8 (each dequantized linear within the Llama weight tolerances too). Here:
the tiny configs use the feature each family is here for, GPTBigCode without multi-query,
GPT-J's head bias with an odd vocabulary, bfloat16 checkpoints, and (slow tier) the tiny
recipes through the CLI.
"""

from __future__ import annotations

import json
from pathlib import Path

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
from trtllm_forge.checkpoint.convert import convert_hf_checkpoint
from trtllm_forge.checkpoint.forward import CheckpointForward
from trtllm_forge.checkpoint.io import CheckpointReader, read_config
from trtllm_forge.engine.runtime import load_engine
from trtllm_forge.quant.quantize import load_hf_model

FAMILIES = ["gpt2", "gpt_neox", "gpt_bigcode", "gptj", "gemma"]
PROMPTS = random_prompts(8)
TEXT = random_texts(1)[0]
NEW_TOKENS = 32


@pytest.mark.parametrize("arch", FAMILIES)
def test_tiny_configs_exercise_the_features(tmp_path: Path, arch: str) -> None:
    """The tiny models really use the feature each family is here for."""
    _, canonical = tiny_checkpoint(tmp_path, arch)
    config = read_config(canonical)
    features = {
        "gpt2": {"position_embedding_type": "learned_absolute", "hidden_act": "gelu_new"},
        "gpt_neox": {"rotary_embedding_dim": 8, "hidden_act": "gelu"},
        "gpt_bigcode": {"num_key_value_heads": 1, "hidden_act": "gelu_pytorch_tanh"},
        "gptj": {"position_embedding_type": "rope_gptj", "rotary_embedding_dim": 8},
        "gemma": {"embedding_multiplier": 8.0, "hidden_act": "gelu_pytorch_tanh"},
    }[arch]
    assert {k: config[k] for k in features} == features
    if arch in ("gpt_neox", "gptj"):
        assert config["forge"]["parallel_residual"] is True


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
