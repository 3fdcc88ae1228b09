"""Linear-layer and KV-cache lowering, dispatched through hook tables keyed by quant algo.

This is the extension point for quantized engines (docs/engine.md, "Quantization
hooks"). The decoder never builds a MatMul itself: it calls :func:`lower_linear`,
which picks ``LINEAR_LOWERINGS[algo]`` where ``algo`` is the checkpoint's
``quantization.quant_algo`` (``None`` when unquantized or when the module matches
``exclude_modules``). A quant method adds its lowering with
:func:`register_linear_lowering` — e.g. INT8 per-channel weight DequantizeLinear,
blocked INT4 DequantizeLinear (opset 21 ``block_size``), FP8 Q/DQ, SmoothQuant
activation Q/DQ, AWQ pre-quant scale — without touching the decoder.

Hook contract (linear): ``hook(ctx, site, x) -> y`` where ``x`` is the float input
``[batch, seq, site.in_features]`` and ``y`` is ``x @ W.T`` ``[batch, seq,
site.out_features]`` in the compute type, WITHOUT bias and before any collective:
the decoder adds the column bias, and for row-parallel layers all-reduces first
and then adds the (unsplit) bias once. The hook must read every tensor of its
module through ``ctx.weights.get`` (unread tensors fail the build).

Hook contract (KV cache): ``hook(ctx, attention, k, v) -> (k, v)`` (``attention`` is the
module prefix, e.g. ``transformer.layers.0.attention``) receives the
new keys (after rope) and values ``[batch, kv_heads, seq, head]`` before they are
appended to the cache, keyed by ``quantization.kv_cache_quant_algo``. The ONNX
Runtime cache stays float32, so a Q/DQ pair here reproduces a quantized cache.
"""

from __future__ import annotations

import fnmatch
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, TypeVar

from trtllm_forge.engine.onnx.context import LoweringContext
from trtllm_forge.errors import recipe_error

# TRT-LLM's default exclusion list, used when quantization.exclude_modules is null (§1.3).
DEFAULT_EXCLUDE = (
    "*lm_head",
    "*router",
    "*vocab_embedding",
    "*position_embedding",
    "*block_embedding",
    "*shared_expert_gate",
    "*fused_a",
)


@dataclass(frozen=True)
class LinearSite:
    """One linear layer of one rank (sizes are local to the rank)."""

    module: str  # TRT-LLM module name, e.g. "transformer.layers.0.attention.qkv"
    parallel: Literal["column", "row"]
    in_features: int
    out_features: int


LinearLowering = Callable[[LoweringContext, LinearSite, str], str]
KvCacheLowering = Callable[[LoweringContext, str, str, str], tuple[str, str]]
_Hook = TypeVar("_Hook", LinearLowering, KvCacheLowering)


def dense_linear(ctx: LoweringContext, site: LinearSite, x: str) -> str:
    """Unquantized: ``x @ W.T`` with W stored transposed ([in, out]) in the checkpoint dtype."""
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


def module_quant_algo(ctx: LoweringContext, module: str) -> str | None:
    """The algo a module is stored with: the checkpoint's, unless the module is excluded."""
    algo = ctx.model.quant_algo
    if algo is None:
        return None
    patterns = ctx.model.quantization.get("exclude_modules")
    patterns = DEFAULT_EXCLUDE if patterns is None else patterns
    if any(fnmatch.fnmatchcase(module, p) for p in patterns):
        return None
    return algo


def lower_linear(ctx: LoweringContext, site: LinearSite, x: str) -> str:
    algo = module_quant_algo(ctx, site.module)
    return _lookup(LINEAR_LOWERINGS, algo, "quant_algo")(ctx, site, x)


def lower_kv_cache(ctx: LoweringContext, layer: str, k: str, v: str) -> tuple[str, str]:
    algo = ctx.model.kv_cache_quant_algo
    return _lookup(KV_CACHE_LOWERINGS, algo, "kv_cache_quant_algo")(ctx, layer, k, v)


# The quant package registers its lowerings when this module is imported (lazily, so an
# unquantized build never imports it). It is owned by the quant helper.
QUANT_LOWERINGS_MODULE = "trtllm_forge.quant.onnx_lowering"


def _import_quant_lowerings() -> None:
    try:
        importlib.import_module(QUANT_LOWERINGS_MODULE)
    except ModuleNotFoundError as exc:
        if exc.name is None or not QUANT_LOWERINGS_MODULE.startswith(exc.name):
            raise


def _lookup(table: dict[str | None, _Hook], algo: str | None, field: str) -> _Hook:
    if algo not in table:
        _import_quant_lowerings()
    if algo not in table:
        known = ", ".join(sorted(str(k) for k in table if k is not None)) or "none registered"
        raise recipe_error(
            f"the ONNX lowering has no {field} {algo!r} lowering",
            hint=f"lowerings available: {known} (quantized ones register from {QUANT_LOWERINGS_MODULE})",
        )
    return table[algo]
