"""Gemma (``GemmaForCausalLM``): the Llama decoder with three twists.

* The token embedding is multiplied by ``sqrt(hidden_size)`` (written as TRT-LLM's
  ``embedding_multiplier``); the tied LM head uses the unscaled table.
* RMSNorm computes ``x̂ · (1 + w)``; the checkpoint stores ``1 + w`` (``add_one``), as
  TensorRT-LLM's Gemma converter does, so every consumer runs a plain RMSNorm.
* The MLP is GeGLU: ``down(gelu_tanh(gate(x)) · up(x))`` (HF's legacy ``gelu`` means the
  tanh form for Gemma).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from trtllm_forge.models import gpt_common
from trtllm_forge.models.base import Family, TensorPlan, TensorRule, model_dims, text_config
from trtllm_forge.models.llama import rope_settings

CONVERTER_VERSION = 1

_LAYER_TABLE: tuple[tuple[str, str], ...] = (
    ("attention.dense.weight", "self_attn.o_proj.weight"),
    ("mlp.fc.weight", "mlp.gate_proj.weight"),  # the activated branch (reference §3.1)
    ("mlp.gate.weight", "mlp.up_proj.weight"),
    ("mlp.proj.weight", "mlp.down_proj.weight"),
)
_NORMS: tuple[tuple[str, str], ...] = (
    ("input_layernorm.weight", "input_layernorm.weight"),
    ("post_layernorm.weight", "post_attention_layernorm.weight"),
)
_IGNORED = (re.compile(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq"),)


def gemma_activation(hf_config: Mapping[str, Any]) -> str:
    act = gpt_common.activation(
        hf_config, "hidden_activation", "hidden_act", default="gelu_pytorch_tanh"
    )
    return "gelu_pytorch_tanh" if act == "gelu" else act


class GemmaFamily(Family):
    name = "gemma"
    architectures = ("GemmaForCausalLM",)
    version = str(CONVERTER_VERSION)

    def validate(self, hf_config: Mapping[str, Any]) -> None:
        super().validate(hf_config)
        cfg = text_config(hf_config)
        gpt_common.reject_prequantized(cfg)
        gemma_activation(cfg)
        rope_settings(cfg)
        if cfg.get("attention_bias"):
            raise gpt_common.unsupported("Gemma attention_bias")
        if cfg.get("use_bidirectional_attention"):
            raise gpt_common.unsupported("Gemma use_bidirectional_attention")

    def trtllm_config(self, hf_config: Mapping[str, Any], *, dtype: str) -> dict[str, Any]:
        self.validate(hf_config)
        cfg = text_config(hf_config)
        theta, scaling = rope_settings(cfg)
        config = gpt_common.base_config(
            hf_config,
            family=self.name,
            trt_architecture="GemmaForCausalLM",
            dtype=dtype,
            converter_version=CONVERTER_VERSION,
            hidden_act=gemma_activation(cfg),
            norm_epsilon=float(cfg.get("rms_norm_eps", 1e-6)),
            position_embedding_type="rope_gpt_neox",
            norm_type="rmsnorm",
            mlp_type="gated",
            parallel_residual=False,
            tied=bool(cfg.get("tie_word_embeddings", True)),
        )
        config.update(
            {
                "rotary_base": theta,
                "rotary_scaling": scaling,
                "attn_bias": False,
                "mlp_bias": False,
                "embedding_multiplier": math.sqrt(config["hidden_size"]),
            }
        )
        return config

    def tensor_plan(self, hf_config: Mapping[str, Any]) -> TensorPlan:
        cfg = text_config(hf_config)
        tied = bool(cfg.get("tie_word_embeddings", True))
        rules = [
            TensorRule("transformer.vocab_embedding.weight", ("model.embed_tokens.weight",)),
            TensorRule("transformer.ln_f.weight", ("model.norm.weight",), "add_one"),
            TensorRule(
                "lm_head.weight", ("model.embed_tokens.weight" if tied else "lm_head.weight",)
            ),
        ]
        for i in range(model_dims(cfg)["num_hidden_layers"]):
            dst, src = f"transformer.layers.{i}.", f"model.layers.{i}."
            qkv = tuple(f"{src}self_attn.{p}_proj.weight" for p in "qkv")
            rules.append(TensorRule(f"{dst}attention.qkv.weight", qkv, "concat_rows"))
            rules.extend(TensorRule(dst + t, (src + s,)) for t, s in _LAYER_TABLE)
            rules.extend(TensorRule(dst + t, (src + s,), "add_one") for t, s in _NORMS)
        ignored: tuple[re.Pattern[str], ...] = _IGNORED
        if tied:
            ignored = (*ignored, re.compile(r"lm_head\.weight"))
        return TensorPlan(rules=tuple(rules), ignored=ignored)
