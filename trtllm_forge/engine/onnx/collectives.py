"""Tensor-parallel collectives as explicit custom-domain ONNX nodes.

Contract (domain ``trtllm_forge.dist``, version 1; see docs/engine.md):

* ``AllReduce(x) -> y``: ``y = Σ_r x_r`` over the ranks in ``groups``; attributes
  ``reduce_op`` ("SUM"), ``nb_rank`` (group size), ``groups`` (global ranks).
  Shape and type of ``y`` equal those of ``x``.
* ``AllGather(x) -> y``: concatenation of ``x_r`` in ``groups`` order along
  ``axis``; attributes ``axis``, ``nb_rank``, ``groups``.

They mirror TensorRT 11's DistCollective (ALL_REDUCE / ALL_GATHER with
``reduce_op``, ``nb_rank``, ``groups``); note DistCollective gathers along the
first dimension, so a mapping of ``AllGather(axis=-1)`` wraps it in transposes.
ONNX Runtime has no kernel for them: the runtime splits each rank graph at these
nodes (segments.py) and executes them with :func:`execute` between segments.
A tp=1 graph contains none.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
from onnx import helper

from trtllm_forge.engine.onnx.names import COLLECTIVE_DOMAIN

if TYPE_CHECKING:  # the lowering's context imports torch, which running an engine never needs
    from trtllm_forge.engine.onnx.context import LoweringContext

ALL_REDUCE = "AllReduce"
ALL_GATHER = "AllGather"
COLLECTIVE_OPS = (ALL_REDUCE, ALL_GATHER)


def _group(ctx: LoweringContext) -> list[int]:
    first = ctx.layout.pp_rank * ctx.layout.tp_size
    return list(range(first, first + ctx.layout.tp_size))


def all_reduce(ctx: LoweringContext, x: str, features: int, hint: str) -> str:
    """Sum a [batch, seq, features] partial result over the TP group (identity when tp == 1)."""
    if ctx.layout.tp_size == 1:
        return x
    y = ctx.graph.op(
        ALL_REDUCE, [x], hint, domain=COLLECTIVE_DOMAIN,
        reduce_op="SUM", nb_rank=ctx.layout.tp_size, groups=_group(ctx),
    )  # fmt: skip
    ctx.graph.annotate(y, ctx.compute_type, ["batch", "seq", features])
    return y


def all_gather(ctx: LoweringContext, x: str, features: int, hint: str) -> str:
    """Concatenate the TP ranks' [batch, seq, features/tp] shards along the last axis."""
    if ctx.layout.tp_size == 1:
        return x
    y = ctx.graph.op(
        ALL_GATHER, [x], hint, domain=COLLECTIVE_DOMAIN,
        axis=-1, nb_rank=ctx.layout.tp_size, groups=_group(ctx),
    )  # fmt: skip
    ctx.graph.annotate(y, ctx.compute_type, ["batch", "seq", features])
    return y


def is_collective(node: onnx.NodeProto) -> bool:
    return node.domain == COLLECTIVE_DOMAIN and node.op_type in COLLECTIVE_OPS


def node_attributes(node: onnx.NodeProto) -> dict[str, Any]:
    """A collective node's attributes as JSON-friendly values (strings decoded)."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    return {k: v.decode() if isinstance(v, bytes) else v for k, v in attrs.items()}


def execute(op: str, attrs: dict[str, Any], per_rank_inputs: Sequence[np.ndarray]) -> np.ndarray:
    """Run one collective for all ranks of its group (inputs in group order); every rank gets the result."""
    if len(per_rank_inputs) != attrs["nb_rank"]:
        raise ValueError(f"{op}: {len(per_rank_inputs)} inputs for nb_rank {attrs['nb_rank']}")
    if op == ALL_REDUCE:
        if attrs["reduce_op"] != "SUM":
            raise ValueError(f"AllReduce reduce_op {attrs['reduce_op']!r} is not supported")
        total = per_rank_inputs[0].copy()
        for part in per_rank_inputs[1:]:
            total += part
        return total
    if op == ALL_GATHER:
        return np.concatenate(list(per_rank_inputs), axis=int(attrs["axis"]))
    raise ValueError(f"{op} is not a collective of {COLLECTIVE_DOMAIN}")
