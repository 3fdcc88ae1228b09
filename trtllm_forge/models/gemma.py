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

from trtllm_forge.models import gpt_common, tables
from trtllm_forge.models.base import TensorPlan, TensorRule, model_dims, text_config
from trtllm_forge.models.llama import rope_settings

CONVERTER_VERSION = 2  # 2: embedding_multiplier rounded to the model dtype

# (TRT-LLM module inside a layer, HF module inside model.layers.{i}); weights only.
_LAYER_MODULES: tuple[tuple[str, str], ...] = (
    ("attention.dense", "self_attn.o_proj"),
    ("mlp.fc", "mlp.gate_proj"),  # the activated branch (docs/trtllm-checkpoint.md §3.1)
    ("mlp.gate", "mlp.up_proj"),
    ("mlp.proj", "mlp.down_proj"),
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


def embedding_multiplier(hidden_size: int, dtype: str) -> float:
    """``sqrt(hidden_size)`` rounded to the model dtype, as transformers and TensorRT-LLM
    apply it (hidden 3584: sqrt 59.87 is 59.75 in bfloat16)."""
    import torch

    return float(torch.tensor(math.sqrt(hidden_size), dtype=getattr(torch, dtype)))


class GemmaFamily(gpt_common.GptStyleFamily):
    name = "gemma"
    architectures: tuple[str, ...] = ("GemmaForCausalLM",)
    version = str(CONVERTER_VERSION)

    def validate(self, hf_config: Mapping[str, Any]) -> None:
        super().validate(hf_config)
        cfg = text_config(hf_config)
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
                "embedding_multiplier": embedding_multiplier(config["hidden_size"], dtype),
            }
        )
        return config

    def tensor_plan(self, hf_config: Mapping[str, Any]) -> TensorPlan:
        cfg = text_config(hf_config)
        tied = bool(cfg.get("tie_word_embeddings", True))
        rules = [
            *tables.embedding_rules("model.embed_tokens.weight", tied=tied),
            TensorRule("transformer.ln_f.weight", ("model.norm.weight",), "add_one"),
        ]
        layers = model_dims(cfg)["num_hidden_layers"]
        for dst, src in tables.layer_prefixes("model.layers", layers):
            rules.append(tables.split_qkv_rule(dst, f"{src}self_attn", "weight"))
            rules.extend(tables.module_rules(dst, src, _LAYER_MODULES, ("weight",)))
            rules.extend(TensorRule(dst + t, (src + s,), "add_one") for t, s in _NORMS)
        ignored = tables.ignore_tied_head(_IGNORED, tied=tied)
        return TensorPlan(rules=tuple(rules), ignored=ignored)
