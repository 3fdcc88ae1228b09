"""The Llama-family decoder (Llama, Mistral, Qwen2; Qwen3 with its q/k norms; Mixtral,
Qwen2-MoE and Qwen3-MoE, whose MLP is routed experts) in ONNX Runtime's contrib operators.

Graph contract (docs/engine.md, "The ort profile"): inputs ``input_ids`` [batch, seq],
``attention_mask`` [batch, total_seq] and ``past_key_values.{l}.key/value`` [batch,
kv_heads, past_seq, head]; outputs ``logits`` [batch, seq, vocab] and ``present.{l}.*``.
No ``position_ids``: GroupQueryAttention rotates q and k itself, at the positions its
``seqlens_k`` says, so a row's tokens must sit at the start of the row (right padding)
and ``attention_mask`` only counts them: row b has ``sum(mask[b])`` real tokens, the
new ones last. onnxruntime-genai feeds exactly this (its builder's GQA models do too).

Per layer::

    x, residual = SkipSimplifiedLayerNormalization(mlp_out, residual, ln)   (layer 0: SLN)
    qkv = linear(x) [+ bias]                 packed q|k|v, as the checkpoint fuses them
                                             (Qwen3: split, q and k RMS-normalized per head)
    attn, present.k, present.v = GroupQueryAttention(qkv, past.k, past.v, seqlens_k,
                                                     total_seq, cos, sin; do_rotary)
    x, residual = SkipSimplifiedLayerNormalization(dense(attn), residual, post_ln)
    mlp_out = proj(silu(fc(x)) · gate(x))    or MoE(x, router(x)) [+ shared expert] (moe.py)

When ``past`` and ``present`` are bound to one buffer of ``max_seq_len`` slots
(onnxruntime-genai's ``past_present_share_buffer``; forge's runtime does the same)
the kernel writes the new keys in place; otherwise ``present`` = past ++ new.
"""

from __future__ import annotations

import numpy as np
import torch
from onnx import TensorProto, helper

from trtllm_forge.engine.onnx.context import LoweringContext
from trtllm_forge.engine.onnx.names import (
    ATTENTION_MASK,
    INPUT_IDS,
    LOGITS,
    past_name,
    present_name,
)
from trtllm_forge.engine.onnx.ort.matmul import (
    MS_DOMAIN,
    OrtLinears,
    linear,
    prequant_scale,
    tied_embedding,
)
from trtllm_forge.engine.onnx.ort.moe import routed_experts
from trtllm_forge.engine.onnx.rope import rope_frequencies
from trtllm_forge.engine.spec import heads_per_rank
from trtllm_forge.errors import source_error

INT64 = TensorProto.INT64
INT32 = TensorProto.INT32


def build_ort_decoder(ctx: LoweringContext, max_positions: int, linears: OrtLinears) -> None:
    """Add the whole single-rank graph to ``ctx.graph`` (``max_positions``: rope table rows)."""
    g, model = ctx.graph, ctx.model
    compute = ctx.compute_type
    _, kv_heads = heads_per_rank(model, 1)
    ids = g.add_input(INPUT_IDS, INT64, ["batch", "seq"])
    mask = g.add_input(ATTENTION_MASK, INT64, ["batch", "total_seq"])
    cache_shape: list[int | str] = ["batch", kv_heads, "past_seq", model.head_size]
    seqlens, total = _sequence_lengths(ctx, mask)
    cos, sin = _rope_cache(ctx, max_positions)
    residual = _embedding(ctx, ids, linears)
    x = _first_norm(ctx, residual, linears)
    branch = ""
    for layer in range(model.num_layers):
        prefix = f"transformer.layers.{layer}"
        if layer:
            x, residual = _skip_norm(ctx, branch, residual, f"{prefix}.input_layernorm", linears)
        past = (
            g.add_input(past_name(layer, "key"), compute, cache_shape),
            g.add_input(past_name(layer, "value"), compute, cache_shape),
        )
        attn = _attention(ctx, x, layer, past, seqlens, total, (cos, sin), linears)
        x, residual = _skip_norm(ctx, attn, residual, f"{prefix}.post_layernorm", linears)
        branch = _feed_forward(ctx, x, f"{prefix}.mlp", linears)
    x, _ = _skip_norm(ctx, branch, residual, "transformer.ln_f", linears)
    logits = _lm_head(ctx, x, linears)
    g.add_output(logits, LOGITS, compute, ["batch", "seq", model.vocab_size])


def _embedding(ctx: LoweringContext, ids: str, linears: OrtLinears) -> str:
    """The float table's rows, or (no table: a tied int4 head) the head's int4 rows."""
    name = "transformer.vocab_embedding.weight"
    if ctx.weights.has(name):
        return ctx.graph.op("Gather", [ctx.load(name), ids], "embed.out")
    return tied_embedding(ctx, ids, linears)


def _sequence_lengths(ctx: LoweringContext, mask: str) -> tuple[str, str]:
    """GQA's ``seqlens_k`` (int32 [batch]: real tokens − 1) and ``total_sequence_length``
    (int32 scalar: the mask's width, = the cache slots in use)."""
    g = ctx.graph
    count = g.op("ReduceSum", [mask, g.i64(1)], "mask.count", keepdims=0)
    last = g.op("Sub", [count, g.const(1, np.int64)], "mask.last")
    seqlens = g.op("Cast", [last], "seqlens_k", to=INT32)
    width = g.op("Gather", [g.op("Shape", [mask], "mask.shape"), g.const(1, np.int64)], "mask.w")
    total = g.op("Cast", [width], "total_seq_len", to=INT32)
    return seqlens, total


def _rope_cache(ctx: LoweringContext, max_positions: int) -> tuple[str, str]:
    """cos/sin [max_positions, rotary_dim/2] for GQA's do_rotary (non-interleaved halves)."""
    model = ctx.model
    rope = rope_frequencies(
        model.rotary_dim or model.head_size,
        model.rotary_base,
        model.rotary_scaling,
        model.max_position_embeddings,
    )
    angles = torch.arange(max_positions, dtype=torch.float32)[:, None] * rope.inv_freq[None]
    dtype = _torch_compute(ctx)
    tables = []
    for fn, hint in ((torch.cos, "rope.cos_cache"), (torch.sin, "rope.sin_cache")):
        table = (fn(angles) * rope.attention_factor).to(dtype).contiguous()
        tables.append(ctx.graph.weight(hint, table))
    return tables[0], tables[1]


def _torch_compute(ctx: LoweringContext) -> torch.dtype:
    return torch.float16 if ctx.compute_type == TensorProto.FLOAT16 else torch.float32


def _gamma(ctx: LoweringContext, norm: str, consumers: tuple[str, ...], linears: OrtLinears) -> str:
    """The norm weight, times the consumers' AWQ pre-quant scale when they share one.

    ``linear(x·s)`` with ``x = norm(h)·γ`` is ``linear(norm(h)·(γ·s))``: folding removes a
    Mul per linear. Consumers with different scales keep their own Mul (linear() reads
    the scale again).
    """
    gamma = ctx.weights.get(f"{norm}.weight").float()
    scales = [prequant_scale(ctx, module) for module in consumers]
    if scales and all(s is not None for s in scales):
        first = scales[0]
        assert first is not None
        if all(torch.equal(first, s) for s in scales[1:] if s is not None):
            gamma = gamma * first
            linears.folded.update(consumers)
    return ctx.graph.weight(f"{norm}.weight", gamma.to(_torch_compute(ctx)))


def _consumers(ctx: LoweringContext, norm: str) -> tuple[str, ...]:
    """The linears reading a norm's output (for pre-quant folding); none after ln_f."""
    if norm.endswith("input_layernorm"):
        return (f"{norm.rsplit('.', 1)[0]}.attention.qkv",)
    if norm.endswith("post_layernorm"):
        layer = norm.rsplit(".", 1)[0]
        return (f"{layer}.mlp.fc", f"{layer}.mlp.gate")
    return ()


def _first_norm(ctx: LoweringContext, x: str, linears: OrtLinears) -> str:
    norm = "transformer.layers.0.input_layernorm"
    gamma = _gamma(ctx, norm, _consumers(ctx, norm), linears)
    return ctx.graph.op(
        "SimplifiedLayerNormalization",
        [x, gamma],
        f"{norm}.out",
        axis=-1,
        epsilon=ctx.model.norm_epsilon,
        stash_type=1,
    )


def _skip_norm(
    ctx: LoweringContext, x: str, residual: str, norm: str, linears: OrtLinears
) -> tuple[str, str]:
    """(RMSNorm(x + residual)·γ, x + residual) in one SkipSimplifiedLayerNormalization."""
    g = ctx.graph
    gamma = _gamma(ctx, norm, _consumers(ctx, norm), linears)
    out, total = g.fresh(f"{norm}.out"), g.fresh(f"{norm}.residual")
    g.nodes.append(
        helper.make_node(
            "SkipSimplifiedLayerNormalization",
            [x, residual, gamma],
            [out, "", "", total],
            name=g.fresh(f"{norm}/SkipSimplifiedLayerNormalization"),
            domain=MS_DOMAIN,
            epsilon=ctx.model.norm_epsilon,
        )
    )
    return out, total


def _attention(
    ctx: LoweringContext,
    x: str,
    layer: int,
    past: tuple[str, str],
    seqlens: str,
    total: str,
    rope: tuple[str, str],
    linears: OrtLinears,
) -> str:
    g, model = ctx.graph, ctx.model
    q_heads, kv_heads = heads_per_rank(model, 1)
    d = model.head_size
    prefix = f"transformer.layers.{layer}.attention"
    qkv = linear(ctx, f"{prefix}.qkv", x, model.hidden_size, (q_heads + 2 * kv_heads) * d, linears)
    qkv = _bias(ctx, qkv, f"{prefix}.qkv")
    packed = [qkv, "", ""]
    if model.qk_layernorm:
        packed = _normed_heads(ctx, qkv, prefix, q_heads, kv_heads)
    out = g.fresh(f"{prefix}.context")
    present = [g.fresh(present_name(layer, kind)) for kind in ("key", "value")]
    window = model.layer_window(layer)
    g.nodes.append(
        helper.make_node(
            "GroupQueryAttention",
            [*packed, past[0], past[1], seqlens, total, rope[0], rope[1]],
            [out, *present],
            name=g.fresh(f"{prefix}/GroupQueryAttention"),
            domain=MS_DOMAIN,
            num_heads=q_heads,
            kv_num_heads=kv_heads,
            scale=model.attention_scale,
            do_rotary=1,
            rotary_interleaved=0,
            local_window_size=-1 if window is None else window,
        )
    )
    # "present_seq": total_seq, or the shared buffer's length when past and present are one.
    cache_shape: list[int | str] = ["batch", kv_heads, "present_seq", d]
    for name in present:
        g.outputs.append(helper.make_tensor_value_info(name, ctx.compute_type, cache_shape))
    dense = linear(ctx, f"{prefix}.dense", out, q_heads * d, model.hidden_size, linears)
    return _bias(ctx, dense, f"{prefix}.dense")


def _normed_heads(
    ctx: LoweringContext, qkv: str, prefix: str, q_heads: int, kv_heads: int
) -> list[str]:
    """Qwen3 / Qwen3-MoE: q, k (each head RMS-normalized over its channels) and v, as
    GroupQueryAttention's separate inputs; it applies rope to them after, as the model
    does (norm first, then rope)."""
    g, d = ctx.graph, ctx.model.head_size
    q, k, v = g.op_n(
        "Split",
        [qkv, g.i64(q_heads * d, kv_heads * d, kv_heads * d)],
        [f"{prefix}.q", f"{prefix}.k", f"{prefix}.v"],
        axis=-1,
    )
    out = []
    for x, heads, norm in ((q, q_heads, "q_layernorm"), (k, kv_heads, "k_layernorm")):
        per_head = g.op("Reshape", [x, g.i64(0, 0, heads, d)], f"{prefix}.{norm}.heads")
        normed = g.op(
            "SimplifiedLayerNormalization",
            [per_head, ctx.load(f"{prefix}.{norm}.weight")],
            f"{prefix}.{norm}.out",
            axis=-1,
            epsilon=ctx.model.norm_epsilon,
            stash_type=1,
        )
        out.append(g.op("Reshape", [normed, g.i64(0, 0, heads * d)], f"{prefix}.{norm}.flat"))
    return [*out, v]


def _bias(ctx: LoweringContext, y: str, module: str) -> str:
    if not ctx.weights.has(f"{module}.bias"):
        return y
    return ctx.graph.op("Add", [y, ctx.load(f"{module}.bias")], f"{module}.biased")


def _feed_forward(ctx: LoweringContext, x: str, prefix: str, linears: OrtLinears) -> str:
    """The dense MLP, or the routed experts (one MoE node, ort/moe.py) plus Qwen2-MoE's
    shared expert, a dense MLP scaled by sigmoid(x · g)."""
    g, model = ctx.graph, ctx.model
    if not model.moe_num_experts:
        return _mlp(ctx, x, prefix, linears, model.intermediate_size)
    out = routed_experts(ctx, x, prefix, linears)
    if not model.moe_shared_intermediate:
        return out
    shared = _mlp(ctx, x, f"{prefix}.shared_expert", linears, model.moe_shared_intermediate)
    gate = linear(ctx, f"{prefix}.shared_expert_gate", x, model.hidden_size, 1, linears)
    gate = g.op("Sigmoid", [gate], f"{prefix}.shared_gate")
    shared = g.op("Mul", [shared, gate], f"{prefix}.shared_weighted")
    return g.op("Add", [out, shared], f"{prefix}.with_shared")


def _mlp(ctx: LoweringContext, x: str, prefix: str, linears: OrtLinears, inner: int) -> str:
    """proj(silu(fc(x)) · gate(x)) — fc is HF gate_proj, gate is HF up_proj."""
    g, model = ctx.graph, ctx.model
    hidden = model.hidden_size
    fc = _bias(ctx, linear(ctx, f"{prefix}.fc", x, hidden, inner, linears), f"{prefix}.fc")
    up = _bias(ctx, linear(ctx, f"{prefix}.gate", x, hidden, inner, linears), f"{prefix}.gate")
    silu = g.op("Mul", [fc, g.op("Sigmoid", [fc], f"{prefix}.sigmoid")], f"{prefix}.silu")
    product = g.op("Mul", [silu, up], f"{prefix}.gated")
    proj = linear(ctx, f"{prefix}.proj", product, inner, hidden, linears)
    return _bias(ctx, proj, f"{prefix}.proj")


def _lm_head(ctx: LoweringContext, x: str, linears: OrtLinears) -> str:
    model = ctx.model
    if ctx.weights.has("lm_head.weight"):
        return linear(ctx, "lm_head", x, model.hidden_size, model.vocab_size, linears)
    name = "transformer.vocab_embedding.weight"
    if not ctx.weights.has(name):
        raise source_error("the checkpoint has neither lm_head.weight nor the embedding")
    weight = ctx.constant_weight("lm_head.weight", ctx.weights.get(name), transpose=True)
    return ctx.graph.op("MatMul", [x, weight], "lm_head.out")
