"""Qwen2-MoE (``Qwen2MoeForCausalLM``, e.g. Qwen1.5-MoE-A2.7B, Qwen2-57B-A14B): Qwen2's
attention (q/k/v biases, ``qkv_bias``) with Mixtral's kind of MLP plus a shared expert.

Every token also goes through ``mlp.shared_expert`` (a gated SiLU MLP of
``shared_expert_intermediate_size``), scaled by ``sigmoid(x · g)`` with the ``[1, hidden]``
``mlp.shared_expert_gate``, and added to the routed experts' sum. The routed experts'
size is ``moe_intermediate_size``; ``norm_topk_prob`` picks the normalization as for
Qwen3-MoE. Layers with a dense MLP (``mlp_only_layers``, ``decoder_sparse_step`` > 1) and
``use_sliding_window`` are refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from trtllm_forge.models.base import TensorPlan, TensorRule, model_dims, text_config
from trtllm_forge.models.llama import LlamaFamily, _unsupported
from trtllm_forge.models.mixtral import (
    TRTLLM_LAYOUT_REFUSAL,
    expert_rules,
    moe_sizes,
)
from trtllm_forge.models.qwen3_moe import _EXPERT_LINEARS, _EXPERTS_KEYS

CONVERTER_VERSION = 1


class Qwen2MoeFamily(LlamaFamily):
    name = "qwen2_moe"
    architectures = ("Qwen2MoeForCausalLM",)
    version = str(CONVERTER_VERSION)

    def validate(self, hf_config: Mapping[str, Any]) -> None:
        super().validate(hf_config)
        cfg = text_config(hf_config)
        moe_sizes(cfg, *_EXPERTS_KEYS)
        if cfg.get("mlp_only_layers") or int(cfg.get("decoder_sparse_step", 1)) != 1:
            raise _unsupported(
                "Qwen2-MoE layers with a dense MLP (mlp_only_layers, decoder_sparse_step)"
            )
        if cfg.get("use_sliding_window"):
            raise _unsupported("Qwen2-MoE use_sliding_window")

    def trtllm_build_refusal(self, hf_config: Mapping[str, Any]) -> str | None:
        return TRTLLM_LAYOUT_REFUSAL

    def trtllm_config(self, hf_config: Mapping[str, Any], *, dtype: str) -> dict[str, Any]:
        config = super().trtllm_config(hf_config, dtype=dtype)
        cfg = text_config(hf_config)
        experts, top_k = moe_sizes(cfg, *_EXPERTS_KEYS)
        config["intermediate_size"] = int(cfg["moe_intermediate_size"])  # each routed expert's
        config["moe"] = {
            "num_experts": experts,
            "top_k": top_k,
            "normalization_mode": int(bool(cfg.get("norm_topk_prob", False))),
            "shared_expert_intermediate_size": int(cfg["shared_expert_intermediate_size"]),
        }
        config["qwen_type"] = "qwen2_moe"
        config["forge"].update({"family": self.name, "converter_version": CONVERTER_VERSION})
        return config

    def tensor_plan(self, hf_config: Mapping[str, Any]) -> TensorPlan:
        cfg = text_config(hf_config)
        experts, _ = moe_sizes(cfg, *_EXPERTS_KEYS)
        layers = model_dims(cfg)["num_hidden_layers"]
        plan = expert_rules(
            super().tensor_plan(hf_config), layers, experts, "mlp", "gate", _EXPERT_LINEARS
        )
        shared = [
            TensorRule(
                f"transformer.layers.{i}.mlp.{dst}.weight", (f"model.layers.{i}.mlp.{src}.weight",)
            )
            for i in range(layers)
            for dst, src in (
                ("shared_expert_gate", "shared_expert_gate"),
                *((f"shared_expert.{trt}", f"shared_expert.{hf}") for trt, hf in _EXPERT_LINEARS),
            )
        ]
        return TensorPlan(rules=(*plan.rules, *shared), ignored=plan.ignored)
