"""GPT-NeoX (``GPTNeoXForCausalLM``, Pythia): LayerNorm, plain GELU MLP, partial rotary,
parallel residual, and a fused QKV grouped per head.

HF's ``query_key_value`` rows are ``[heads, (q|k|v), d]``; TensorRT-LLM wants
contiguous q, k, v blocks (docs/trtllm-checkpoint.md §3.2), so the weight and bias are re-ordered
(``qkv_interleaved``). Rope rotates the first ``rotary_pct · head_size`` channels,
GPT-NeoX style (halves).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from trtllm_forge.models import gpt_common, tables
from trtllm_forge.models.base import TensorPlan, model_dims, text_config
from trtllm_forge.models.llama import rope_settings

CONVERTER_VERSION = 1

# (TRT-LLM module inside a layer, HF module inside gpt_neox.layers.{i})
_LAYER_MODULES: tuple[tuple[str, str], ...] = (
    ("input_layernorm", "input_layernorm"),
    ("post_layernorm", "post_attention_layernorm"),
    ("mlp.fc", "mlp.dense_h_to_4h"),
    ("mlp.proj", "mlp.dense_4h_to_h"),
)
_HEAD = "embed_out.weight"  # GPT-NeoX's name for the untied LM head
# Buffers older transformers versions saved with the weights.
_IGNORED = (
    re.compile(r"gpt_neox\.layers\.\d+\.attention\.(masked_)?bias"),
    re.compile(r"gpt_neox\.layers\.\d+\.attention\.rotary_emb\.inv_freq"),
)


def rotary_pct(hf_config: Mapping[str, Any]) -> float:
    cfg = text_config(hf_config)
    params = cfg.get("rope_parameters") or {}
    # transformers 5 reads rope_parameters; older configs carry rotary_pct.
    for value in (params.get("partial_rotary_factor"), cfg.get("partial_rotary_factor")):
        if value is not None:
            return float(value)
    return float(cfg.get("rotary_pct", 1.0))


class GptNeoxFamily(gpt_common.GptStyleFamily):
    name = "gpt_neox"
    architectures = ("GPTNeoXForCausalLM",)
    version = str(CONVERTER_VERSION)

    def validate(self, hf_config: Mapping[str, Any]) -> None:
        super().validate(hf_config)
        cfg = text_config(hf_config)
        gpt_common.activation(cfg, "hidden_act", default="gelu")
        rope_settings(cfg)
        dim = int(model_dims(cfg)["head_size"] * rotary_pct(cfg))
        if dim <= 0 or dim % 2:
            raise gpt_common.unsupported(f"rotary dimension {dim} (must be even and positive)")

    def trtllm_config(self, hf_config: Mapping[str, Any], *, dtype: str) -> dict[str, Any]:
        self.validate(hf_config)
        cfg = text_config(hf_config)
        theta, scaling = rope_settings(cfg)
        bias = bool(cfg.get("attention_bias", True))
        config = gpt_common.base_config(
            hf_config,
            family=self.name,
            trt_architecture="GPTNeoXForCausalLM",
            dtype=dtype,
            converter_version=CONVERTER_VERSION,
            hidden_act=gpt_common.activation(cfg, "hidden_act", default="gelu"),
            norm_epsilon=float(cfg.get("layer_norm_eps", 1e-5)),
            position_embedding_type="rope_gpt_neox",
            norm_type="layernorm",
            mlp_type="plain",
            parallel_residual=bool(cfg.get("use_parallel_residual", True)),
            tied=bool(cfg.get("tie_word_embeddings", False)),
        )
        pct = rotary_pct(cfg)
        config.update(
            {
                "rotary_pct": pct,
                "rotary_embedding_dim": int(config["head_size"] * pct),
                "rotary_base": theta,
                "rotary_scaling": scaling,
                "bias": bias,
                "attn_bias": bias,
                "mlp_bias": True,
            }
        )
        return config

    def tensor_plan(self, hf_config: Mapping[str, Any]) -> TensorPlan:
        cfg = text_config(hf_config)
        dims = model_dims(cfg)
        tied = bool(cfg.get("tie_word_embeddings", False))
        bias = bool(cfg.get("attention_bias", True))
        rules = [
            *tables.embedding_rules("gpt_neox.embed_in.weight", tied=tied, head=_HEAD),
            *tables.module_rules("transformer.", "gpt_neox.", [("ln_f", "final_layer_norm")]),
        ]
        # attention_bias covers the attention linears only; norms and MLP always have biases.
        params = ("weight", "bias") if bias else ("weight",)
        heads = dims["num_attention_heads"]
        for dst, src in tables.layer_prefixes("gpt_neox.layers", dims["num_hidden_layers"]):
            qkv = f"{src}attention.query_key_value"
            rules.extend(tables.interleaved_qkv_rules(dst, qkv, heads, params))
            dense = [("attention.dense", "attention.dense")]
            rules.extend(tables.module_rules(dst, src, dense, params))
            rules.extend(tables.module_rules(dst, src, _LAYER_MODULES))
        ignored = tables.ignore_tied_head(_IGNORED, tied=tied, head=_HEAD)
        return TensorPlan(rules=tuple(rules), ignored=ignored)
