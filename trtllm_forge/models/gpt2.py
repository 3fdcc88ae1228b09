"""GPT-2 (``GPT2LMHeadModel``): learned positions, LayerNorm, plain GELU MLP, Conv1D weights.

docs/trtllm-checkpoint.md §3.3: every HF linear is a Conv1D stored ``[in, out]`` and is written
transposed; ``c_attn`` is already ``[q; k; v]``; the head is tied to ``wte``.
TensorRT-LLM's name for the architecture is ``GPTForCausalLM``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from trtllm_forge.models import gpt_common, tables
from trtllm_forge.models.base import Fusion, TensorPlan, TensorRule, model_dims, text_config

CONVERTER_VERSION = 1

# (TRT-LLM module inside a layer, HF module inside transformer.h.{i}, Conv1D?)
_LAYER_MODULES: tuple[tuple[str, str, bool], ...] = (
    ("input_layernorm", "ln_1", False),
    ("attention.qkv", "attn.c_attn", True),
    ("attention.dense", "attn.c_proj", True),
    ("post_layernorm", "ln_2", False),
    ("mlp.fc", "mlp.c_fc", True),
    ("mlp.proj", "mlp.c_proj", True),
)
# Causal-mask buffers some transformers versions saved with the weights.
_IGNORED = (re.compile(r"transformer\.h\.\d+\.attn\.(masked_)?bias"),)


class Gpt2Family(gpt_common.GptStyleFamily):
    name = "gpt2"
    architectures = ("GPT2LMHeadModel",)
    version = str(CONVERTER_VERSION)

    def validate(self, hf_config: Mapping[str, Any]) -> None:
        super().validate(hf_config)
        cfg = text_config(hf_config)
        gpt_common.activation(cfg, "activation_function", default="gelu_new")
        if cfg.get("scale_attn_by_inverse_layer_idx") or cfg.get("reorder_and_upcast_attn"):
            raise gpt_common.unsupported(
                "scale_attn_by_inverse_layer_idx / reorder_and_upcast_attn"
            )
        if cfg.get("scale_attn_weights") is False:
            raise gpt_common.unsupported("scale_attn_weights = false")
        if cfg.get("add_cross_attention"):
            raise gpt_common.unsupported("cross attention")

    def trtllm_config(self, hf_config: Mapping[str, Any], *, dtype: str) -> dict[str, Any]:
        self.validate(hf_config)
        cfg = text_config(hf_config)
        config = gpt_common.base_config(
            hf_config,
            family=self.name,
            trt_architecture="GPTForCausalLM",
            dtype=dtype,
            converter_version=CONVERTER_VERSION,
            hidden_act=gpt_common.activation(cfg, "activation_function", default="gelu_new"),
            norm_epsilon=float(cfg.get("layer_norm_epsilon", 1e-5)),
            position_embedding_type="learned_absolute",
            norm_type="layernorm",
            mlp_type="plain",
            parallel_residual=False,
            tied=bool(cfg.get("tie_word_embeddings", True)),
        )
        config.update({"bias": True, "gpt_variant": "gpt2", "attn_bias": True, "mlp_bias": True})
        return config

    def tensor_plan(self, hf_config: Mapping[str, Any]) -> TensorPlan:
        cfg = text_config(hf_config)
        tied = bool(cfg.get("tie_word_embeddings", True))
        rules = [
            *tables.embedding_rules("transformer.wte.weight", tied=tied),
            TensorRule("transformer.position_embedding.weight", ("transformer.wpe.weight",)),
            *tables.module_rules("transformer.", "transformer.", [("ln_f", "ln_f")]),
        ]
        layers = model_dims(cfg)["num_hidden_layers"]
        for dst, src in tables.layer_prefixes("transformer.h", layers):
            for trt_module, hf_module, conv1d in _LAYER_MODULES:
                fusion: Fusion = "transpose" if conv1d else "identity"
                weight = (f"{src}{hf_module}.weight",)
                rules.append(TensorRule(f"{dst}{trt_module}.weight", weight, fusion))
                rules.append(TensorRule(f"{dst}{trt_module}.bias", (f"{src}{hf_module}.bias",)))
        ignored = tables.ignore_tied_head(_IGNORED, tied=tied)
        return TensorPlan(rules=tuple(rules), ignored=ignored)
