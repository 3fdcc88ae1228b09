"""Qwen3 (``Qwen3ForCausalLM``): the Llama decoder plus a per-head RMSNorm of q and k.

* Each query head and each key head is RMS-normalized over its ``head_dim`` channels
  (HF ``self_attn.q_norm`` / ``k_norm``, one ``[head_dim]`` weight shared by all heads)
  after the projection and before rope. TensorRT-LLM's Qwen3 attention names these
  ``attention.q_layernorm`` / ``attention.k_layernorm``; forge flags them with the
  extra ``forge.qk_layernorm``, which the reference forward and the lowering read.
* ``head_dim`` is explicit (Qwen3-8B: 128 with hidden 4096 and 32 heads, but e.g.
  Qwen3-0.6B: 128 with hidden 1024 and 16 heads), so ``heads · head_dim`` need not be
  ``hidden_size``; the Llama table already sizes q/k/v/o from ``head_dim``.
* ``attention_bias`` puts a bias on q, k, v and o alike (Llama's rule, not Qwen2's).

Qwen3's optional sliding window (``use_sliding_window``) is refused, as for Qwen2.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from trtllm_forge.models.base import TensorPlan, TensorRule, model_dims, text_config
from trtllm_forge.models.llama import LlamaFamily, _unsupported

CONVERTER_VERSION = 1

# (TRT-LLM module inside a layer, HF module inside model.layers.{i}); weights only.
_QK_NORMS: tuple[tuple[str, str], ...] = (
    ("attention.q_layernorm.weight", "self_attn.q_norm.weight"),
    ("attention.k_layernorm.weight", "self_attn.k_norm.weight"),
)


class Qwen3Family(LlamaFamily):
    name = "qwen3"
    architectures = ("Qwen3ForCausalLM",)
    version = str(CONVERTER_VERSION)

    def validate(self, hf_config: Mapping[str, Any]) -> None:
        super().validate(hf_config)
        if text_config(hf_config).get("use_sliding_window"):
            raise _unsupported("Qwen3 use_sliding_window")

    def trtllm_config(self, hf_config: Mapping[str, Any], *, dtype: str) -> dict[str, Any]:
        config = super().trtllm_config(hf_config, dtype=dtype)
        config["qwen_type"] = "qwen3"  # TensorRT-LLM's switch for the q/k layer norms
        config["forge"].update(
            {"family": self.name, "converter_version": CONVERTER_VERSION, "qk_layernorm": True}
        )
        return config

    def tensor_plan(self, hf_config: Mapping[str, Any]) -> TensorPlan:
        plan = super().tensor_plan(hf_config)
        layers = model_dims(text_config(hf_config))["num_hidden_layers"]
        norms = [
            TensorRule(f"transformer.layers.{i}.{dst}", (f"model.layers.{i}.{src}",))
            for i in range(layers)
            for dst, src in _QK_NORMS
        ]
        return TensorPlan(rules=(*plan.rules, *norms), ignored=plan.ignored)
