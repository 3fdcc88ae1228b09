"""Routed experts of the ort profile: one ONNX Runtime ``MoE`` or ``QMoE`` node per layer.

What onnxruntime 1.31.1's CPU kernels do (the operators' schemas, as
``onnxruntime.capi.onnxruntime_pybind11_state.get_all_operator_schema()`` lists them, and
``tests/test_engine_ort_moe.py``, which holds both against the portable lowering and
transformers; docs/engine.md has the table):

* ``router_probs`` ([tokens, experts], even for a [batch, seq, hidden] input) takes the
  router's logits; the kernel applies the softmax over all experts, keeps the top ``k``
  and, with ``normalize_routing_weights=1``, rescales them to sum to one (Mixtral;
  Qwen2-MoE / Qwen3-MoE with ``norm_topk_prob``). Without renormalization the node still
  renormalizes and the graph multiplies its output back (``_unnormalize``: the kernel's
  ``normalize_routing_weights=0`` path is wrong on a reused output buffer).
* The gated SiLU MLP of every forge family is ``activation_type=swiglu`` with
  ``activation_alpha=1``, ``activation_beta=0`` and no ``swiglu_limit``:
  ``G·sigmoid(G)·L`` = ``silu(fc(x))·gate(x)``.
* The CPU kernel has no third projection (``FC3 is not implemented for CPU MoE``) and
  reads the fused SwiGLU only interleaved (``swiglu_fusion=1``): ``fc1`` is
  ``[experts, 2·inter, hidden]`` with row ``2i`` the activated branch (forge ``mlp.fc``,
  HF ``w1``/``gate_proj``) and row ``2i+1`` the linear one (``mlp.gate``, HF
  ``w3``/``up_proj``); ``fc2`` is ``[experts, hidden, inter]`` (``mlp.proj``). Both are
  the checkpoint's ``[out, in]`` rows, stacked.

Quantized experts go to ``QMoE`` (``quant_type`` int) in forge's stored integers: rows
packed like MatMulNBits' (``matmul.pack_blocks``: offset by 2^(bits-1), the kernel's
default zero point, two int4 per byte low bits first), and

* ``W8A16`` (int8_wo): bits 8 without ``block_size``, one scale per output row (the
  kernel's column-wise mode; its block-wise 8-bit kernel quantizes activations to int8);
* ``W4A16_AWQ`` without pre-quant scales (int4_wo, gptq): bits 4, ``block_size`` = the
  group size, scales ``[experts, rows, in/group]``.

AWQ's experts are refused: each expert's pre-quant scale multiplies its own copy of the
input, and QMoE feeds every expert the one input it gets.
"""

from __future__ import annotations

from typing import Any

import torch
from onnx import TensorProto, helper

from trtllm_forge.engine.onnx.context import LoweringContext
from trtllm_forge.engine.onnx.linear import module_quant_algo
from trtllm_forge.engine.onnx.ort.matmul import MS_DOMAIN, OrtLinears, linear, pack_blocks
from trtllm_forge.errors import recipe_error
from trtllm_forge.quant import layout

_ROLES = ("fc", "gate", "proj")
QUANTIZED = ("W8A16", "W4A16_AWQ")


def routed_experts(ctx: LoweringContext, x: str, prefix: str, linears: OrtLinears) -> str:
    """The weighted sum of the top-k experts' gated MLPs of ``x`` [batch, seq, hidden]."""
    g, model = ctx.graph, ctx.model
    experts = model.moe_num_experts
    logits = linear(ctx, f"{prefix}.router", x, model.hidden_size, experts, linears)
    # router_probs is [tokens, experts] even when the input is [batch, seq, hidden].
    rows = g.op("Reshape", [logits, g.i64(-1, experts)], f"{prefix}.router_rows")
    algo = _experts_algo(ctx, prefix)
    attrs: dict[str, Any] = {
        "k": model.moe_top_k,
        "normalize_routing_weights": 1,  # always: see _unnormalize
        "activation_type": "swiglu",
        "swiglu_fusion": 1,
        "activation_alpha": 1.0,
        "activation_beta": 0.0,
    }
    if algo is None:
        fc1, fc2 = (_float_stack(ctx, prefix, roles) for roles in (("fc", "gate"), ("proj",)))
        op, inputs = "MoE", [x, rows, fc1, "", fc2]
    else:
        bits = 8 if algo == "W8A16" else 4
        (fc1, s1, block), (fc2, s2, _) = (
            _quantized_stack(ctx, prefix, roles, bits) for roles in (("fc", "gate"), ("proj",))
        )
        op, inputs = "QMoE", [x, rows, fc1, s1, "", fc2, s2]
        attrs |= {"expert_weight_bits": bits, "accuracy_level": linears.accuracy_level}
        if block:
            attrs["block_size"] = block
    out = g.fresh(f"{prefix}.experts.out")
    g.nodes.append(
        helper.make_node(
            op, inputs, [out], name=g.fresh(f"{prefix}/{op}"), domain=MS_DOMAIN, **attrs
        )
    )
    return out if model.moe_renormalize else _unnormalize(ctx, out, logits, prefix)


def _unnormalize(ctx: LoweringContext, out: str, logits: str, prefix: str) -> str:
    """Weights kept as the softmax gives them (Qwen-MoE without ``norm_topk_prob``): the
    renormalized sum times the top-k probabilities' total, ``Σ p_e·y_e = (Σ p_e) · Σ (p_e /
    Σ p_e)·y_e``. onnxruntime 1.31.1's CPU kernels with ``normalize_routing_weights=0``
    return wrong values when their output buffer held another tensor before (correct on a
    fresh buffer: tests/test_engine_ort_moe.py keeps a model where that happens), so the
    node always renormalizes and this undoes it."""
    g, model = ctx.graph, ctx.model
    probs = g.op("Softmax", [logits], f"{prefix}.router_probs", axis=-1)
    top, _ = g.op_n(
        "TopK",
        [probs, g.i64(model.moe_top_k)],
        [f"{prefix}.top_probs", f"{prefix}.top_experts"],
        axis=-1,
    )
    total = g.op("ReduceSum", [top, g.i64(-1)], f"{prefix}.top_total", keepdims=1)
    return g.op("Mul", [out, total], f"{prefix}.experts.unnormalized")


def _experts_algo(ctx: LoweringContext, prefix: str) -> str | None:
    """The one quant_algo every expert linear of the layer is stored with."""
    algos = {
        module_quant_algo(ctx, f"{prefix}.experts.{e}.{role}")
        for e in range(ctx.model.moe_num_experts)
        for role in _ROLES
    }
    algo = algos.pop() if len(algos) == 1 else "mixed"
    if algo is not None and algo not in QUANTIZED:
        raise recipe_error(
            f"build.profile ort lowers experts unquantized, int8_wo, int4_wo or gptq; "
            f"{prefix}'s experts are {algo}",
            hint="use build.profile: portable for these experts",
        )
    return algo


def _compute_dtype(ctx: LoweringContext) -> torch.dtype:
    return torch.float16 if ctx.compute_type == TensorProto.FLOAT16 else torch.float32


def _interleave(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Row ``i`` of each tensor in turn (fc1's gate/up rows); one tensor as it is."""
    if len(tensors) == 1:
        return tensors[0]
    return torch.stack(tensors, dim=1).reshape(-1, *tensors[0].shape[1:])


def _float_stack(ctx: LoweringContext, prefix: str, roles: tuple[str, ...]) -> str:
    """``[experts, rows, in]`` of the roles' weights, in the compute type."""
    rows = [
        _interleave([ctx.weights.get(f"{prefix}.experts.{e}.{role}.weight") for role in roles])
        for e in range(ctx.model.moe_num_experts)
    ]
    name = f"{prefix}.experts.{'fc1' if len(roles) > 1 else 'fc2'}"
    return ctx.graph.weight(name, torch.stack(rows).to(_compute_dtype(ctx)).contiguous())


def _quantized_stack(
    ctx: LoweringContext, prefix: str, roles: tuple[str, ...], bits: int
) -> tuple[str, str, int]:
    """(packed weights [experts, rows, in·bits/8], scales, block size or 0 for per-row)."""
    weights, scales = [], []
    for e in range(ctx.model.moe_num_experts):
        pairs = [_expert_integers(ctx, f"{prefix}.experts.{e}.{role}", bits) for role in roles]
        values = _interleave([v for v, _ in pairs])
        weights.append(pack_blocks(values, bits, values.shape[1]).reshape(values.shape[0], -1))
        scales.append(_interleave([s for _, s in pairs]))
    block = 0 if bits == 8 else int(values.shape[1] // scales[-1].shape[1])
    if block and (block < 16 or block & (block - 1)):
        raise recipe_error(
            f"ORT's QMoE takes int4 groups of a power of two ≥ 16, not {block}",
            hint="quantize with quantize.group_size 32, 64 or 128, or use build.profile: portable",
        )
    name = f"{prefix}.experts.{'fc1' if len(roles) > 1 else 'fc2'}"
    g = ctx.graph
    packed = g.weight(f"{name}.weight_nbits", torch.stack(weights).contiguous())
    scale = g.weight(f"{name}.scales", torch.stack(scales).to(_compute_dtype(ctx)).contiguous())
    return packed, scale, block


def _expert_integers(ctx: LoweringContext, module: str, bits: int) -> tuple[torch.Tensor, ...]:
    """(signed integers [out, in], float32 scales [out] or [out, groups]) of one linear."""
    if ctx.weights.has(f"{module}.prequant_scaling_factor"):
        raise recipe_error(
            f"build.profile ort cannot lower AWQ experts ({module} has a pre-quant scale): "
            "QMoE feeds every expert the same input",
            hint="use quantize.method int4_wo or gptq, or build.profile: portable",
        )
    stored = ctx.weights.get(f"{module}.weight")
    values = stored if bits == 8 else layout.unpack_int4_rows(stored)
    scales = ctx.weights.get(f"{module}.weights_scaling_factor").float()
    return values, scales.reshape(-1) if bits == 8 else scales
