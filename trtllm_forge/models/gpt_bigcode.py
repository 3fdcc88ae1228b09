"""GPTBigCode (``GPTBigCodeForCausalLM``, StarCoder/SantaCoder): GPT-2 with nn.Linear
weights (no transpose) and multi-query attention.

``c_attn`` rows are ``[q (heads·d); k (d); v (d)]`` with ``multi_query`` (already
TensorRT-LLM's q, k, v order; KV heads = 1) and ``[heads, 3, d]`` without it
(re-ordered like GPT-NeoX). TensorRT-LLM converts it as ``GPTForCausalLM`` with
``gpt_variant`` ``starcoder``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from trtllm_forge.models import gpt_common, tables
from trtllm_forge.models.base import TensorPlan, TensorRule, model_dims, text_config
from trtllm_forge.models.gpt2 import Gpt2Family

CONVERTER_VERSION = 1

_LAYER_MODULES: tuple[tuple[str, str], ...] = (
    ("input_layernorm", "ln_1"),
    ("attention.dense", "attn.c_proj"),
    ("post_layernorm", "ln_2"),
    ("mlp.fc", "mlp.c_fc"),
    ("mlp.proj", "mlp.c_proj"),
)
_IGNORED = (re.compile(r"transformer\.h\.\d+\.attn\.(masked_)?bias"),)


class GptBigCodeFamily(Gpt2Family):
    """GPT-2's checks (validate) with its own config and table."""

    name = "gpt_bigcode"
    architectures = ("GPTBigCodeForCausalLM",)
    version = str(CONVERTER_VERSION)

    def trtllm_config(self, hf_config: Mapping[str, Any], *, dtype: str) -> dict[str, Any]:
        self.validate(hf_config)
        cfg = text_config(hf_config)
        config = gpt_common.base_config(
            hf_config,
            family=self.name,
            trt_architecture="GPTForCausalLM",
            dtype=dtype,
            converter_version=CONVERTER_VERSION,
            hidden_act=gpt_common.activation(
                cfg, "activation_function", default="gelu_pytorch_tanh"
            ),
            norm_epsilon=float(cfg.get("layer_norm_epsilon", 1e-5)),
            position_embedding_type="learned_absolute",
            norm_type="layernorm",
            mlp_type="plain",
            parallel_residual=False,
            tied=bool(cfg.get("tie_word_embeddings", True)),
        )
        config.update(
            {"bias": True, "gpt_variant": "starcoder", "attn_bias": True, "mlp_bias": True}
        )
        return config

    def tensor_plan(self, hf_config: Mapping[str, Any]) -> TensorPlan:
        cfg = text_config(hf_config)
        dims = model_dims(cfg)
        tied = bool(cfg.get("tie_word_embeddings", True))
        multi_query = bool(cfg.get("multi_query", True))
        rules = [
            *tables.embedding_rules("transformer.wte.weight", tied=tied),
            TensorRule("transformer.position_embedding.weight", ("transformer.wpe.weight",)),
            *tables.module_rules("transformer.", "transformer.", [("ln_f", "ln_f")]),
        ]
        for dst, src in tables.layer_prefixes("transformer.h", dims["num_hidden_layers"]):
            if multi_query:  # c_attn is already [q; k; v]
                rules.extend(tables.module_rules(dst, src, [("attention.qkv", "attn.c_attn")]))
            else:
                heads = dims["num_attention_heads"]
                rules.extend(tables.interleaved_qkv_rules(dst, f"{src}attn.c_attn", heads))
            rules.extend(tables.module_rules(dst, src, _LAYER_MODULES))
        ignored = tables.ignore_tied_head(_IGNORED, tied=tied)
        return TensorPlan(rules=tuple(rules), ignored=ignored)
