"""Gemma 2: what only Gemma 2 has.

The conformance suite (tests/test_family_conformance.py, case ``gemma2``) proves the
tiny model like every family: tensors (``1 + w`` sandwich norms), reference forward =
transformers, each feature bites (soft-caps, query_pre_attn_scalar, sandwich norms, the
window and its layers), ORT greedy tokens and logits, TP=2 / PP=2 (PP=2 puts the sliding
layer 0 and the full layer 1 on different ranks: each rank picks its window by global
layer index), int8_wo and fp8 with an fp8 KV cache. The tiny config
(tests/tinymodels.py) has a 16-token sliding window on layer 0 and full attention on
layer 1, soft-caps of 1.0 and query_pre_attn_scalar 24 != head_dim 16; the suite's
prompts + generations and scored text are longer than the window. Here: the config
fields, bfloat16, refusals and transformers' defaults.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.engine_support import random_prompts, random_texts, tiny_checkpoint
from tests.tinymodels import make_tiny_hf
from trtllm_forge.checkpoint.convert import convert_hf_checkpoint
from trtllm_forge.checkpoint.io import read_config
from trtllm_forge.errors import ForgeError

PROMPTS = random_prompts(8)
TEXT = random_texts(1)[0]
NEW_TOKENS = 32
WINDOW = 16


def test_config_fields(tmp_path: Path) -> None:
    hf, canonical = tiny_checkpoint(tmp_path, "gemma2")
    config = read_config(canonical)
    hf_config = json.loads((hf / "config.json").read_text())
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
