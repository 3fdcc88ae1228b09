"""Gemma 2 end to end on a tiny random model whose every Gemma 2 feature bites.

The tiny config (tests/tinymodels.py) has a 16-token sliding window on layer 0 and full
attention on layer 1, soft-caps of 1.0 on the attention scores and the logits, and
query_pre_attn_scalar 24 != head_dim 16. Prompts + generations (up to 49 tokens) and
the scored text (96 tokens) are longer than the window. ``test_each_feature_bites``
proves that dropping any one feature from the checkpoint breaks the reference forward,
so the equality tests below would catch a lowering that ignores it.
"""

from __future__ import annotations

import copy
import json
import shutil
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
from tests.tinymodels import make_tiny_hf
from trtllm_forge.checkpoint.convert import convert_hf_checkpoint
from trtllm_forge.checkpoint.forward import CheckpointForward
from trtllm_forge.checkpoint.io import CheckpointReader, read_config
from trtllm_forge.engine.runtime import load_engine
from trtllm_forge.engine.verify import (
    load_reference,
    reference_greedy,
    reference_logits,
)
from trtllm_forge.errors import ForgeError
from trtllm_forge.quant.quantize import load_hf_model

PROMPTS = random_prompts(8)
TEXT = random_texts(1)[0]
NEW_TOKENS = 32
WINDOW = 16
IDS = torch.randint(3, 250, (2, 40), generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gemma2")
    build = tiny_engine(root, "gemma2")
    return {
        "root": root,
        "hf": build.hf,
        "canonical": root / "ckpt-float32",
        "engine": build.engine,
    }


@pytest.fixture(scope="module")
def hf_logits(tiny: dict[str, Path]) -> torch.Tensor:
    with torch.no_grad():
        return load_hf_model(tiny["hf"])(input_ids=IDS).logits


def _reference_rel_diff(ckpt: Path, want: torch.Tensor) -> float:
    forward = CheckpointForward(ckpt)
    try:
        got = forward.logits(IDS)
    finally:
        forward.close()
    return float((got - want).abs().max() / want.abs().max())


def test_config_fields(tiny: dict[str, Path]) -> None:
    config = read_config(tiny["canonical"])
    hf_config = json.loads((tiny["hf"] / "config.json").read_text())
    assert hf_config["layer_types"] == ["sliding_attention", "full_attention"]
    assert {
        k: config[k]
        for k in (
            "architecture",
            "query_pre_attn_scalar",
            "attn_logit_softcapping",
            "final_logit_softcapping",
            "inter_layernorms",
            "embedding_multiplier",
            "hidden_act",
            "head_size",
        )
    } == {
        "architecture": "Gemma2ForCausalLM",
        "query_pre_attn_scalar": 24,
        "attn_logit_softcapping": 1.0,
        "final_logit_softcapping": 1.0,
        "inter_layernorms": True,
        "embedding_multiplier": 8.0,
        "hidden_act": "gelu_pytorch_tanh",
        "head_size": 16,
    }
    assert config["forge"]["sliding_window"] == WINDOW
    assert config["forge"]["sliding_window_layers"] == [0]
    assert max(len(p) for p in PROMPTS) + NEW_TOKENS > WINDOW and len(TEXT) > WINDOW


def test_converted_tensors_are_the_hf_tensors(tiny: dict[str, Path]) -> None:
    with safe_open(str(tiny["hf"] / "model.safetensors"), "pt") as f:
        hf = {k: f.get_tensor(k) for k in f.keys()}
    norms = {  # every Gemma 2 RMSNorm computes x̂ · (1 + w): the checkpoint stores 1 + w
        "input_layernorm": "input_layernorm",
        "post_layernorm": "post_attention_layernorm",
        "pre_feedforward_layernorm": "pre_feedforward_layernorm",
        "post_feedforward_layernorm": "post_feedforward_layernorm",
    }
    with CheckpointReader(tiny["canonical"]) as reader:
        assert torch.equal(reader.get("transformer.ln_f.weight"), hf["model.norm.weight"] + 1)
        embed = hf["model.embed_tokens.weight"]  # stored unscaled; tied head
        assert torch.equal(reader.get("transformer.vocab_embedding.weight"), embed)
        assert torch.equal(reader.get("lm_head.weight"), embed)
        for i in range(2):
            src, dst = f"model.layers.{i}.", f"transformer.layers.{i}."
            for trt, name in norms.items():
                assert torch.equal(reader.get(f"{dst}{trt}.weight"), hf[f"{src}{name}.weight"] + 1)
            qkv = torch.cat([hf[f"{src}self_attn.{p}_proj.weight"] for p in "qkv"])
            assert torch.equal(reader.get(f"{dst}attention.qkv.weight"), qkv)
            pairs = {
                "mlp.fc": "mlp.gate_proj",
                "mlp.gate": "mlp.up_proj",
                "mlp.proj": "mlp.down_proj",
            }
            pairs["attention.dense"] = "self_attn.o_proj"
            for trt, name in pairs.items():
                assert torch.equal(reader.get(f"{dst}{trt}.weight"), hf[f"{src}{name}.weight"])


def test_reference_forward_matches_transformers(
    tiny: dict[str, Path], hf_logits: torch.Tensor
) -> None:
    assert _reference_rel_diff(tiny["canonical"], hf_logits) < 1e-5


# Each mutation removes one Gemma 2 feature from the checkpoint's config.json.
DROPPED: dict[str, Any] = {
    "attn_softcap": lambda c: c.update(attn_logit_softcapping=None),
    "final_softcap": lambda c: c.update(final_logit_softcapping=None),
    "query_pre_attn_scalar": lambda c: c.update(query_pre_attn_scalar=None),
    "sandwich_norms": lambda c: c.update(inter_layernorms=False),
    "sliding_window": lambda c: c["forge"].update(sliding_window=None),
    "window_on_every_layer": lambda c: c["forge"].pop("sliding_window_layers"),
}


def test_each_feature_bites(tiny: dict[str, Path], hf_logits: torch.Tensor, tmp_path: Path) -> None:
    """Without any one feature the forward is far from transformers: the tiny model
    exercises all of them, so the engine tests below can fail."""
    broken = tmp_path / "ckpt"
    shutil.copytree(tiny["canonical"], broken)
    config = read_config(tiny["canonical"])
    for name, drop in DROPPED.items():
        mutated = copy.deepcopy(config)
        drop(mutated)
        (broken / "config.json").write_text(json.dumps(mutated))
        assert _reference_rel_diff(broken, hf_logits) > 0.05, name


def test_engine_greedy_matches_transformers(tiny: dict[str, Path]) -> None:
    engine, reference = load_engine(tiny["engine"]), load_reference(tiny["hf"])
    assert engine.generate(PROMPTS, NEW_TOKENS) == [
        reference_greedy(reference, p, NEW_TOKENS) for p in PROMPTS
    ]
    assert rel_diff(reference_logits(reference, TEXT, 128), engine.score(TEXT)) < 1e-4


@pytest.mark.parametrize(("tp", "pp"), [(2, 1), (1, 2)])
def test_parallel_engine_matches_tp1(tiny: dict[str, Path], tp: int, pp: int) -> None:
    """PP=2 puts the sliding layer 0 and the full layer 1 on different ranks: each rank
    must pick its window by global layer index."""
    single = load_engine(tiny["engine"])
    parallel = load_engine(tiny_engine(tiny["root"], "gemma2", tp=tp, pp=pp).engine)
    assert (parallel.tp_size, parallel.pp_size) == (tp, pp)
    assert parallel.generate(PROMPTS, NEW_TOKENS) == single.generate(PROMPTS, NEW_TOKENS)
    assert rel_diff(single.score(TEXT), parallel.score(TEXT)) < 1e-5


# The Llama tolerances of tests/test_quant_methods.py (weights, fake-quant logits, ORT).
QUANT = {"int8_wo": (None, 0.05), "fp8": ("fp8", 0.2)}


@pytest.mark.parametrize("method", list(QUANT))
def test_quantized_gemma2_verifies(tiny: dict[str, Path], method: str) -> None:
    from trtllm_forge.quant.quantize import quantize_checkpoint

    root, hf = tiny["root"], tiny["hf"]
    if not (root / "canonical-f16").exists():
        convert_hf_checkpoint(hf, root / "canonical-f16", dtype="float16")
    kv_cache, logit_tol = QUANT[method]
    out = root / f"q_{method}"
    quantize_checkpoint(
        hf_dir=hf,
        canonical_dir=root / "canonical-f16",
        out_dir=out,
        method=method,
        kv_cache=kv_cache,
        calibration=torch.randint(3, 250, (8, 32), generator=torch.Generator().manual_seed(0)),
    )
    assert (
        read_config(out)["quantization"]["quant_algo"] == {"int8_wo": "W8A16", "fp8": "FP8"}[method]
    )
    ids = IDS[:, :24]  # longer than the window
    vs_float, vs_fake = quantized_logits_check(hf, out, root / f"onnx_{method}", ids)
    assert 0 < vs_float < logit_tol
    assert vs_fake < 1e-4


def test_bfloat16_checkpoint_verifies(tmp_path: Path) -> None:
    """HF weights saved in bfloat16 -> bfloat16 checkpoint (linears bit-identical, norms
    rounded 1 + w) -> engine: the verify gates of the Llama bfloat16 test pass."""
    from tests.test_families_a import check_bfloat16_family

    check_bfloat16_family(tmp_path, "gemma2")


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"layer_types": ["sliding_attention", "chunked_attention"]}, "chunked_attention"),
        ({"attn_logit_softcapping": -1.0}, "attn_logit_softcapping"),
        ({"query_pre_attn_scalar": None}, "query_pre_attn_scalar"),
    ],
)
def test_unsupported_configs_are_refused(
    tmp_path: Path, overrides: dict[str, Any], match: str
) -> None:
    hf = make_tiny_hf("gemma2", tmp_path / "hf")
    config = json.loads((hf / "config.json").read_text())
    (hf / "config.json").write_text(json.dumps({**config, **overrides}))
    with pytest.raises(ForgeError, match=match):
        convert_hf_checkpoint(hf, tmp_path / "ckpt", dtype="float32")


def test_missing_keys_take_transformers_defaults(tmp_path: Path) -> None:
    """A config.json without the Gemma 2 keys means transformers' defaults, not "off"."""
    from trtllm_forge.models.gemma2 import Gemma2Family

    hf = make_tiny_hf("gemma2", tmp_path / "hf")
    config = json.loads((hf / "config.json").read_text())
    for key in ("query_pre_attn_scalar", "attn_logit_softcapping", "final_logit_softcapping"):
        config.pop(key)
    config.pop("sliding_window")
    config.pop("layer_types")
    out = Gemma2Family().trtllm_config(config, dtype="float32")
    assert (out["query_pre_attn_scalar"], out["attn_logit_softcapping"]) == (256, 50.0)
    assert out["final_logit_softcapping"] == 30.0
    assert (out["forge"]["sliding_window"], out["forge"]["sliding_window_layers"]) == (4096, [0])


def test_embedding_multiplier_is_rounded_to_the_model_dtype() -> None:
    from trtllm_forge.models.gemma import embedding_multiplier

    assert embedding_multiplier(3584, "bfloat16") == 59.75  # Gemma 2 9B: sqrt = 59.87
    assert embedding_multiplier(3584, "float16") == 59.875
    assert embedding_multiplier(3584, "float32") == pytest.approx(3584**0.5, rel=1e-7)
