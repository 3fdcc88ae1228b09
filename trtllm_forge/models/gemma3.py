"""Gemma 3 text (``Gemma3ForCausalLM``, and the text decoder of a
``Gemma3ForConditionalGeneration`` checkpoint): Gemma 2's decoder plus three changes.

* q/k RMSNorm: each query and key head is normalized over its ``head_dim`` channels
  before rope (HF ``self_attn.q_norm`` / ``k_norm``), with Gemma's ``1 + w`` weights,
  so they are stored as ``1 + w`` like every other Gemma norm (``forge.qk_layernorm``).
* Two ropes: the layers ``layer_types`` marks ``sliding_attention`` (5 of every 6 by
  default) use the unscaled base ``rope_local_base_freq`` (10 000); the global layers
  use ``rope_theta`` (1 000 000) with the checkpoint's scaling (linear × 8 on the 4B+
  models). transformers 5 writes them as ``rope_parameters.sliding_attention`` /
  ``full_attention``; older configs as ``rope_local_base_freq`` + ``rope_theta`` +
  ``rope_scaling``. Forge writes TensorRT-LLM's ``rope_local_base_freq`` next to
  ``rotary_base`` / ``rotary_scaling``.
* No soft-capping by default (transformers' ``Gemma3TextConfig`` defaults are null).

Sandwich norms, ``query_pre_attn_scalar``, the embedding scale and the sliding-window
masks are Gemma 2's (``models/gemma2.py``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from trtllm_forge.models import gpt_common
from trtllm_forge.models.base import TensorPlan, TensorRule, model_dims, text_config
from trtllm_forge.models.gemma2 import SLIDING, Gemma2Family
from trtllm_forge.models.llama import rope_settings

CONVERTER_VERSION = 1

_QK_NORMS: tuple[tuple[str, str], ...] = (
    ("attention.q_layernorm.weight", "self_attn.q_norm.weight"),
    ("attention.k_layernorm.weight", "self_attn.k_norm.weight"),
)
_LOCAL_THETA, _GLOBAL_THETA = 10_000.0, 1_000_000.0  # transformers' Gemma3TextConfig defaults
_NO_CAP_BY_DEFAULT = ("attn_logit_softcapping", "final_logit_softcapping")
# Gemma3ForConditionalGeneration checkpoints (Hub files and transformers 5's save) keep
# the text decoder under this prefix, next to the vision tower and projector, which a
# text-only engine does not use.
_WRAPPED = "Gemma3ForConditionalGeneration"
_WRAPPED_TEXT_PREFIX = "language_model."
_WRAPPED_IGNORED = (
    re.compile(r"vision_tower\..+"),
    re.compile(r"multi_modal_projector\..+"),
    re.compile(r"language_model\.lm_head\.weight"),  # tied: the embedding is used
)


def gemma3_ropes(hf_config: Mapping[str, Any]) -> tuple[float, dict[str, Any] | None, float]:
    """``(global theta, global scaling or None, local theta)`` from either config form."""
    cfg = text_config(hf_config)
    params = cfg.get("rope_parameters") or {}
    if "full_attention" in params or "sliding_attention" in params:
        full = {"rope_theta": _GLOBAL_THETA, **(params.get("full_attention") or {})}
        local = {"rope_theta": _LOCAL_THETA, **(params.get("sliding_attention") or {})}
        if local.get("rope_type", "default") != "default":
            raise gpt_common.unsupported(f"Gemma 3 sliding-layer rope {local['rope_type']!r}")
        view = {
            "rope_parameters": full,
            "max_position_embeddings": cfg.get("max_position_embeddings"),
        }
        theta, scaling = rope_settings(view)
        return theta, scaling, float(local["rope_theta"])
    theta, scaling = rope_settings({"rope_theta": _GLOBAL_THETA, **cfg})
    return theta, scaling, float(cfg.get("rope_local_base_freq", _LOCAL_THETA))


def gemma3_sliding_layers(hf_config: Mapping[str, Any]) -> list[int]:
    """HF ``layer_types`` when present, else transformers' pattern: every
    ``sliding_window_pattern``-th layer (default 6) is global, the others slide."""
    cfg = text_config(hf_config)
    if cfg.get("layer_types") is not None:
        types = cfg["layer_types"]
        return [i for i, kind in enumerate(types) if kind == SLIDING]
    pattern = int(cfg.get("sliding_window_pattern", 6))
    layers = model_dims(cfg)["num_hidden_layers"]
    return [i for i in range(layers) if (i + 1) % pattern]


class Gemma3Family(Gemma2Family):
    name = "gemma3"
    architectures = ("Gemma3ForCausalLM", _WRAPPED)
    version = str(CONVERTER_VERSION)

    def validate(self, hf_config: Mapping[str, Any]) -> None:
        super().validate(hf_config)
        gemma3_ropes(hf_config)

    def quantization_refusal(self, hf_config: Mapping[str, Any]) -> str | None:
        if _WRAPPED not in (hf_config.get("architectures") or []):
            return None
        return (
            f"{_WRAPPED} checkpoints name their text linears language_model.model.* in the "
            "files but model.language_model.* in the model transformers loads, and forge's "
            "calibration does not map the two yet"
        )

    def trtllm_config(self, hf_config: Mapping[str, Any], *, dtype: str) -> dict[str, Any]:
        # The wrapper's text_config has no architectures of its own: keep the outer one.
        cfg = {**text_config(hf_config), "architectures": hf_config.get("architectures")}
        for key in _NO_CAP_BY_DEFAULT:  # absent means off for Gemma 3 (Gemma 2: 50 / 30)
            cfg.setdefault(key, None)
        config = super().trtllm_config(cfg, dtype=dtype)
        theta, scaling, local_theta = gemma3_ropes(cfg)
        config.update(
            {
                "architecture": "Gemma3ForCausalLM",
                "rotary_base": theta,
                "rotary_scaling": scaling,
                "rope_local_base_freq": local_theta,
            }
        )
        window = config["forge"]["sliding_window"]
        config["forge"].update(
            {
                "family": self.name,
                "converter_version": CONVERTER_VERSION,
                "qk_layernorm": True,
                "sliding_window_layers": gemma3_sliding_layers(cfg) if window else [],
            }
        )
        return config

    def tensor_plan(self, hf_config: Mapping[str, Any]) -> TensorPlan:
        plan = super().tensor_plan(hf_config)
        layers = model_dims(text_config(hf_config))["num_hidden_layers"]
        norms = [
            TensorRule(f"transformer.layers.{i}.{dst}", (f"model.layers.{i}.{src}",), "add_one")
            for i in range(layers)
            for dst, src in _QK_NORMS
        ]
        rules, ignored = (*plan.rules, *norms), plan.ignored
        if _WRAPPED in (hf_config.get("architectures") or []):
            rules = tuple(
                replace(r, sources=tuple(_WRAPPED_TEXT_PREFIX + s for s in r.sources))
                for r in rules
            )
            ignored = (*ignored, *_WRAPPED_IGNORED)
        return TensorPlan(rules=rules, ignored=ignored)
