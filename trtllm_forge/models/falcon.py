"""Falcon (``FalconForCausalLM``): LayerNorm, plain GELU MLP, rotary, fused grouped QKV.

Two decoder generations share the HF class (docs/trtllm-checkpoint.md §1 Falcon extras, §3.2):

* old (Falcon-7B/-RW): one ``input_layernorm``; ``parallel_attn`` runs attention and
  MLP on that same normed input (``h + attn(ln(h)) + mlp(ln(h))``), otherwise the
  layer is sequential with a ``post_attention_layernorm``. ``multi_query`` means
  one KV head (MQA); without it the fused QKV rows are ``[heads, 3, d]``.
* new (``new_decoder_architecture``, Falcon-40B/180B): GQA with ``num_kv_heads``,
  the fused QKV grouped per KV head ``[kv, heads/kv + 2, d]``, and two norms
  (``ln_attn`` → ``input_layernorm``, ``ln_mlp`` → ``mlp_layernorm``, TRT-LLM's names).

Every layout is re-ordered to contiguous q, k, v rows at conversion. Falcon-RW's
ALiBi variant is refused: it scales the bias with the scores, which no forge
lowering implements.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from trtllm_forge.models import gpt_common, tables
from trtllm_forge.models.base import TensorPlan, TensorRule, text_config
from trtllm_forge.models.llama import rope_settings

CONVERTER_VERSION = 1

_IGNORED = (re.compile(r"transformer\.h\.\d+\.self_attention\.rotary_emb\.inv_freq"),)


def kv_heads(hf_config: Mapping[str, Any]) -> int:
    """KV heads as the HF model computes them (old MQA: 1; old MHA: all heads)."""
    cfg = text_config(hf_config)
    heads = int(cfg["num_attention_heads"])
    if cfg.get("new_decoder_architecture"):
        return int(cfg.get("num_kv_heads") or heads)
    return 1 if cfg.get("multi_query", True) else heads


def _parallel(cfg: Mapping[str, Any]) -> bool:
    return bool(cfg.get("new_decoder_architecture") or cfg.get("parallel_attn", True))


def _two_norms(cfg: Mapping[str, Any]) -> bool:
    """New decoder with separate attention / MLP norms (``num_ln_in_parallel_attn`` 2, the default)."""
    return bool(cfg.get("new_decoder_architecture")) and cfg.get("num_ln_in_parallel_attn") in (
        None,
        2,
    )


class FalconFamily(gpt_common.GptStyleFamily):
    name = "falcon"
    architectures = ("FalconForCausalLM",)
    version = str(CONVERTER_VERSION)

    def mlp_input_norm(self, hf_config: Mapping[str, Any]) -> str | None:
        cfg = text_config(hf_config)
        if _two_norms(cfg):
            return "mlp_layernorm"
        return None if _parallel(cfg) else "post_layernorm"

    def validate(self, hf_config: Mapping[str, Any]) -> None:
        super().validate(hf_config)
        cfg = text_config(hf_config)
        gpt_common.activation(cfg, "activation", default="gelu")
        if cfg.get("alibi"):
            raise gpt_common.unsupported(
                "Falcon with alibi (Falcon-RW scales ALiBi with the scores)"
            )
        if cfg.get("new_decoder_architecture") and cfg.get("parallel_attn") is False:
            raise gpt_common.unsupported("new_decoder_architecture without parallel_attn")
        if cfg.get("num_ln_in_parallel_attn") not in (None, 1, 2):
            raise gpt_common.unsupported(
                f"num_ln_in_parallel_attn {cfg.get('num_ln_in_parallel_attn')!r}"
            )
        heads = int(cfg["num_attention_heads"])
        if heads % kv_heads(cfg):
            raise gpt_common.unsupported(
                f"{heads} heads not a multiple of {kv_heads(cfg)} KV heads"
            )
        rope_settings(cfg)

    def trtllm_config(self, hf_config: Mapping[str, Any], *, dtype: str) -> dict[str, Any]:
        self.validate(hf_config)
        # The KV head count follows Falcon's own rule (old MQA: 1 whatever num_kv_heads says).
        cfg = {
            **text_config(hf_config),
            "num_key_value_heads": kv_heads(hf_config),
            "architectures": hf_config.get("architectures") or ["FalconForCausalLM"],
        }
        theta, scaling = rope_settings(cfg)
        bias = bool(cfg.get("bias", False))
        config = gpt_common.base_config(
            cfg,
            family=self.name,
            trt_architecture="FalconForCausalLM",
            dtype=dtype,
            converter_version=CONVERTER_VERSION,
            hidden_act=gpt_common.activation(cfg, "activation", default="gelu"),
            norm_epsilon=float(cfg.get("layer_norm_epsilon", 1e-5)),
            position_embedding_type="rope_gpt_neox",
            norm_type="layernorm",
            mlp_type="plain",
            parallel_residual=_parallel(cfg),
            tied=bool(cfg.get("tie_word_embeddings", True)),
        )
        config.update(
            {
                "rotary_base": theta,
                "rotary_scaling": scaling,
                "bias": bias,
                "attn_bias": bias,
                "mlp_bias": bias,
                "new_decoder_architecture": bool(cfg.get("new_decoder_architecture", False)),
                "parallel_attention": _parallel(cfg),
            }
        )
        return config

    def tensor_plan(self, hf_config: Mapping[str, Any]) -> TensorPlan:
        cfg = text_config(hf_config)
        tied = bool(cfg.get("tie_word_embeddings", True))
        rules = [
            *tables.embedding_rules("transformer.word_embeddings.weight", tied=tied),
            *tables.module_rules("transformer.", "transformer.", [("ln_f", "ln_f")]),
        ]
        layers = int(cfg["num_hidden_layers"])
        for dst, src in tables.layer_prefixes("transformer.h", layers):
            rules.extend(_layer_rules(cfg, dst, src))
        ignored = tables.ignore_tied_head(_IGNORED, tied=tied)
        return TensorPlan(rules=tuple(rules), ignored=ignored)


def _norm_table(cfg: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """(TRT-LLM norm, HF norm) of one layer."""
    if _two_norms(cfg):
        return (("input_layernorm", "ln_attn"), ("mlp_layernorm", "ln_mlp"))
    if _parallel(cfg):
        return (("input_layernorm", "input_layernorm"),)
    return (
        ("input_layernorm", "input_layernorm"),
        ("post_layernorm", "post_attention_layernorm"),
    )


_LINEARS: tuple[tuple[str, str], ...] = (
    ("attention.dense", "self_attention.dense"),
    ("mlp.fc", "mlp.dense_h_to_4h"),
    ("mlp.proj", "mlp.dense_4h_to_h"),
)


def _layer_rules(cfg: Mapping[str, Any], dst: str, src: str) -> list[TensorRule]:
    heads = int(cfg["num_attention_heads"])
    qkv = f"{src}self_attention.query_key_value"
    # ``bias`` covers the linears only; the LayerNorms always have biases.
    params = ("weight", "bias") if cfg.get("bias") else ("weight",)
    rules = [
        TensorRule(
            f"{dst}attention.qkv.{p}",
            (f"{qkv}.{p}",),
            "qkv_grouped",
            heads=heads,
            kv_heads=kv_heads(cfg),
        )
        for p in params
    ]
    rules.extend(tables.module_rules(dst, src, _LINEARS, params))
    rules.extend(tables.module_rules(dst, src, _norm_table(cfg)))
    return rules
