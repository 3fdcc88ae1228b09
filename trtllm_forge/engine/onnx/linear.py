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

from trtllm_forge.engine.onnx.context import LoweringContext
from trtllm_forge.engine.onnx.hooks import (
    KV_CACHE_LOWERINGS,
    LINEAR_LOWERINGS,
    Hook,
    KvCacheLowering,
    LinearLowering,
    LinearSite,
    dense_linear,
    plain_kv_cache,
    register_kv_cache_lowering,
    register_linear_lowering,
)
from trtllm_forge.errors import recipe_error

# The hook API, importable from here as before the tables moved to hooks.py.
__all__ = [
    "DEFAULT_EXCLUDE",
    "KV_CACHE_LOWERINGS",
    "LINEAR_LOWERINGS",
    "Hook",
    "KvCacheLowering",
    "LinearLowering",
    "LinearSite",
    "dense_linear",
    "lower_kv_cache",
    "lower_linear",
    "module_quant_algo",
    "plain_kv_cache",
    "register_kv_cache_lowering",
    "register_linear_lowering",
]

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


def _import_quant_lowerings() -> None:
    # The quantized lowerings register themselves on import; an unquantized build never
    # imports them (or the quant modules they use).
    from trtllm_forge.engine.onnx import quant_lowering  # noqa: F401


def _lookup(table: dict[str | None, Hook], algo: str | None, field: str) -> Hook:
    if algo not in table:
        _import_quant_lowerings()
    if algo not in table:
        known = ", ".join(sorted(str(k) for k in table if k is not None)) or "none registered"
        raise recipe_error(
            f"the ONNX lowering has no {field} {algo!r} lowering",
            hint=f"lowerings available: {known} (quantized ones register in engine/onnx/quant_lowering.py)",
        )
    return table[algo]
