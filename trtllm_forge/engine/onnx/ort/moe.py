"""Routed experts of the ort profile: one ONNX Runtime ``MoE`` node (com.microsoft) per layer.

What onnxruntime 1.31.1's CPU kernel does, per ContribOperators.md and as measured by
``tests/test_engine_ort_moe.py`` against the portable lowering and transformers:

* ``router_probs`` takes the router's logits; the kernel applies the softmax over all
  experts, keeps the top ``k`` and, with ``normalize_routing_weights=1``, rescales them to
  sum to one (Mixtral; Qwen2-MoE with ``norm_topk_prob``), else keeps the softmax values.
* The gated SiLU MLP of every forge family is ``activation_type=swiglu`` with
  ``activation_alpha=1``, ``activation_beta=0`` and no ``swiglu_limit``:
  ``G·sigmoid(G)·L`` = ``silu(fc(x))·gate(x)``.
* The CPU kernel has no third projection (``FC3 is not implemented for CPU MoE``) and
  reads the fused SwiGLU only interleaved (``swiglu_fusion=1``): ``fc1`` is
  ``[experts, 2·inter, hidden]`` with row ``2i`` the activated branch (forge ``mlp.fc``,
  HF ``w1``/``gate_proj``) and row ``2i+1`` the linear one (``mlp.gate``, HF
  ``w3``/``up_proj``); ``fc2`` is ``[experts, hidden, inter]`` (``mlp.proj``). Both are
  the checkpoint's ``[out, in]`` rows, stacked.

Only unquantized experts are lowered: quantized ones would need ``QMoE`` with forge's
per-method layouts (AWQ's pre-quant scale differs per expert, and one input feeds every
expert), which is not written; forge plan refuses them (ort/support.py).
"""

from __future__ import annotations

import torch
from onnx import TensorProto, helper

from trtllm_forge.engine.onnx.context import LoweringContext
from trtllm_forge.engine.onnx.linear import module_quant_algo
from trtllm_forge.engine.onnx.ort.matmul import MS_DOMAIN, OrtLinears, linear
from trtllm_forge.errors import recipe_error


def routed_experts(ctx: LoweringContext, x: str, prefix: str, linears: OrtLinears) -> str:
    """The weighted sum of the top-k experts' gated MLPs of ``x`` [batch, seq, hidden]."""
    g, model = ctx.graph, ctx.model
    experts = model.moe_num_experts
    logits = linear(ctx, f"{prefix}.router", x, model.hidden_size, experts, linears)
    # router_probs is [tokens, experts] even when the input is [batch, seq, hidden].
    logits = g.op("Reshape", [logits, g.i64(-1, experts)], f"{prefix}.router_rows")
    fc1, fc2 = _stacked_weights(ctx, prefix)
    out = g.fresh(f"{prefix}.experts.out")
    g.nodes.append(
        helper.make_node(
            "MoE",
            [x, logits, fc1, "", fc2],
            [out],
            name=g.fresh(f"{prefix}/MoE"),
            domain=MS_DOMAIN,
            k=model.moe_top_k,
            normalize_routing_weights=int(model.moe_renormalize),
            activation_type="swiglu",
            swiglu_fusion=1,
            activation_alpha=1.0,
            activation_beta=0.0,
        )
    )
    return out


def _stacked_weights(ctx: LoweringContext, prefix: str) -> tuple[str, str]:
    """``fc1`` (gate and up rows interleaved) and ``fc2`` of every expert, in the compute
    type (the experts' checkpoint tensors are all read, so none is left unused)."""
    model = ctx.model
    dtype = torch.float16 if ctx.compute_type == TensorProto.FLOAT16 else torch.float32
    fc1, fc2 = [], []
    for e in range(model.moe_num_experts):
        expert = f"{prefix}.experts.{e}"
        for module in ("fc", "gate", "proj"):
            if module_quant_algo(ctx, f"{expert}.{module}") is not None:
                raise recipe_error(
                    f"build.profile ort lowers unquantized experts only ({expert}.{module} "
                    f"is {ctx.model.quant_algo})",
                    hint="use build.profile: portable for quantized experts",
                )
        activated = ctx.weights.get(f"{expert}.fc.weight")
        up = ctx.weights.get(f"{expert}.gate.weight")
        fc1.append(torch.stack([activated, up], dim=1).reshape(-1, activated.shape[1]))
        fc2.append(ctx.weights.get(f"{expert}.proj.weight"))
    return (
        ctx.graph.weight(f"{prefix}.experts.fc1", torch.stack(fc1).to(dtype).contiguous()),
        ctx.graph.weight(f"{prefix}.experts.fc2", torch.stack(fc2).to(dtype).contiguous()),
    )
