"""The hook tables of the linear-layer and KV-cache lowering (contracts: engine/onnx/linear.py).

Apart from ``linear`` so that the quantized lowerings (engine/onnx/quant_lowering.py) can
register into them without importing the module that imports them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, TypeVar

from trtllm_forge.engine.onnx.context import LoweringContext


@dataclass(frozen=True)
class LinearSite:
    """One linear layer of one rank (sizes are local to the rank)."""

    module: str  # TRT-LLM module name, e.g. "transformer.layers.0.attention.qkv"
    parallel: Literal["column", "row"]
    in_features: int
    out_features: int


LinearLowering = Callable[[LoweringContext, LinearSite, str], str]
KvCacheLowering = Callable[[LoweringContext, str, str, str], tuple[str, str]]
Hook = TypeVar("Hook", LinearLowering, KvCacheLowering)


def dense_linear(ctx: LoweringContext, site: LinearSite, x: str) -> str:
    """Unquantized: ``x @ W.T`` in the checkpoint dtype; W.T is either stored transposed
    ([in, out]) or, when the engine references the shard's bytes, a Transpose node over
    the stored [out, in] tensor (engine/onnx/context.py ``load``)."""
    weight = ctx.load(f"{site.module}.weight", transpose=True)
    return ctx.graph.op("MatMul", [x, weight], f"{site.module}.out")


def plain_kv_cache(ctx: LoweringContext, layer: str, k: str, v: str) -> tuple[str, str]:
    return k, v


LINEAR_LOWERINGS: dict[str | None, LinearLowering] = {None: dense_linear}
KV_CACHE_LOWERINGS: dict[str | None, KvCacheLowering] = {None: plain_kv_cache}


def register_linear_lowering(quant_algo: str, fn: LinearLowering) -> None:
    """Register the lowering of linear layers stored with ``quant_algo`` (a QuantAlgo name)."""
    LINEAR_LOWERINGS[quant_algo] = fn


def register_kv_cache_lowering(kv_cache_quant_algo: str, fn: KvCacheLowering) -> None:
    KV_CACHE_LOWERINGS[kv_cache_quant_algo] = fn
