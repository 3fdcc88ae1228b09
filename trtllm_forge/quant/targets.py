"""Which linear layers get quantized, derived from the model family's tensor table.

The family table (``trtllm_forge.models``) already says how each TensorRT-LLM
weight is made from HF weights (``attention.qkv`` = rows of q/k/v). A
quantizable linear is a decoder-layer weight of a column- or row-parallel module
(``checkpoint.layout``), so no second name map exists here. The embedding always
stays in the checkpoint dtype; ``lm_head`` does too unless the method's
``quantize_lm_head`` asks for it (the ort profile's MatMulNBits head).

Nothing here imports torch: ``forge plan`` can check exclude patterns early.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from trtllm_forge.checkpoint.layout import parse_name
from trtllm_forge.errors import recipe_error
from trtllm_forge.models.base import Family, TensorRule
from trtllm_forge.models.registry import family_for

# Modules never quantized (TensorRT-LLM's own default exclusions for dense decoders),
# lm_head unless TargetPlan.quantize_head.
ALWAYS_EXCLUDED = ("lm_head", "transformer.vocab_embedding")
HEAD = "lm_head"  # TensorRT-LLM's and the HF model's name of the output projection
# Linears inside a layer no method quantizes (TensorRT-LLM's default exclusions too): a
# MoE router and Qwen2-MoE's shared-expert gate. exclude_modules names them explicitly.
UNQUANTIZED_LINEARS = ("mlp.router", "mlp.shared_expert_gate")

# TensorRT-LLM linears fed by the same activation inside a layer (GatedMLP: fc and gate
# both read the post-attention norm output). Formats whose scales or smoothing live
# on that shared input must agree across the group.
SHARED_INPUT_GROUPS: tuple[tuple[str, ...], ...] = (("mlp.fc", "mlp.gate"),)

# Every norm a layer may fold a column linear's smoothing into (the MLP's one is the
# family's: ``Family.mlp_input_norm``).
SMOOTHING_NORMS = (
    "input_layernorm",
    "post_layernorm",
    "mlp_layernorm",
    "pre_feedforward_layernorm",
)


@dataclass(frozen=True)
class LinearTarget:
    """A TensorRT-LLM linear module and the HF linear modules it is made of (in row order)."""

    module: str
    sources: tuple[str, ...]
    layer: int
    kind: str  # module name inside the layer, e.g. "attention.qkv"
    # The family's rule for the weight: a rule that reorders rows (GPT-NeoX fused QKV)
    # must reorder the quantized rows and per-channel ranges the same way.
    rule: TensorRule | None = None
    # The norm whose output is this linear's input and feeds nothing else, for formats
    # that fold smoothing into it; None for row-parallel layers and shared norms.
    input_norm: str | None = None

    def row_order(self, rows: int) -> list[int] | None:
        return None if self.rule is None else self.rule.row_order(rows)


@dataclass(frozen=True)
class TargetPlan:
    """Quantized and excluded linears for one model."""

    quantized: tuple[LinearTarget, ...]
    excluded: tuple[LinearTarget, ...]
    quantize_head: bool = False  # lm_head gets a round-to-nearest record too
    unquantized: tuple[str, ...] = ()  # UNQUANTIZED_LINEARS of this model, by module name

    def hf_modules(self) -> list[str]:
        return [name for target in self.quantized for name in target.sources]

    def exclude_modules(self) -> list[str]:
        """``quantization.exclude_modules`` for config.json (explicit names, no defaults)."""
        always = [m for m in ALWAYS_EXCLUDED if not (self.quantize_head and m == HEAD)]
        return [*always, *self.unquantized, *(t.module for t in self.excluded)]


def linear_targets(hf_config: Mapping[str, Any]) -> list[LinearTarget]:
    """Every quantizable linear of the model, in checkpoint order."""
    family = family_for(hf_config)
    plan = family.tensor_plan(hf_config)
    norms = _input_norms(family, hf_config)
    targets = []
    for rule in plan.rules:
        parsed = parse_name(rule.target)
        if parsed is None or parsed.layer is None or parsed.param != "weight":
            continue
        if parsed.parallel not in ("column", "row"):
            continue
        sources = tuple(s.removesuffix(".weight") for s in rule.sources)
        module = rule.target.removesuffix(".weight")
        norm = norms.get(parsed.module)
        targets.append(LinearTarget(module, sources, parsed.layer, parsed.module, rule, norm))
    return targets


def _input_norms(family: Family, hf_config: Mapping[str, Any]) -> dict[str, str]:
    """The norm feeding each column linear kind alone (see ``Family.mlp_input_norm``)."""
    mlp = family.mlp_input_norm(hf_config)
    if mlp is None:
        return {}  # one norm feeds attention and MLP: neither owns it
    return {"attention.qkv": "input_layernorm", "mlp.fc": mlp, "mlp.gate": mlp}


def linear_dims(hf_config: Mapping[str, Any]) -> dict[str, Any]:
    """The sizes checkpoint.layout.module_dims reads, from the converted config: a MoE
    family's experts are ``moe_intermediate_size`` wide (config.json's ``intermediate_size``
    is a dense MLP's) and Qwen2-MoE's shared expert has its own size."""
    return family_for(hf_config).trtllm_config(hf_config, dtype="float32")


def check_smoothing_fold(hf_config: Mapping[str, Any]) -> None:
    """Refuse a layout that folds smoothing into norms when the model's norms are shared."""
    family = family_for(hf_config)
    if family.mlp_input_norm(hf_config) is None:
        raise recipe_error(
            f"per-token SmoothQuant folds each linear's smoothing into the norm before it, but "
            f"in this {family.name} model one norm feeds both attention and MLP",
            hint="use activations: per_tensor (a pre-quant scale per linear), or fp8 / int8_wo",
        )
    for target in linear_targets(hf_config):  # MoE: one norm feeds router and every expert
        parsed = parse_name(f"{target.module}.weight")
        if parsed is not None and parsed.parallel == "column" and target.input_norm is None:
            raise recipe_error(
                f"per-token SmoothQuant folds each linear's smoothing into the norm before it, "
                f"but {target.module} ({target.sources[0]}) has no norm of its own",
                hint="use activations: per_tensor (a pre-quant scale per linear), or fp8 / int8_wo",
            )


def plan_targets(
    hf_config: Mapping[str, Any], exclude: Sequence[str], *, quantize_head: bool = False
) -> TargetPlan:
    """Split the linears by the recipe's ``exclude`` patterns.

    A pattern (fnmatch, case-sensitive) may name TensorRT-LLM modules
    (``transformer.layers.0.mlp.proj``, ``*attention.qkv``) or HF modules
    (``model.layers.0.mlp.down_proj``). Matching one HF part of a fused layer
    (say ``k_proj``) excludes the whole fused layer: one GEMM has one format.
    A pattern matching nothing is an error (most likely a typo). ``lm_head`` follows
    ``quantize_head``, not the patterns (the recipe's default ``exclude`` names it).
    """
    targets = linear_targets(hf_config)
    names = [*ALWAYS_EXCLUDED, "model.embed_tokens"]
    for t in targets:
        names.extend([t.module, *t.sources])
    for pattern in exclude:
        if not any(fnmatch.fnmatchcase(name, pattern) for name in names):
            raise recipe_error(
                f"quantize.exclude pattern {pattern!r} matches no module",
                hint=f"patterns match module names such as {targets[0].module if targets else 'lm_head'}"
                f" or {targets[0].sources[0] if targets else 'lm_head'}",
            )
    quantized: list[LinearTarget] = []
    excluded: list[LinearTarget] = []
    for t in targets:
        hit = any(fnmatch.fnmatchcase(n, p) for p in exclude for n in (t.module, *t.sources))
        (excluded if hit else quantized).append(t)
    return TargetPlan(tuple(quantized), tuple(excluded), quantize_head, _unquantized(hf_config))


def _unquantized(hf_config: Mapping[str, Any]) -> tuple[str, ...]:
    """The model's UNQUANTIZED_LINEARS, in checkpoint order."""
    found = []
    for rule in family_for(hf_config).tensor_plan(hf_config).rules:
        parsed = parse_name(rule.target)
        if parsed is not None and parsed.module in UNQUANTIZED_LINEARS:
            found.append(rule.target.removesuffix(".weight"))
    return tuple(found)
