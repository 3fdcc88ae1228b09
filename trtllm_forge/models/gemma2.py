"""Gemma 2 (``Gemma2ForCausalLM``): Gemma plus four changes to the decoder.

* Sandwich norms: the attention output and the MLP output are each normalized before
  their residual add, and the MLP reads its own pre-norm. TensorRT-LLM keeps the name
  ``post_layernorm`` for HF ``post_attention_layernorm`` (now applied to the attention
  output) and adds ``pre_feedforward_layernorm`` / ``post_feedforward_layernorm``
  (``inter_layernorms: true``). All four are stored as ``1 + w``, like Gemma's.
* Soft-capping: ``cap · tanh(x / cap)`` on the attention scores before the mask
  (``attn_logit_softcapping``) and on the final logits (``final_logit_softcapping``).
* The attention scale is ``query_pre_attn_scalar ** -0.5``, not ``head_dim ** -0.5``.
* Local attention on the layers HF's ``layer_types`` marks ``sliding_attention`` (every
  other layer, starting with layer 0): a query sees the last ``sliding_window`` keys.
  TensorRT-LLM takes the window as a runtime setting, so forge writes it as extras:
  ``forge.sliding_window`` and ``forge.sliding_window_layers`` (global layer indices).

Everything else (scaled embedding, GeGLU, ``1 + w`` RMSNorm, rope) is Gemma's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from trtllm_forge.models import gpt_common
from trtllm_forge.models.base import TensorPlan, TensorRule, model_dims, text_config
from trtllm_forge.models.gemma import GemmaFamily, embedding_multiplier

CONVERTER_VERSION = 1

# Gemma's layer norms plus the two around the MLP (TRT-LLM name, HF name); all 1 + w.
_FEEDFORWARD_NORMS: tuple[tuple[str, str], ...] = (
    ("pre_feedforward_layernorm.weight", "pre_feedforward_layernorm.weight"),
    ("post_feedforward_layernorm.weight", "post_feedforward_layernorm.weight"),
)
SLIDING, FULL = "sliding_attention", "full_attention"
# transformers' Gemma2Config defaults, used when config.json omits a key (null in
# config.json means "off" and is kept).
_HF_DEFAULTS: dict[str, float | int] = {
    "query_pre_attn_scalar": 256,
    "attn_logit_softcapping": 50.0,
    "final_logit_softcapping": 30.0,
    "sliding_window": 4096,
}


def sliding_layers(hf_config: Mapping[str, Any]) -> list[int]:
    """Indices of the layers with local attention: HF ``layer_types`` when the config
    has it, else transformers' default for Gemma 2 (layers 0, 2, 4, ... slide)."""
    cfg = text_config(hf_config)
    layers = model_dims(cfg)["num_hidden_layers"]
    types = cfg.get("layer_types")
    if types is None:
        return list(range(0, layers, 2))
    if not isinstance(types, list) or len(types) != layers:
        raise gpt_common.unsupported(f"layer_types must list one entry per layer ({layers})")
    unknown = sorted({str(t) for t in types} - {SLIDING, FULL})
    if unknown:
        raise gpt_common.unsupported(f"Gemma 2 layer_types {', '.join(unknown)}")
    return [i for i, kind in enumerate(types) if kind == SLIDING]


def _setting(cfg: Mapping[str, Any], key: str) -> Any:
    return cfg[key] if key in cfg else _HF_DEFAULTS[key]


def _positive_or_none(cfg: Mapping[str, Any], key: str) -> float | None:
    value = _setting(cfg, key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise gpt_common.unsupported(f"{key} = {value!r} (must be a positive number or null)")
    return float(value)


class Gemma2Family(GemmaFamily):
    name = "gemma2"
    architectures: tuple[str, ...] = ("Gemma2ForCausalLM",)
    version = str(CONVERTER_VERSION)

    def validate(self, hf_config: Mapping[str, Any]) -> None:
        super().validate(hf_config)
        cfg = text_config(hf_config)
        for key in ("attn_logit_softcapping", "final_logit_softcapping", "sliding_window"):
            _positive_or_none(cfg, key)
        if _positive_or_none(cfg, "query_pre_attn_scalar") is None:
            raise gpt_common.unsupported("Gemma 2 query_pre_attn_scalar null")
        sliding_layers(cfg)

    def mlp_input_norm(self, hf_config: Mapping[str, Any]) -> str | None:
        # post_layernorm normalizes the attention output (sandwich norm), not the MLP input.
        return "pre_feedforward_layernorm"

    def trtllm_config(self, hf_config: Mapping[str, Any], *, dtype: str) -> dict[str, Any]:
        config = super().trtllm_config(hf_config, dtype=dtype)
        cfg = text_config(hf_config)
        window = _positive_or_none(cfg, "sliding_window")
        config.update(
            {
                "architecture": "Gemma2ForCausalLM",
                "embedding_multiplier": embedding_multiplier(config["hidden_size"], dtype),
                # TensorRT-LLM's Gemma 2 fields (Gemma2ConfigGroup) and its sandwich-norm flag.
                "query_pre_attn_scalar": _setting(cfg, "query_pre_attn_scalar"),  # int in HF
                "attn_logit_softcapping": _positive_or_none(cfg, "attn_logit_softcapping"),
                "final_logit_softcapping": _positive_or_none(cfg, "final_logit_softcapping"),
                "inter_layernorms": True,
            }
        )
        config["forge"].update(
            {
                "family": self.name,
                "converter_version": CONVERTER_VERSION,
                "sliding_window": None if window is None else int(window),
                "sliding_window_layers": sliding_layers(cfg) if window is not None else [],
            }
        )
        return config

    def tensor_plan(self, hf_config: Mapping[str, Any]) -> TensorPlan:
        plan = super().tensor_plan(hf_config)
        layers = model_dims(text_config(hf_config))["num_hidden_layers"]
        extra = [
            TensorRule(f"transformer.layers.{i}.{dst}", (f"model.layers.{i}.{src}",), "add_one")
            for i in range(layers)
            for dst, src in _FEEDFORWARD_NORMS
        ]
        return TensorPlan(rules=(*plan.rules, *extra), ignored=plan.ignored)
