"""Where each token is, as the portable decoder sees it: rotary tables and their
application (GPT-NeoX halves, GPT-J pairs, partial rotary), the attention masks (causal by
cache slot, padding, sliding windows) and ALiBi's distance bias (graph contract:
docs/engine.md)."""

from __future__ import annotations

from typing import Any

import numpy as np
from onnx import TensorProto

from trtllm_forge.checkpoint.forward import alibi_slopes
from trtllm_forge.engine.onnx.context import LoweringContext
from trtllm_forge.engine.onnx.rope import rope_frequencies
from trtllm_forge.engine.spec import heads_per_rank

FLOAT = TensorProto.FLOAT


def local_rope_tables(
    ctx: LoweringContext, positions: str, layers: range
) -> tuple[str, str] | None:
    """Gemma 3: cos/sin of the sliding layers' own unscaled base, if this rank has one."""
    model = ctx.model
    base = model.rope_local_base_freq
    if base is None or all(model.layer_window(layer) is None for layer in layers):
        return None
    return rope_tables(ctx, positions, base=base, scaling=None, name="rope_local")


def rope_tables(
    ctx: LoweringContext,
    positions: str,
    *,
    base: float | None = None,
    scaling: dict[str, Any] | None = None,
    name: str = "rope",
) -> tuple[str, str]:
    """cos/sin [batch, 1, seq, head] from position ids (shared by all layers; by default
    from the model's base and scaling)."""
    g, model = ctx.graph, ctx.model
    rope = rope_frequencies(
        model.rotary_dim or model.head_size,
        model.rotary_base if base is None else base,
        model.rotary_scaling if base is None else scaling,
        model.max_position_embeddings,
    )
    inv_freq = g.const(rope.inv_freq.numpy(), np.float32, f"{name}.inv_freq")
    if rope.long_inv_freq is not None:
        inv_freq = _longrope_select(ctx, positions, rope, inv_freq, name)
    pos = g.op(
        "Unsqueeze",
        [g.op("Cast", [positions], f"{name}.pos_f", to=FLOAT), g.i64(-1)],
        f"{name}.pos",
    )
    freqs = g.op("Mul", [pos, inv_freq], f"{name}.freqs")
    if model.position_embedding_type == "rope_gptj":
        # Each frequency serves one channel pair: [f0, f0, f1, f1, ...].
        pairs = g.op("Unsqueeze", [freqs, g.i64(-1)], f"{name}.freqs_1")
        pairs = g.op("Concat", [pairs, pairs], f"{name}.freq_pairs", axis=-1)
        angles = g.op("Reshape", [pairs, g.i64(0, 0, -1)], f"{name}.angles")
    else:
        angles = g.op("Concat", [freqs, freqs], f"{name}.angles", axis=-1)
    tables = []
    for fn in ("Cos", "Sin"):
        table = g.op(fn, [angles], f"{name}.{fn.lower()}")
        if rope.attention_factor != 1.0:
            table = g.op(
                "Mul", [table, g.scalar(rope.attention_factor)], f"{name}.{fn.lower()}_scaled"
            )
        tables.append(g.op("Unsqueeze", [table, g.i64(1)], f"{name}.{fn.lower()}4"))
    return tables[0], tables[1]


def _longrope_select(ctx: LoweringContext, positions: str, rope: Any, short: str, name: str) -> str:
    """[batch, 1, half] frequencies: row b takes the long set when its sequence so far
    (its largest position id in this call, + 1) is longer than LongRoPE's pretraining
    length. transformers decides by the whole batch's largest position per forward
    call; the two agree on a single sequence (docs/models.md)."""
    g = ctx.graph
    assert rope.long_inv_freq is not None
    long = g.const(rope.long_inv_freq.numpy(), np.float32, f"{name}.long_inv_freq")
    last = g.op("ReduceMax", [positions, g.i64(1)], f"{name}.last_position", keepdims=1)
    is_long = g.op("Greater", [last, g.i64(rope.long_after - 1)], f"{name}.is_long")
    is_long = g.op("Unsqueeze", [is_long, g.i64(-1)], f"{name}.is_long3")
    return g.op("Where", [is_long, long, short], f"{name}.inv_freq_row")


def attention_masks(
    ctx: LoweringContext, mask: str, positions: str, windows: set[int | None]
) -> dict[int | None, str]:
    """window -> bool [batch, 1, 1, seq, total_seq]: causal (by cache slot), not padding,
    and, for a window, only the last ``window`` cache slots (Mistral; Gemma 2's sliding
    layers). Left padding shifts keys and queries alike, so slot distances are token
    distances."""
    g = ctx.graph

    def length(value: str, hint: str) -> str:
        dim = g.op("Shape", [value], f"{hint}.shape", start=1, end=2)
        return g.op("Squeeze", [dim, g.i64(0)], hint)

    total, seq = length(mask, "mask.total_len"), length(positions, "mask.seq_len")
    one, zero = g.const(1, np.int64), g.const(0, np.int64)
    past = g.op("Sub", [total, seq], "mask.past_len")
    query_slots = g.op("Range", [past, total, one], "mask.query_slots")
    keys = g.op(
        "Unsqueeze", [g.op("Range", [zero, total, one], "mask.key_slots"), g.i64(0)], "mask.keys"
    )
    queries = g.op("Unsqueeze", [query_slots, g.i64(1)], "mask.queries")
    present = g.op(
        "Cast",
        [g.op("Unsqueeze", [mask, g.i64(1)], "mask.b1t")],
        "mask.present",
        to=TensorProto.BOOL,
    )
    causal = g.op("LessOrEqual", [keys, queries], "mask.causal")
    causal = g.op("And", [causal, present], "mask.causal_present")
    out = {}
    for window in windows:
        allowed = causal
        if window is not None:
            hint = f"mask.window{window}"
            earliest = g.op("Sub", [queries, g.const(window, np.int64)], f"{hint}.earliest")
            recent = g.op("Greater", [keys, earliest], f"{hint}.recent")
            allowed = g.op("And", [causal, recent], f"{hint}.allowed")
        out[window] = g.op("Unsqueeze", [allowed, g.i64(1, 2)], f"{allowed}5")
    return out


def alibi_bias(ctx: LoweringContext, mask: str, positions: str) -> str:
    """float [1, kv, rep, seq, total_seq]: ``slope_h · (key slot - query slot)`` for this
    rank's query heads (ALiBi). Slots, not positions: left padding shifts a row's keys and
    queries alike, and softmax ignores a per-row constant."""
    g, model, layout = ctx.graph, ctx.model, ctx.layout
    q_heads, kv_heads = heads_per_rank(model, layout.tp_size)
    slopes = alibi_slopes(model.num_heads, model.alibi_bias_max)
    local = slopes[layout.tp_rank * q_heads : (layout.tp_rank + 1) * q_heads]
    local_slopes = g.const(
        local.numpy().reshape(1, kv_heads, q_heads // kv_heads, 1, 1), np.float32, "alibi.slopes"
    )

    def length(value: str, hint: str) -> str:
        dim = g.op("Shape", [value], f"{hint}.shape", start=1, end=2)
        return g.op("Squeeze", [dim, g.i64(0)], hint)

    total, seq = length(mask, "alibi.total_len"), length(positions, "alibi.seq_len")
    one, zero = g.const(1, np.int64), g.const(0, np.int64)
    past = g.op("Sub", [total, seq], "alibi.past_len")
    queries = g.op(
        "Unsqueeze", [g.op("Range", [past, total, one], "alibi.query_slots"), g.i64(1)], "alibi.q"
    )
    keys = g.op(
        "Unsqueeze", [g.op("Range", [zero, total, one], "alibi.key_slots"), g.i64(0)], "alibi.k"
    )
    distance = g.op("Cast", [g.op("Sub", [keys, queries], "alibi.dist_i")], "alibi.dist", to=FLOAT)
    return g.op("Mul", [local_slopes, distance], "alibi.bias")


def position_rope(ctx: LoweringContext, x: str, cos: str, sin: str, hint: str) -> str:
    """The model's rope on [batch, heads, seq, head]: none (learned positions), GPT-NeoX or
    GPT-J style, on all channels or only the first ``rotary_dim`` (partial rotary)."""
    g, model = ctx.graph, ctx.model
    kind = model.position_embedding_type
    if kind not in ("rope_gpt_neox", "rope_gptj"):
        return x
    rotate = _rotate_pairs if kind == "rope_gptj" else _rotate
    dim = model.rotary_dim or model.head_size
    if dim == model.head_size:
        return rotate(ctx, x, cos, sin, hint)
    part, rest = g.op_n(
        "Split",
        [x, g.i64(dim, model.head_size - dim)],
        [f"{hint}.rot_part", f"{hint}.pass_part"],
        axis=-1,
    )
    roped = rotate(ctx, part, cos, sin, hint)
    return g.op("Concat", [roped, rest], f"{hint}.partial_roped", axis=-1)


def _rotate_pairs(ctx: LoweringContext, x: str, cos: str, sin: str, hint: str) -> str:
    """GPT-J rope: channel pairs (2i, 2i+1) rotate: rotated = [-x_odd, x_even] interleaved."""
    g = ctx.graph
    pairs = g.op("Reshape", [x, g.i64(0, 0, 0, -1, 2)], f"{hint}.pairs")
    even, odd = g.op_n("Split", [pairs], [f"{hint}.even", f"{hint}.odd"], axis=-1, num_outputs=2)
    swapped = g.op("Concat", [g.op("Neg", [odd], f"{hint}.neg_odd"), even], f"{hint}.swap", axis=-1)
    rotated = g.op("Reshape", [swapped, g.i64(0, 0, 0, -1)], f"{hint}.rot")
    return g.op(
        "Add",
        [g.op("Mul", [x, cos], f"{hint}.xcos"), g.op("Mul", [rotated, sin], f"{hint}.rsin")],
        f"{hint}.roped",
    )


def _rotate(ctx: LoweringContext, x: str, cos: str, sin: str, hint: str) -> str:
    """GPT-NeoX rope: x·cos + rotate_half(x)·sin with rotate_half(x) = [-x2, x1]."""
    g = ctx.graph
    x1, x2 = g.op_n("Split", [x], [f"{hint}.x1", f"{hint}.x2"], axis=-1, num_outputs=2)
    rotated = g.op("Concat", [g.op("Neg", [x2], f"{hint}.neg_x2"), x1], f"{hint}.rot", axis=-1)
    return g.op(
        "Add",
        [g.op("Mul", [x, cos], f"{hint}.xcos"), g.op("Mul", [rotated, sin], f"{hint}.rsin")],
        f"{hint}.roped",
    )
