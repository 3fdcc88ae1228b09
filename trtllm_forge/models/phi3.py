"""Phi-3 / Phi-3.5 / Phi-4 (``Phi3ForCausalLM``): the Llama decoder with fused linears.

* ``self_attn.qkv_proj`` is one linear whose rows are already ``[q; k; v]`` (q:
  ``heads · head_dim`` rows, k and v: ``kv_heads · head_dim`` each), which is
  TensorRT-LLM's ``attention.qkv`` as is.
* ``mlp.gate_up_proj`` rows are ``[gate; up]``; the converter splits them into
  ``mlp.fc`` (the SiLU-activated gate half, docs/trtllm-checkpoint.md §3.1) and ``mlp.gate`` (the up
  half) with ``row_block`` rules, and quantization slices its calibrated rows the same
  way (``LinearTarget.row_order``).
* Partial rotary (Phi-4-mini: ``partial_rotary_factor`` 0.75) rotates the first
  ``rotary_embedding_dim`` channels of each head, as for GPT-NeoX.
* ``sliding_window``, when set, applies to every layer (as Mistral's).
* LongRoPE (Phi-3-128k, Phi-3.5, Phi-4-mini: ``rope_type`` ``longrope``, or ``su`` /
  ``yarn``, the older Phi-3 names transformers' ``Phi3Config`` maps to it) divides each
  rotary frequency by a per-dimension factor, ``short_factor`` while a sequence is at most
  ``original_max_position_embeddings`` tokens long and ``long_factor`` beyond, and scales
  cos and sin by an attention factor. It is written as ``rotary_scaling`` type
  ``longrope`` holding both factor lists, that length, and the attention factor computed
  here as transformers computes it (docs/models.md gives the formula, and which length
  picks the factors).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from trtllm_forge.errors import recipe_error
from trtllm_forge.models import gpt_common, tables
from trtllm_forge.models.base import TensorPlan, TensorRule, model_dims, text_config
from trtllm_forge.models.llama import rope_settings

CONVERTER_VERSION = 1

_LAYER_MODULES: tuple[tuple[str, str], ...] = (
    ("attention.qkv", "self_attn.qkv_proj"),
    ("attention.dense", "self_attn.o_proj"),
    ("mlp.proj", "mlp.down_proj"),
    ("input_layernorm", "input_layernorm"),
    ("post_layernorm", "post_attention_layernorm"),
)
# (TRT-LLM module, block of HF gate_up_proj's rows): gate first, then up.
_GATE_UP_BLOCKS: tuple[tuple[str, int], ...] = (("mlp.fc", 0), ("mlp.gate", 1))
_IGNORED = (re.compile(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq"),)
# Phi-3 configs name longrope by its older names too (transformers maps them).
_LONGROPE = ("longrope", "su", "yarn")
# transformers' Phi3Config defaults for keys a config.json may leave out.
_PHI3_ORIGINAL_MAX = 4096
_PHI3_MAX_POSITIONS = 4096


def rotary_factor(hf_config: Mapping[str, Any]) -> float:
    """``partial_rotary_factor`` from ``rope_parameters`` (transformers 5) or the top level."""
    cfg = text_config(hf_config)
    params = cfg.get("rope_parameters") or {}
    value = params.get("partial_rotary_factor", cfg.get("partial_rotary_factor"))
    return 1.0 if value is None else float(value)


def _rope_dict(cfg: Mapping[str, Any]) -> Mapping[str, Any]:
    return cfg.get("rope_scaling") or cfg.get("rope_parameters") or {}


def is_longrope(cfg: Mapping[str, Any]) -> bool:
    scaling = _rope_dict(cfg)
    return scaling.get("rope_type", scaling.get("type", "default")) in _LONGROPE


def longrope_scaling(cfg: Mapping[str, Any], rotary_dim: int) -> dict[str, Any]:
    """The ``rotary_scaling`` of a LongRoPE config (exit 2 when its fields disagree).

    The pretraining length is the top-level ``original_max_position_embeddings`` (4096
    when absent), as ``Phi3Config`` gives it priority over the rope dict's; the attention
    factor is the config's, else ``sqrt(1 + ln f / ln original)`` with ``f`` the config's
    ``factor`` or ``max_position_embeddings / original`` (1 when ``f`` ≤ 1).
    """
    scaling = _rope_dict(cfg)
    factors = {}
    for key in ("short_factor", "long_factor"):
        values = scaling.get(key)
        if not isinstance(values, list) or len(values) != rotary_dim // 2:
            raise recipe_error(
                f"LongRoPE rope scaling needs {key} as a list of {rotary_dim // 2} numbers "
                f"(half the {rotary_dim} rotary channels), got {values!r}",
                hint="the config.json's rope scaling does not match its head size",
            )
        if not all(isinstance(v, (int, float)) and v > 0 for v in values):
            raise recipe_error(f"LongRoPE {key} must be positive numbers, got {values!r}")
        factors[key] = [float(v) for v in values]
    original = int(cfg.get("original_max_position_embeddings", _PHI3_ORIGINAL_MAX))
    if original <= 0:
        raise recipe_error(f"original_max_position_embeddings {original} must be positive")
    factor = scaling.get("factor")
    if factor is None:
        factor = int(cfg.get("max_position_embeddings", _PHI3_MAX_POSITIONS)) / original
    attention = scaling.get("attention_factor")
    if attention is None:
        attention = 1.0 if factor <= 1 else math.sqrt(1 + math.log(factor) / math.log(original))
    return {
        "type": "longrope",
        "rope_type": "longrope",
        **factors,
        "original_max_position_embeddings": original,
        "attention_factor": float(attention),
    }


class Phi3Family(gpt_common.GptStyleFamily):
    name = "phi3"
    architectures = ("Phi3ForCausalLM",)
    version = str(CONVERTER_VERSION)

    def validate(self, hf_config: Mapping[str, Any]) -> None:
        super().validate(hf_config)
        cfg = text_config(hf_config)
        if is_longrope(cfg):
            longrope_scaling(cfg, self._rotary_dim(cfg))
        else:
            rope_settings(cfg)
        gpt_common.activation(cfg, "hidden_act", default="silu")
        dim = self._rotary_dim(cfg)
        if dim <= 0 or dim % 2:
            raise gpt_common.unsupported(f"rotary dimension {dim} (must be even and positive)")

    def _rotary_dim(self, cfg: Mapping[str, Any]) -> int:
        return int(model_dims(cfg)["head_size"] * rotary_factor(cfg))

    def _rope(self, cfg: Mapping[str, Any]) -> tuple[float, dict[str, Any] | None]:
        if not is_longrope(cfg):
            return rope_settings(cfg)
        params = cfg.get("rope_parameters") or {}
        theta = float(params.get("rope_theta", cfg.get("rope_theta", 10000.0)))
        return theta, longrope_scaling(cfg, self._rotary_dim(cfg))

    def trtllm_build_refusal(self, hf_config: Mapping[str, Any]) -> str | None:
        if is_longrope(text_config(hf_config)):
            return (
                "a LongRoPE Phi-3 checkpoint carries forge's rotary_scaling 'longrope' "
                "(both factor lists in one dict), which trtllm-build has not been tried on"
            )
        return None

    def trtllm_config(self, hf_config: Mapping[str, Any], *, dtype: str) -> dict[str, Any]:
        self.validate(hf_config)
        cfg = text_config(hf_config)
        theta, scaling = self._rope(cfg)
        config = gpt_common.base_config(
            hf_config,
            family=self.name,
            trt_architecture="Phi3ForCausalLM",
            dtype=dtype,
            converter_version=CONVERTER_VERSION,
            hidden_act=gpt_common.activation(cfg, "hidden_act", default="silu"),
            norm_epsilon=float(cfg.get("rms_norm_eps", 1e-5)),
            position_embedding_type="rope_gpt_neox",
            norm_type="rmsnorm",
            mlp_type="gated",
            parallel_residual=False,
            tied=bool(cfg.get("tie_word_embeddings", False)),
        )
        window = cfg.get("sliding_window")
        config.update(
            {
                "rotary_base": theta,
                "rotary_scaling": scaling,
                "rotary_embedding_dim": self._rotary_dim(cfg),
                "attn_bias": False,
                "mlp_bias": False,
            }
        )
        config["forge"]["sliding_window"] = int(window) if window else None
        return config

    def tensor_plan(self, hf_config: Mapping[str, Any]) -> TensorPlan:
        cfg = text_config(hf_config)
        tied = bool(cfg.get("tie_word_embeddings", False))
        rules = [
            *tables.embedding_rules("model.embed_tokens.weight", tied=tied),
            TensorRule("transformer.ln_f.weight", ("model.norm.weight",)),
        ]
        layers = model_dims(cfg)["num_hidden_layers"]
        for dst, src in tables.layer_prefixes("model.layers", layers):
            rules.extend(tables.module_rules(dst, src, _LAYER_MODULES, ("weight",)))
            fused = (f"{src}mlp.gate_up_proj.weight",)
            rules.extend(
                TensorRule(f"{dst}{module}.weight", fused, "row_block", block=block, blocks=2)
                for module, block in _GATE_UP_BLOCKS
            )
        ignored = tables.ignore_tied_head(_IGNORED, tied=tied)
        return TensorPlan(rules=tuple(rules), ignored=ignored)
