"""Which Hugging Face linears read the same activation, and the norm that produces it.

A Hugging Face target stores q/k/v and gate/up as separate modules; its consumers
fuse them into one GEMM, so quantities living on the shared input (pre-quant
scale, static input range, a per-tensor weight range) must agree across a group.
The groups come from forge's target plan (the family table already says which HF
modules make ``attention.qkv`` and ``mlp.fc``/``mlp.gate``), never from a second
name map.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from trtllm_forge.models.base import TensorRule
from trtllm_forge.models.registry import family_for
from trtllm_forge.quant.targets import TargetPlan

_MLP_KINDS = ("mlp.fc", "mlp.gate")


@dataclass(frozen=True)
class LinearGroup:
    """Quantized HF linears reading one activation, in checkpoint order.

    Attributes:
        modules: HF module names (``model.layers.0.self_attn.q_proj`` ...).
        norm: the HF norm weight whose output is exactly that activation (a
            pre-quant scale can be folded into it), or None.
        norm_rule: the family's rule for that norm (``add_one``: Gemma's ``1 + w``).
    """

    modules: tuple[str, ...]
    norm: str | None = None
    norm_rule: TensorRule | None = None


def linear_groups(hf_config: Mapping[str, Any], plan: TargetPlan) -> list[LinearGroup]:
    """Every quantized HF linear in exactly one group."""
    family = family_for(hf_config)
    rules = {rule.target: rule for rule in family.tensor_plan(hf_config).rules}
    mlp_norm = family.mlp_input_norm(hf_config)
    by_layer: dict[int, dict[str, tuple[str, ...]]] = {}
    for target in plan.quantized:
        by_layer.setdefault(target.layer, {})[target.kind] = target.sources
    groups: list[LinearGroup] = []
    for layer in sorted(by_layer):
        kinds = by_layer[layer]
        attention = kinds.pop("attention.qkv", ())
        mlp = tuple(s for kind in _MLP_KINDS for s in kinds.pop(kind, ()))
        if mlp_norm is None:  # parallel block: one norm feeds attention and MLP
            attention, mlp = attention + mlp, ()
        for modules, norm in ((attention, "input_layernorm"), (mlp, mlp_norm)):
            if modules:
                rule = rules.get(f"transformer.layers.{layer}.{norm}.weight")
                groups.append(_group(modules, rule))
        groups.extend(LinearGroup(sources) for sources in kinds.values())
    return groups


def _group(modules: tuple[str, ...], rule: TensorRule | None) -> LinearGroup:
    if rule is None or rule.fusion not in ("identity", "add_one"):
        return LinearGroup(modules)
    return LinearGroup(modules, rule.sources[0].removesuffix(".weight"), rule)
