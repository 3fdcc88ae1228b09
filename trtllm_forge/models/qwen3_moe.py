"""Qwen3-MoE (``Qwen3MoeForCausalLM``, e.g. Qwen3-30B-A3B): Qwen3's attention (per-head
q/k RMSNorm, explicit ``head_dim``) with Mixtral's kind of MLP (``models/mixtral.py``).

Differences from Mixtral: HF names (``mlp.gate`` is the router, experts are
``mlp.experts.{e}.{gate,up,down}_proj``), the experts' size is ``moe_intermediate_size``
(written as the checkpoint's ``intermediate_size``, since every layer is sparse), and
the top-k weights are renormalized only when ``norm_topk_prob`` is true
(``normalization_mode`` 1, else 0). Layers with a dense MLP (``mlp_only_layers``,
``decoder_sparse_step`` > 1) are refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from trtllm_forge.models.base import TensorPlan, model_dims, text_config
from trtllm_forge.models.llama import _unsupported
from trtllm_forge.models.mixtral import (
    TRTLLM_LAYOUT_REFUSAL,
    expert_rules,
    moe_sizes,
)
from trtllm_forge.models.qwen3 import Qwen3Family

CONVERTER_VERSION = 1
# Hub configs say num_experts; transformers 5 saves num_local_experts.
_EXPERTS_KEYS = ("num_experts", "num_local_experts")

# (TRT-LLM linear inside mlp.experts.{e}, HF linear inside mlp.experts.{e})
_EXPERT_LINEARS: tuple[tuple[str, str], ...] = (
    ("fc", "gate_proj"),  # the SiLU-activated branch (reference §3.1)
    ("gate", "up_proj"),
    ("proj", "down_proj"),
)


class Qwen3MoeFamily(Qwen3Family):
    name = "qwen3_moe"
    architectures = ("Qwen3MoeForCausalLM",)
    version = str(CONVERTER_VERSION)

    def validate(self, hf_config: Mapping[str, Any]) -> None:
        super().validate(hf_config)
        cfg = text_config(hf_config)
        moe_sizes(cfg, *_EXPERTS_KEYS)
        if cfg.get("mlp_only_layers") or int(cfg.get("decoder_sparse_step", 1)) != 1:
            raise _unsupported(
                "Qwen3-MoE layers with a dense MLP (mlp_only_layers, decoder_sparse_step)"
            )

    def trtllm_build_refusal(self, hf_config: Mapping[str, Any]) -> str | None:
        return TRTLLM_LAYOUT_REFUSAL

    def trtllm_config(self, hf_config: Mapping[str, Any], *, dtype: str) -> dict[str, Any]:
        config = super().trtllm_config(hf_config, dtype=dtype)
        cfg = text_config(hf_config)
        experts, top_k = moe_sizes(cfg, *_EXPERTS_KEYS)
        config["intermediate_size"] = int(cfg["moe_intermediate_size"])  # each expert's
        config["moe"] = {
            "num_experts": experts,
            "top_k": top_k,
            "normalization_mode": int(bool(cfg.get("norm_topk_prob", False))),
        }
        config["qwen_type"] = "qwen3_moe"
        config["forge"].update({"family": self.name, "converter_version": CONVERTER_VERSION})
        return config

    def tensor_plan(self, hf_config: Mapping[str, Any]) -> TensorPlan:
        cfg = text_config(hf_config)
        experts, _ = moe_sizes(cfg, *_EXPERTS_KEYS)
        layers = model_dims(cfg)["num_hidden_layers"]
        plan = super().tensor_plan(hf_config)
        return expert_rules(plan, layers, experts, "mlp", "gate", _EXPERT_LINEARS)
