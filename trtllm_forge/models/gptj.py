"""GPT-J (``GPTJForCausalLM``): one LayerNorm per layer feeding attention and MLP in
parallel, GPT-J-style (interleaved pairs) rope on the first ``rotary_dim`` channels,
separate q/k/v without biases, and an LM head with a bias.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from trtllm_forge.models import gpt_common, tables
from trtllm_forge.models.base import TensorPlan, TensorRule, model_dims, text_config

CONVERTER_VERSION = 1

# (TRT-LLM module inside a layer, HF module inside transformer.h.{i}): all have weights,
# only the LayerNorm and the MLP have biases (q/k/v and out_proj do not).
_BIASED_MODULES: tuple[tuple[str, str], ...] = (
    ("input_layernorm", "ln_1"),
    ("mlp.fc", "mlp.fc_in"),
    ("mlp.proj", "mlp.fc_out"),
)
_LAYER_MODULES = (*_BIASED_MODULES, ("attention.dense", "attn.out_proj"))
# Buffers (causal mask, sinusoid table) older transformers versions saved.
_IGNORED = (re.compile(r"transformer\.h\.\d+\.attn\.(masked_bias|bias|embed_positions)"),)


def rotary_dim(hf_config: Mapping[str, Any]) -> int:
    cfg = text_config(hf_config)
    return int(cfg.get("rotary_dim") or model_dims(cfg)["head_size"])


class GptjFamily(gpt_common.GptStyleFamily):
    name = "gptj"
    architectures = ("GPTJForCausalLM",)
    version = str(CONVERTER_VERSION)

    def validate(self, hf_config: Mapping[str, Any]) -> None:
        super().validate(hf_config)
        cfg = text_config(hf_config)
        gpt_common.activation(cfg, "activation_function", default="gelu_new")
        dim = rotary_dim(cfg)
        if dim <= 0 or dim % 2 or dim > model_dims(cfg)["head_size"]:
            raise gpt_common.unsupported(f"rotary_dim {dim} (must be even and <= head size)")

    def mlp_input_norm(self, hf_config: Mapping[str, Any]) -> str | None:
        return None  # parallel block: ln_1 feeds attention and MLP alike

    def trtllm_config(self, hf_config: Mapping[str, Any], *, dtype: str) -> dict[str, Any]:
        self.validate(hf_config)
        cfg = text_config(hf_config)
        config = gpt_common.base_config(
            hf_config,
            family=self.name,
            trt_architecture="GPTJForCausalLM",
            dtype=dtype,
            converter_version=CONVERTER_VERSION,
            hidden_act=gpt_common.activation(cfg, "activation_function", default="gelu_new"),
            norm_epsilon=float(cfg.get("layer_norm_epsilon", 1e-5)),
            position_embedding_type="rope_gptj",
            norm_type="layernorm",
            mlp_type="plain",
            parallel_residual=True,
            tied=bool(cfg.get("tie_word_embeddings", False)),
        )
        config.update(
            {
                "rotary_dim": rotary_dim(cfg),
                "rotary_embedding_dim": rotary_dim(cfg),
                "rotary_base": 10000.0,
                "rotary_scaling": None,
                "attn_bias": False,
                "mlp_bias": True,
            }
        )
        return config

    def tensor_plan(self, hf_config: Mapping[str, Any]) -> TensorPlan:
        cfg = text_config(hf_config)
        tied = bool(cfg.get("tie_word_embeddings", False))
        rules = [
            *tables.embedding_rules("transformer.wte.weight", tied=tied),
            TensorRule("lm_head.bias", ("lm_head.bias",)),  # GPT-J's head always has one
            *tables.module_rules("transformer.", "transformer.", [("ln_f", "ln_f")]),
        ]
        layers = model_dims(cfg)["num_hidden_layers"]
        for dst, src in tables.layer_prefixes("transformer.h", layers):
            rules.append(tables.split_qkv_rule(dst, f"{src}attn", "weight"))
            rules.extend(tables.module_rules(dst, src, _LAYER_MODULES, ("weight",)))
            rules.extend(tables.module_rules(dst, src, _BIASED_MODULES, ("bias",)))
        ignored = tables.ignore_tied_head(_IGNORED, tied=tied)
        return TensorPlan(rules=tuple(rules), ignored=ignored)
