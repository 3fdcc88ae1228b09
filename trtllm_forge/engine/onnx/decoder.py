"""The Llama-family decoder of one rank as an ONNX graph (graph contract: docs/engine.md).

Per rank: [embedding] → its layers → [ln_f → lm_head]. TP appears only as the
local head/column counts of the rank's weights plus explicit AllReduce /
AllGather nodes; PP appears as hidden-state graph inputs/outputs.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from onnx import TensorProto

from trtllm_forge.engine.onnx.collectives import all_gather, all_reduce
from trtllm_forge.engine.onnx.context import LoweringContext
from trtllm_forge.engine.onnx.linear import LinearSite, lower_kv_cache, lower_linear
from trtllm_forge.engine.onnx.names import (
    ATTENTION_MASK,
    HIDDEN_IN,
    HIDDEN_OUT,
    INPUT_IDS,
    LOGITS,
    POSITION_IDS,
    past_name,
    present_name,
)
from trtllm_forge.engine.onnx.positions import (
    alibi_bias,
    attention_masks,
    local_rope_tables,
    position_rope,
    rope_tables,
)
from trtllm_forge.engine.spec import heads_per_rank, padded_vocab
from trtllm_forge.errors import recipe_error, source_error

FLOAT = TensorProto.FLOAT
INT64 = TensorProto.INT64
# Masked scores are replaced (not added to), so this never overflows; a fully masked row
# (a left-pad query) gets a uniform softmax instead of NaN.
MASKED_SCORE = float(np.finfo(np.float32).min)


def build_decoder(ctx: LoweringContext) -> None:
    """Add the whole rank graph (inputs, layers, outputs) to ``ctx.graph``."""
    g, model, layout = ctx.graph, ctx.model, ctx.layout
    if model.hidden_act not in _ACTIVATIONS:
        raise recipe_error(
            f"hidden_act {model.hidden_act!r} is not supported "
            f"(supported: {', '.join(sorted(_ACTIVATIONS))})"
        )
    _, kv_heads = heads_per_rank(model, layout.tp_size)
    if layout.is_first_stage:
        hidden = _embedding(ctx, g.add_input(INPUT_IDS, INT64, ["batch", "seq"]))
    else:
        hidden = g.add_input(HIDDEN_IN, FLOAT, ["batch", "seq", model.hidden_size])
    positions = g.add_input(POSITION_IDS, INT64, ["batch", "seq"])
    if layout.is_first_stage and model.position_embedding_type == "learned_absolute":
        hidden = _position_embedding(ctx, hidden, positions)
    mask = g.add_input(ATTENTION_MASK, INT64, ["batch", "total_seq"])
    cache_shape: list[int | str] = ["batch", kv_heads, "past_seq", model.head_size]
    pasts = {
        layer: (
            g.add_input(past_name(layer, "key"), FLOAT, cache_shape),
            g.add_input(past_name(layer, "value"), FLOAT, cache_shape),
        )
        for layer in layout.layers
    }
    cos, sin = rope_tables(ctx, positions)
    local_rope = local_rope_tables(ctx, positions, layout.layers)
    # One mask per distinct window among this rank's layers (Gemma 2 alternates two).
    allowed = attention_masks(ctx, mask, positions, {model.layer_window(i) for i in layout.layers})
    alibi = alibi_bias(ctx, mask, positions) if model.position_embedding_type == "alibi" else None
    for local, layer in enumerate(layout.layers):
        layer_allowed = allowed[model.layer_window(layer)]
        layer_cos, layer_sin = (cos, sin)
        if local_rope is not None and model.layer_window(layer) is not None:
            layer_cos, layer_sin = local_rope  # Gemma 3's sliding layers
        hidden = _decoder_layer(
            ctx,
            hidden,
            local,
            layer,
            pasts[layer],
            layer_cos,
            layer_sin,
            layer_allowed,
            alibi=alibi,
        )
    if layout.is_last_stage:
        logits = _lm_head(ctx, _norm(ctx, hidden, "transformer.ln_f"))
        if model.final_logit_softcapping:
            logits = _soft_cap(ctx, logits, model.final_logit_softcapping, "logits")
        g.add_output(logits, LOGITS, FLOAT, ["batch", "seq", model.vocab_size])
    else:
        g.add_output(hidden, HIDDEN_OUT, FLOAT, ["batch", "seq", model.hidden_size])


def _norm(ctx: LoweringContext, x: str, prefix: str) -> str:
    """The model's norm: RMSNorm, or LayerNorm with its bias (``norm_type`` layernorm)."""
    if ctx.model.norm_type != "layernorm":
        return _rms_norm(ctx, x, prefix)
    inputs = [x, ctx.load(f"{prefix}.weight")]
    if ctx.weights.has(f"{prefix}.bias"):
        inputs.append(ctx.load(f"{prefix}.bias"))
    return ctx.graph.op(
        "LayerNormalization", inputs, f"{prefix}.out", axis=-1, epsilon=ctx.model.norm_epsilon
    )


def _rms_norm(ctx: LoweringContext, x: str, prefix: str) -> str:
    g = ctx.graph
    weight = ctx.load(f"{prefix}.weight")
    variance = g.op(
        "ReduceMean", [g.op("Mul", [x, x], f"{prefix}.sq"), g.i64(-1)], f"{prefix}.var", keepdims=1
    )
    std = g.op(
        "Sqrt",
        [g.op("Add", [variance, g.scalar(ctx.model.norm_epsilon)], f"{prefix}.var_eps")],
        f"{prefix}.std",
    )
    normed = g.op("Div", [x, std], f"{prefix}.normed")
    return g.op("Mul", [normed, weight], f"{prefix}.out")


def _position_embedding(ctx: LoweringContext, hidden: str, positions: str) -> str:
    """Learned absolute positions (GPT-2): add the row of each token's position id."""
    g = ctx.graph
    table = ctx.load("transformer.position_embedding.weight")
    rows = g.op("Gather", [table, positions], "position_embedding.rows")
    return g.op("Add", [hidden, rows], "embed.with_positions")


def _embedding(ctx: LoweringContext, ids: str) -> str:
    looked_up = _token_embedding(ctx, ids)
    if ctx.weights.has("transformer.ln_embed.weight"):  # BLOOM's word_embeddings_layernorm
        looked_up = _norm(ctx, looked_up, "transformer.ln_embed")
    multiplier = ctx.model.embedding_multiplier
    if multiplier == 1.0:
        return looked_up
    return ctx.graph.op("Mul", [looked_up, ctx.graph.scalar(multiplier)], "embed.scaled")


def _token_embedding(ctx: LoweringContext, ids: str) -> str:
    g, model, layout = ctx.graph, ctx.model, ctx.layout
    name = "transformer.vocab_embedding.weight"
    tensor = ctx.weights.get(name)
    rows, cols = tensor.shape
    table = ctx.constant_weight(name, tensor)
    if cols != model.hidden_size:  # sharded along hidden (embedding_sharding_dim 1)
        return all_gather(
            ctx, g.op("Gather", [table, ids], "embed.part"), model.hidden_size, "embed.out"
        )
    if rows >= model.vocab_size or layout.tp_size == 1:
        return g.op("Gather", [table, ids], "embed.out")
    # Vocab-sharded (use_parallel_embedding, dim 0): each rank looks up the ids it owns
    # and zeroes the rest; the all-reduce assembles the full rows.
    local = g.op("Sub", [ids, g.const(layout.tp_rank * rows, np.int64)], "embed.local_ids")
    owned = g.op(
        "And",
        [
            g.op("GreaterOrEqual", [local, g.const(0, np.int64)], "embed.ge0"),
            g.op("Less", [local, g.const(rows, np.int64)], "embed.lt_rows"),
        ],
        "embed.owned",
    )
    safe = g.op("Where", [owned, local, g.const(0, np.int64)], "embed.safe_ids")
    keep = g.op(
        "Unsqueeze", [g.op("Cast", [owned], "embed.owned_f", to=FLOAT), g.i64(-1)], "embed.keep"
    )
    part = g.op("Mul", [g.op("Gather", [table, safe], "embed.rows"), keep], "embed.part")
    return all_reduce(ctx, part, model.hidden_size, "embed.out")


def _soft_cap(ctx: LoweringContext, x: str, cap: float, hint: str) -> str:
    """``cap · tanh(x / cap)`` (Gemma 2 attention scores and logits)."""
    g = ctx.graph
    scaled = g.op("Mul", [x, g.scalar(1.0 / cap)], f"{hint}.cap_in")
    return g.op("Mul", [g.op("Tanh", [scaled], f"{hint}.tanh"), g.scalar(cap)], f"{hint}.capped")


def _linear(ctx: LoweringContext, x: str, module: str, parallel: str, n_in: int, n_out: int) -> str:
    """Linear with TP semantics: column adds its bias; row all-reduces, then adds the full bias."""
    g = ctx.graph
    y = lower_linear(ctx, LinearSite(module, parallel, n_in, n_out), x)  # type: ignore[arg-type]
    if parallel == "row":
        y = all_reduce(ctx, y, n_out, f"{module}.reduced")
    if ctx.weights.has(f"{module}.bias"):
        y = g.op("Add", [y, ctx.load(f"{module}.bias")], f"{module}.biased")
    return y


def _heads(ctx: LoweringContext, x: str, n: int, hint: str) -> str:
    """[batch, seq, n·d] → [batch, n, seq, d]."""
    g = ctx.graph
    split = g.op("Reshape", [x, g.i64(0, 0, n, ctx.model.head_size)], f"{hint}.bsnd")
    return g.op("Transpose", [split], f"{hint}.bnsd", perm=[0, 2, 1, 3])


def _attention(
    ctx: LoweringContext,
    x: str,
    prefix: str,
    layer: int,
    past: tuple[str, str],
    cos: str,
    sin: str,
    allowed: str,
    *,
    alibi: str | None = None,
) -> str:
    g, model = ctx.graph, ctx.model
    q_heads, kv_heads = heads_per_rank(model, ctx.layout.tp_size)
    d = model.head_size
    qkv = _linear(
        ctx, x, f"{prefix}.qkv", "column", model.hidden_size, (q_heads + 2 * kv_heads) * d
    )
    q, k, v = g.op_n(
        "Split",
        [qkv, g.i64(q_heads * d, kv_heads * d, kv_heads * d)],
        [f"{prefix}.q", f"{prefix}.k", f"{prefix}.v"],
        axis=-1,
    )
    q, k = _heads(ctx, q, q_heads, f"{prefix}.q"), _heads(ctx, k, kv_heads, f"{prefix}.k")
    if model.qk_layernorm:  # Qwen3, Gemma 3: RMSNorm over each head's channels, before rope
        q = _norm(ctx, q, f"{prefix}.q_layernorm")
        k = _norm(ctx, k, f"{prefix}.k_layernorm")
    q = position_rope(ctx, q, cos, sin, f"{prefix}.q")
    k = position_rope(ctx, k, cos, sin, f"{prefix}.k")
    v = _heads(ctx, v, kv_heads, f"{prefix}.v")
    k, v = lower_kv_cache(ctx, prefix, k, v)
    keys = g.op("Concat", [past[0], k], f"{prefix}.keys", axis=2)
    values = g.op("Concat", [past[1], v], f"{prefix}.values", axis=2)
    cache_shape: list[int | str] = ["batch", kv_heads, "total_seq", d]
    g.add_output(keys, present_name(layer, "key"), FLOAT, cache_shape)
    g.add_output(values, present_name(layer, "value"), FLOAT, cache_shape)
    keys, values = present_name(layer, "key"), present_name(layer, "value")
    context = _grouped_attention(ctx, q, keys, values, allowed, prefix, alibi=alibi)
    return _linear(ctx, context, f"{prefix}.dense", "row", q_heads * d, model.hidden_size)


def _grouped_attention(
    ctx: LoweringContext,
    q: str,
    keys: str,
    values: str,
    allowed: str,
    prefix: str,
    *,
    alibi: str | None,
) -> str:
    """softmax(q·kᵀ·scale [+ alibi], masked)·v → [batch, seq, q_heads·d].

    Grouped-query attention without copying K/V: queries are grouped per kv head
    ([b, kv, rep, s, d]) and K/V broadcast over the `rep` axis in the MatMuls."""
    g, model = ctx.graph, ctx.model
    q_heads, kv_heads = heads_per_rank(model, ctx.layout.tp_size)
    d = model.head_size
    rep = q_heads // kv_heads
    grouped = g.op("Reshape", [q, g.i64(0, kv_heads, rep, -1, d)], f"{prefix}.q_grouped")
    grouped = g.op("Mul", [grouped, g.scalar(model.attention_scale)], f"{prefix}.q_scaled")
    keys_t = g.op(
        "Unsqueeze",
        [g.op("Transpose", [keys], f"{prefix}.keys_t", perm=[0, 1, 3, 2]), g.i64(2)],
        f"{prefix}.keys_t5",
    )
    scores = g.op("MatMul", [grouped, keys_t], f"{prefix}.scores")
    if model.attn_logit_softcapping:
        scores = _soft_cap(ctx, scores, model.attn_logit_softcapping, f"{prefix}.scores")
    if alibi is not None:
        scores = g.op("Add", [scores, alibi], f"{prefix}.scores_alibi")
    scores = g.op("Where", [allowed, scores, g.scalar(MASKED_SCORE)], f"{prefix}.scores_masked")
    probs = g.op("Softmax", [scores], f"{prefix}.probs", axis=-1)
    values5 = g.op("Unsqueeze", [values, g.i64(2)], f"{prefix}.values5")
    context = g.op("MatMul", [probs, values5], f"{prefix}.context5")
    context = g.op("Reshape", [context, g.i64(0, q_heads, -1, d)], f"{prefix}.context4")
    context = g.op("Transpose", [context], f"{prefix}.context_bsnd", perm=[0, 2, 1, 3])
    return g.op("Reshape", [context, g.i64(0, 0, q_heads * d)], f"{prefix}.context")


def _silu(ctx: LoweringContext, x: str, hint: str) -> str:
    return ctx.graph.op("Mul", [x, ctx.graph.op("Sigmoid", [x], f"{hint}.sigmoid")], f"{hint}.silu")


def _gelu(approximate: str) -> Callable[[LoweringContext, str, str], str]:
    def lower(ctx: LoweringContext, x: str, hint: str) -> str:
        return ctx.graph.op("Gelu", [x], f"{hint}.gelu", approximate=approximate)

    return lower


def _relu(ctx: LoweringContext, x: str, hint: str) -> str:
    return ctx.graph.op("Relu", [x], f"{hint}.relu")


# hidden_act -> lowering; "gelu" is the exact (erf) form, the other gelus the tanh one.
_ACTIVATIONS: dict[str, Callable[[LoweringContext, str, str], str]] = {
    "silu": _silu,
    "relu": _relu,
    "gelu": _gelu("none"),
    "gelu_new": _gelu("tanh"),
    "gelu_pytorch_tanh": _gelu("tanh"),
    "gelu_fast": _gelu("tanh"),
}


def _moe(ctx: LoweringContext, x: str, prefix: str) -> str:
    """Mixtral with standard ops: softmax(router(x)), TopK, renormalize, scatter the
    weights into a dense [.., experts] row, and sum every expert's gated MLP times its
    weight (unrouted experts weigh 0). Each expert's MLP is TP-split like a dense one."""
    g, model = ctx.graph, ctx.model
    experts = model.moe_num_experts
    logits = _linear(ctx, x, f"{prefix}.router", "none", model.hidden_size, experts)
    probs = g.op("Softmax", [logits], f"{prefix}.router_probs", axis=-1)
    top, chosen = g.op_n(
        "TopK",
        [probs, g.i64(model.moe_top_k)],
        [f"{prefix}.top_probs", f"{prefix}.top_experts"],
        axis=-1,
    )
    if model.moe_renormalize:
        total = g.op("ReduceSum", [top, g.i64(-1)], f"{prefix}.top_sum", keepdims=1)
        top = g.op("Div", [top, total], f"{prefix}.top_normed")
    zeros = g.op("Mul", [probs, g.scalar(0.0)], f"{prefix}.zeros")
    weights = g.op("ScatterElements", [zeros, chosen, top], f"{prefix}.weights", axis=-1)
    out = None
    for e in range(experts):
        weight = g.op("Slice", [weights, g.i64(e), g.i64(e + 1), g.i64(-1)], f"{prefix}.weight{e}")
        expert = _gated_mlp(ctx, x, f"{prefix}.experts.{e}", model.intermediate_size)
        term = g.op("Mul", [expert, weight], f"{prefix}.expert{e}_weighted")
        out = term if out is None else g.op("Add", [out, term], f"{prefix}.sum{e}")
    assert out is not None
    if model.moe_shared_intermediate:  # Qwen2-MoE: sigmoid(x · g) · shared_expert(x)
        gate_logit = _linear(ctx, x, f"{prefix}.shared_expert_gate", "none", model.hidden_size, 1)
        gate = g.op("Sigmoid", [gate_logit], f"{prefix}.shared_gate")
        shared = _gated_mlp(ctx, x, f"{prefix}.shared_expert", model.moe_shared_intermediate)
        shared = g.op("Mul", [shared, gate], f"{prefix}.shared_weighted")
        out = g.op("Add", [out, shared], f"{prefix}.with_shared")
    return out


def _gated_mlp(ctx: LoweringContext, x: str, prefix: str, intermediate: int) -> str:
    g, model = ctx.graph, ctx.model
    inner = intermediate // ctx.layout.tp_size
    fc = _linear(ctx, x, f"{prefix}.fc", "column", model.hidden_size, inner)
    activated = _ACTIVATIONS[model.hidden_act](ctx, fc, prefix)
    gate = _linear(ctx, x, f"{prefix}.gate", "column", model.hidden_size, inner)
    product = g.op("Mul", [activated, gate], f"{prefix}.gated")
    return _linear(ctx, product, f"{prefix}.proj", "row", inner, model.hidden_size)


def _mlp(ctx: LoweringContext, x: str, prefix: str) -> str:
    """TRT GatedMLP: proj(act(fc(x)) · gate(x)); fc is HF gate_proj, gate is HF up_proj.
    Plain MLP (``mlp_type`` plain, GPT-2/NeoX/GPT-J): proj(act(fc(x)))."""
    g, model = ctx.graph, ctx.model
    if model.moe_num_experts:
        return _moe(ctx, x, prefix)
    inner = model.intermediate_size // ctx.layout.tp_size
    fc = _linear(ctx, x, f"{prefix}.fc", "column", model.hidden_size, inner)
    activated = _ACTIVATIONS[model.hidden_act](ctx, fc, prefix)
    if model.mlp_type == "plain":
        return _linear(ctx, activated, f"{prefix}.proj", "row", inner, model.hidden_size)
    gate = _linear(ctx, x, f"{prefix}.gate", "column", model.hidden_size, inner)
    product = g.op("Mul", [activated, gate], f"{prefix}.gated")
    return _linear(ctx, product, f"{prefix}.proj", "row", inner, model.hidden_size)


def _decoder_layer(
    ctx: LoweringContext,
    hidden: str,
    local: int,
    layer: int,
    past: tuple[str, str],
    cos: str,
    sin: str,
    allowed: str,
    *,
    alibi: str | None = None,
) -> str:
    g = ctx.graph
    prefix = f"transformer.layers.{local}"
    normed = _norm(ctx, hidden, f"{prefix}.input_layernorm")
    attn = _attention(
        ctx, normed, f"{prefix}.attention", layer, past, cos, sin, allowed, alibi=alibi
    )
    if ctx.model.parallel_residual:
        return _parallel_residual(ctx, hidden, normed, attn, prefix)
    if ctx.model.inter_layernorms:
        return _sandwich_residual(ctx, hidden, attn, prefix)
    hidden = g.op("Add", [hidden, attn], f"{prefix}.attn_residual")
    mlp = _mlp(ctx, _norm(ctx, hidden, f"{prefix}.post_layernorm"), f"{prefix}.mlp")
    return g.op("Add", [hidden, mlp], f"{prefix}.out")


def _parallel_residual(
    ctx: LoweringContext, hidden: str, normed: str, attn: str, prefix: str
) -> str:
    """h + attn(ln1 h) + mlp(ln2 h) (NeoX); GPT-J has no ln2 and feeds the MLP ln1 h."""
    g = ctx.graph
    if ctx.weights.has(f"{prefix}.post_layernorm.weight"):
        normed = _norm(ctx, hidden, f"{prefix}.post_layernorm")
    elif ctx.weights.has(f"{prefix}.mlp_layernorm.weight"):  # Falcon new decoder (ln_mlp)
        normed = _norm(ctx, hidden, f"{prefix}.mlp_layernorm")
    mlp = _mlp(ctx, normed, f"{prefix}.mlp")
    branches = g.op("Add", [attn, mlp], f"{prefix}.branches")
    return g.op("Add", [hidden, branches], f"{prefix}.out")


def _sandwich_residual(ctx: LoweringContext, hidden: str, attn: str, prefix: str) -> str:
    """Gemma 2: h += post_layernorm(attn); h += post_ff_norm(mlp(pre_ff_norm(h)))."""
    g = ctx.graph
    attn = _norm(ctx, attn, f"{prefix}.post_layernorm")
    hidden = g.op("Add", [hidden, attn], f"{prefix}.attn_residual")
    mlp = _mlp(ctx, _norm(ctx, hidden, f"{prefix}.pre_feedforward_layernorm"), f"{prefix}.mlp")
    mlp = _norm(ctx, mlp, f"{prefix}.post_feedforward_layernorm")
    return g.op("Add", [hidden, mlp], f"{prefix}.out")


def _lm_head(ctx: LoweringContext, x: str) -> str:
    g, model, layout = ctx.graph, ctx.model, ctx.layout
    if ctx.weights.has("lm_head.weight"):
        rows = padded_vocab(model, layout.tp_size) // layout.tp_size
        local = lower_linear(ctx, LinearSite("lm_head", "column", model.hidden_size, rows), x)
        if ctx.weights.has("lm_head.bias"):  # GPT-J's head has a bias (padded like the rows)
            local = g.op("Add", [local, ctx.load("lm_head.bias")], "lm_head.biased")
    else:
        local = _tied_lm_head(ctx, x)
    logits = all_gather(ctx, local, padded_vocab(model, layout.tp_size), "logits.padded")
    if padded_vocab(model, layout.tp_size) != model.vocab_size:
        logits = g.op(
            "Slice", [logits, g.i64(0), g.i64(model.vocab_size), g.i64(-1)], "logits.unpadded"
        )
    return logits


def _tied_lm_head(ctx: LoweringContext, x: str) -> str:
    """No lm_head tensor: reuse the (full) embedding, padded and split like lm_head (§3.4)."""
    name = "transformer.vocab_embedding.weight"
    model, layout = ctx.model, ctx.layout
    if not ctx.weights.has(name):
        raise source_error(f"rank {layout.rank} has neither lm_head.weight nor {name}")
    table = ctx.weights.get(name)
    if tuple(table.shape) != (model.vocab_size, model.hidden_size):
        raise source_error(
            "lm_head.weight is missing and the embedding is sharded; write lm_head explicitly"
        )
    padded = padded_vocab(model, layout.tp_size)
    table = torch.nn.functional.pad(table, (0, 0, 0, padded - model.vocab_size))
    shard = table.chunk(layout.tp_size, dim=0)[layout.tp_rank]
    weight = ctx.constant_weight("lm_head.weight", shard, transpose=True)
    return ctx.graph.op("MatMul", [x, weight], "lm_head.out")
