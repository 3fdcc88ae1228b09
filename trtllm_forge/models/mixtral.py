"""Mixtral (``MixtralForCausalLM``): the Llama decoder with a mixture-of-experts MLP.

Each layer's MLP is ``num_local_experts`` gated SiLU MLPs and a router (HF
``block_sparse_moe.gate``, ``[experts, hidden]``): a token's router logits go through a
softmax, the ``num_experts_per_tok`` largest probabilities are kept and rescaled to sum
to one, and the token's output is those experts' outputs weighted by them.
TensorRT-LLM's config block ``moe`` (``num_experts``, ``top_k``, ``normalization_mode``
1 = renormalize) describes it; forge stores expert ``e``'s linears as
``mlp.experts.{e}.{fc,gate,proj}`` (HF ``w1`` = gate branch, ``w3`` = up, ``w2`` =
down, reference §3.1's fc/gate naming) and the router as ``mlp.router``. TP splits each
expert's intermediate size like a dense MLP; the router is on every rank.

The portable lowering computes every expert for every token (unrouted experts weigh
zero), so an engine costs ``experts / top_k`` times the routed compute. transformers 5
loads the experts as fused 3-D parameters; calibration unfuses them into the per-expert
linears this table names (quant/moe.py). trtllm-build reads experts fused, so it is
refused at plan time (``trtllm_build_refusal``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from trtllm_forge.errors import recipe_error
from trtllm_forge.models.base import TensorPlan, TensorRule, model_dims, text_config
from trtllm_forge.models.llama import LlamaFamily

CONVERTER_VERSION = 1

# (TRT-LLM linear inside mlp.experts.{e}, HF linear inside block_sparse_moe.experts.{e})
_EXPERT_LINEARS: tuple[tuple[str, str], ...] = (("fc", "w1"), ("gate", "w3"), ("proj", "w2"))
_DENSE_MLP = re.compile(r"transformer\.layers\.\d+\.mlp\.")


def moe_sizes(hf_config: Mapping[str, Any], *experts_keys: str) -> tuple[int, int]:
    """``(experts, experts per token)``, refused when they contradict each other. The
    expert count is the first of ``experts_keys`` (default ``num_local_experts``) found."""
    cfg = text_config(hf_config)
    keys = experts_keys or ("num_local_experts",)
    experts_key = next((k for k in keys if cfg.get(k) is not None), keys[0])
    experts, top_k = int(cfg.get(experts_key, 8)), int(cfg.get("num_experts_per_tok", 2))
    if not 0 < top_k <= experts:
        raise recipe_error(
            f"invalid model config: num_experts_per_tok {top_k} must be between 1 and "
            f"{experts_key} {experts}",
            hint="check the model's config.json",
        )
    return experts, top_k


TRTLLM_LAYOUT_REFUSAL = (
    "trtllm-build cannot take forge's mixture-of-experts checkpoint: forge stores each "
    "expert's linears apart (mlp.experts.{e}.fc/gate/proj), TensorRT-LLM reads them fused "
    "([experts, 2·intermediate, hidden] mlp.fc)"
)


def expert_rules(
    plan: TensorPlan,
    layers: int,
    experts: int,
    block: str,
    router: str,
    linears: tuple[tuple[str, str], ...],
) -> TensorPlan:
    """``plan`` with each layer's dense MLP rows replaced by the router and the experts:
    HF ``model.layers.{i}.{block}.{router}`` and ``...{block}.experts.{e}.{hf}`` for each
    ``(TRT-LLM linear, HF linear)`` of ``linears``."""
    rules = [r for r in plan.rules if not _DENSE_MLP.match(r.target)]
    for i in range(layers):
        dst, src = f"transformer.layers.{i}.mlp.", f"model.layers.{i}.{block}."
        rules.append(TensorRule(f"{dst}router.weight", (f"{src}{router}.weight",)))
        rules.extend(
            TensorRule(f"{dst}experts.{e}.{trt}.weight", (f"{src}experts.{e}.{hf}.weight",))
            for e in range(experts)
            for trt, hf in linears
        )
    return TensorPlan(rules=tuple(rules), ignored=plan.ignored)


class MixtralFamily(LlamaFamily):
    name = "mixtral"
    architectures = ("MixtralForCausalLM",)
    version = str(CONVERTER_VERSION)

    def validate(self, hf_config: Mapping[str, Any]) -> None:
        super().validate(hf_config)
        moe_sizes(hf_config)

    def trtllm_build_refusal(self, hf_config: Mapping[str, Any]) -> str | None:
        return TRTLLM_LAYOUT_REFUSAL

    def trtllm_config(self, hf_config: Mapping[str, Any], *, dtype: str) -> dict[str, Any]:
        config = super().trtllm_config(hf_config, dtype=dtype)
        experts, top_k = moe_sizes(hf_config)
        config["moe"] = {"num_experts": experts, "top_k": top_k, "normalization_mode": 1}
        config["forge"].update({"family": self.name, "converter_version": CONVERTER_VERSION})
        return config

    def tensor_plan(self, hf_config: Mapping[str, Any]) -> TensorPlan:
        layers = model_dims(text_config(hf_config))["num_hidden_layers"]
        experts, _ = moe_sizes(hf_config)
        plan = super().tensor_plan(hf_config)
        return expert_rules(plan, layers, experts, "block_sparse_moe", "gate", _EXPERT_LINEARS)
