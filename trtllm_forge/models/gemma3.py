"""Gemma 3 text (``Gemma3ForCausalLM``): Gemma 2's decoder plus three changes.

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

from collections.abc import Mapping
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
    architectures = ("Gemma3ForCausalLM",)
    version = str(CONVERTER_VERSION)

    def validate(self, hf_config: Mapping[str, Any]) -> None:
        super().validate(hf_config)
        gemma3_ropes(hf_config)

    def trtllm_config(self, hf_config: Mapping[str, Any], *, dtype: str) -> dict[str, Any]:
        cfg = dict(text_config(hf_config))
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
        return TensorPlan(rules=(*plan.rules, *norms), ignored=plan.ignored)
