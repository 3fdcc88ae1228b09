"""The Llama family: Llama, Mistral and Qwen2 (same decoder, different config flags).

TensorRT-LLM names follow docs/trtllm-checkpoint.md §3.1: ``mlp.fc`` is HF ``gate_proj`` (the
SiLU-activated branch) and ``mlp.gate`` is HF ``up_proj``; q/k/v are fused
into ``attention.qkv`` as rows ``[q; k; v]``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from trtllm_forge.errors import ExitCode, ForgeError
from trtllm_forge.models import tables
from trtllm_forge.models.base import (
    Family,
    TensorPlan,
    TensorRule,
    architecture,
    common_config,
    model_dims,
    text_config,
)

# Bumped whenever the produced checkpoint changes for the same input (part of stage keys).
CONVERTER_VERSION = 1

# (TRT-LLM suffix, HF suffix) for one decoder layer; {i} is the layer index.
_LAYER_TABLE: tuple[tuple[str, str], ...] = (
    ("input_layernorm.weight", "input_layernorm.weight"),
    ("post_layernorm.weight", "post_attention_layernorm.weight"),
    ("attention.dense.weight", "self_attn.o_proj.weight"),
    ("mlp.fc.weight", "mlp.gate_proj.weight"),
    ("mlp.gate.weight", "mlp.up_proj.weight"),
    ("mlp.proj.weight", "mlp.down_proj.weight"),
)
_MLP_BIAS_TABLE: tuple[tuple[str, str], ...] = (
    ("mlp.fc.bias", "mlp.gate_proj.bias"),
    ("mlp.gate.bias", "mlp.up_proj.bias"),
    ("mlp.proj.bias", "mlp.down_proj.bias"),
)

# HF tensors that carry no weights (buffers saved by old transformers versions).
_IGNORED = (re.compile(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq"),)

# rotary_scaling types forge's reference forward implements (forward.py) and
# TensorRT-LLM understands.
SUPPORTED_ROPE_TYPES = ("linear", "dynamic", "llama3")


def rope_settings(hf_config: Mapping[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """``(rope_theta, rope_scaling or None)`` from either HF config generation.

    transformers < 5 writes ``rope_theta`` + ``rope_scaling``; transformers 5 writes one
    ``rope_parameters`` dict holding both. A ``default`` type means no scaling.
    """
    cfg = text_config(hf_config)
    params = dict(cfg.get("rope_parameters") or {})
    scaling = dict(cfg.get("rope_scaling") or params)
    theta = float(params.get("rope_theta", cfg.get("rope_theta", 10000.0)))
    scaling.pop("rope_theta", None)
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    if rope_type == "default":
        return theta, None
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise ForgeError(
            ExitCode.SOURCE,
            f"rope scaling type {rope_type!r} is not supported",
            hint=f"supported rope scaling types: {', '.join(SUPPORTED_ROPE_TYPES)}",
        )
    # TensorRT-LLM reads "type" first and "rope_type" second; write both so old and new agree.
    scaling["rope_type"] = rope_type
    scaling["type"] = rope_type
    if rope_type == "llama3":
        scaling.setdefault("original_max_position_embeddings", cfg.get("max_position_embeddings"))
    return theta, scaling


class LlamaFamily(Family):
    name = "llama"
    architectures: tuple[str, ...] = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM")
    version = str(CONVERTER_VERSION)

    def validate(self, hf_config: Mapping[str, Any]) -> None:
        super().validate(hf_config)
        cfg = text_config(hf_config)
        if cfg.get("hidden_act", "silu") != "silu":
            raise _unsupported(f"hidden_act {cfg.get('hidden_act')!r} (only 'silu')")
        if cfg.get("partial_rotary_factor", 1.0) != 1.0:
            raise _unsupported("partial_rotary_factor != 1")
        if architecture(hf_config) == "Qwen2ForCausalLM" and cfg.get("use_sliding_window"):
            raise _unsupported("Qwen2 use_sliding_window")
        if cfg.get("quantization_config"):
            raise _unsupported("pre-quantized HF checkpoints (quantization_config)")
        rope_settings(cfg)

    def trtllm_config(self, hf_config: Mapping[str, Any], *, dtype: str) -> dict[str, Any]:
        self.validate(hf_config)
        cfg = text_config(hf_config)
        theta, scaling = rope_settings(cfg)
        arch = architecture(hf_config)
        qkv_bias, dense_bias = _attention_biases(hf_config)
        config = common_config(
            hf_config,
            family=self.name,
            trt_architecture=arch,  # TensorRT-LLM keeps the HF names for this family
            dtype=dtype,
            converter_version=CONVERTER_VERSION,
            hidden_act="silu",
            norm_epsilon=float(cfg.get("rms_norm_eps", 1e-6)),
            position_embedding_type="rope_gpt_neox",
            tied=bool(cfg.get("tie_word_embeddings", False)),
        )
        config.update(
            {
                "rotary_base": theta,
                "rotary_scaling": scaling,
                "attn_bias": qkv_bias,
                "mlp_bias": bool(cfg.get("mlp_bias", False)),
            }
        )
        config["forge"].update(
            {
                "qkv_bias": qkv_bias,
                "dense_bias": dense_bias,
                "sliding_window": _sliding_window(hf_config),
            }
        )
        if arch == "Qwen2ForCausalLM":
            config["qwen_type"] = "qwen2"
        return config

    def tensor_plan(self, hf_config: Mapping[str, Any]) -> TensorPlan:
        cfg = text_config(hf_config)
        layers = model_dims(cfg)["num_hidden_layers"]
        qkv_bias, dense_bias = _attention_biases(hf_config)
        tied = bool(cfg.get("tie_word_embeddings", False))
        rules = [
            *tables.embedding_rules("model.embed_tokens.weight", tied=tied),
            TensorRule("transformer.ln_f.weight", ("model.norm.weight",)),
        ]
        mlp_bias = bool(cfg.get("mlp_bias"))
        for dst, src in tables.layer_prefixes("model.layers", layers):
            rules.extend(_layer_rules(dst, src, qkv_bias, dense_bias, mlp_bias))
        ignored = tables.ignore_tied_head(_IGNORED, tied=tied)
        return TensorPlan(rules=tuple(rules), ignored=ignored)


def _layer_rules(
    dst: str, src: str, qkv_bias: bool, dense_bias: bool, mlp_bias: bool
) -> list[TensorRule]:
    rules = [tables.split_qkv_rule(dst, f"{src}self_attn", "weight")]
    if qkv_bias:
        rules.append(tables.split_qkv_rule(dst, f"{src}self_attn", "bias"))
    table = _LAYER_TABLE
    if dense_bias:
        table = (*table, ("attention.dense.bias", "self_attn.o_proj.bias"))
    if mlp_bias:
        table = (*table, *_MLP_BIAS_TABLE)
    rules.extend(TensorRule(dst + t, (src + s,)) for t, s in table)
    return rules


def _attention_biases(hf_config: Mapping[str, Any]) -> tuple[bool, bool]:
    """(q/k/v have bias, o_proj has bias). Qwen2 has the first by design, not the second."""
    if architecture(hf_config) == "Qwen2ForCausalLM":
        return True, False
    if architecture(hf_config) == "Qwen2MoeForCausalLM":  # its own switch, default on
        return bool(text_config(hf_config).get("qkv_bias", True)), False
    bias = bool(text_config(hf_config).get("attention_bias", False))
    return bias, bias


def _sliding_window(hf_config: Mapping[str, Any]) -> int | None:
    cfg = text_config(hf_config)
    if architecture(hf_config) != "MistralForCausalLM":
        return None
    window = cfg.get("sliding_window")
    return int(window) if window else None


def _unsupported(what: str) -> ForgeError:
    return ForgeError(
        ExitCode.SOURCE,
        f"unsupported model feature: {what}",
        hint="this variant of the Llama family is not supported by forge yet",
    )
