"""ONNX lowering of quantized linears and KV caches (explicit Q/DQ, opset 21).

Registered into the engine's hook tables (``engine.onnx.hooks``) on import; the
engine imports this module the first time it meets a quantized checkpoint.
Each lowering reads every tensor its module stores (the build fails on unread
tensors) and returns ``x @ W.T`` without bias, in the compute type. Each format's
lowering is its record's (``onnx_lowering``, declared in its method's module: the
graph each builds is in its docstring), built from the primitives of :class:`Ops`;
a format without one says why in its record (``onnx``), and plan refuses it. The
KV-cache lowering (INT8 / FP8): Q/DQ of new K and V with ``kv_cache_scaling_factor``.

Weights are stored transposed (``[in, out]``) so no Transpose ever touches an
8-bit tensor (ONNX Runtime has no FP8 Transpose kernel). Per-token scales use
blocked Q/DQ along the hidden axis with one block per token. All of these run
on ONNX Runtime's CPU provider (checked by the tests).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from onnx import TensorProto

from trtllm_forge.engine.onnx.context import LoweringContext
from trtllm_forge.engine.onnx.hooks import (
    LinearLowering,
    LinearSite,
    register_kv_cache_lowering,
    register_linear_lowering,
)
from trtllm_forge.quant import layout, records

if TYPE_CHECKING:
    from trtllm_forge.quant.record_types import OnnxLowering

_INT8, _FP8 = TensorProto.INT8, TensorProto.FLOAT8E4M3FN
# Smallest per-token scale: an all-zero token quantizes to 0 with any positive scale.
_TINY_SCALE = 1e-30


def _scale_flat(ctx: LoweringContext, name: str, shape: tuple[int, ...]) -> str:
    """A stored scale, reshaped, as a compute-typed constant (marks it used)."""
    return ctx.constant_weight(name, ctx.weights.get(name).float().reshape(shape))


def _int4_weight(ctx: LoweringContext, name: str, values: torch.Tensor) -> str:
    """An INT4 initializer from int8 values in [-8, 7] (ONNX packs 2 per byte, low nibble first)."""
    flat = values.reshape(-1).to(torch.int16)
    if flat.numel() % 2:
        flat = torch.cat([flat, flat.new_zeros(1)])
    pairs = flat.reshape(-1, 2)
    packed = ((pairs[:, 0] & 0x0F) | ((pairs[:, 1] & 0x0F) << 4)).to(torch.uint8)
    value = ctx.graph.fresh(name)
    # Written as bytes, then retyped: torch has no int4 dtype to hand the builder.
    proto = ctx.graph.weights.add(value, packed)
    proto.data_type = TensorProto.INT4
    del proto.dims[:]
    proto.dims.extend(values.shape)
    ctx.graph.initializers.append(proto)
    return value


def _dq_weight(ctx: LoweringContext, site: LinearSite, scale: str, *, per_column: bool) -> str:
    """Dequantized ``Wᵀ`` [in, out] from the stored int8 / fp8 weight."""
    stored = ctx.weights.get(f"{site.module}.weight")
    value = ctx.graph.weight(f"{site.module}.weight", stored.t().contiguous())
    if per_column:
        return ctx.graph.op("DequantizeLinear", [value, scale], f"{site.module}.w_dq", axis=1)
    return ctx.graph.op("DequantizeLinear", [value, scale], f"{site.module}.w_dq")


def _per_column_scale(ctx: LoweringContext, site: LinearSite, param: str) -> str:
    return _scale_flat(ctx, f"{site.module}.{param}", (site.out_features,))


def _qdq_static(ctx: LoweringContext, x: str, scale: str, dtype: int, hint: str) -> str:
    g = ctx.graph
    q = g.op("QuantizeLinear", [x, scale], f"{hint}.q", output_dtype=dtype)
    return g.op("DequantizeLinear", [q, scale], f"{hint}.dq")


def _qdq_per_token(
    ctx: LoweringContext, x: str, qmax: float, dtype: int, hint: str, width: int
) -> str:
    """Dynamic per-token Q/DQ: scale = max|x_t| / qmax, one block per token."""
    g = ctx.graph
    amax = g.op(
        "ReduceMax", [g.op("Abs", [x], f"{hint}.abs"), g.i64(-1)], f"{hint}.amax", keepdims=1
    )
    scale = g.op("Div", [amax, g.const(qmax, np.float32, "qmax")], f"{hint}.scale_raw")
    scale = g.op("Max", [scale, g.const(_TINY_SCALE, np.float32, "tiny_scale")], f"{hint}.scale")
    q = g.op(
        "QuantizeLinear", [x, scale], f"{hint}.q", output_dtype=dtype, axis=-1, block_size=width
    )
    return g.op("DequantizeLinear", [q, scale], f"{hint}.dq", axis=-1, block_size=width)


def _mul_input(
    ctx: LoweringContext, site: LinearSite, x: str, param: str, *, divide: bool = False
) -> str:
    name = f"{site.module}.{param}"
    if not ctx.weights.has(name):
        return x
    factor = _scale_flat(ctx, name, (site.in_features,))
    return ctx.graph.op("Div" if divide else "Mul", [x, factor], f"{site.module}.{param}.applied")


def _matmul(ctx: LoweringContext, site: LinearSite, x: str, w: str) -> str:
    return ctx.graph.op("MatMul", [x, w], f"{site.module}.out")


def _int4_groups(ctx: LoweringContext, site: LinearSite) -> str:
    """Dequantized ``Wᵀ`` [in, out] from packed INT4 and its group scales (blocked DQ)."""
    values = layout.unpack_int4_rows(ctx.weights.get(f"{site.module}.weight"))  # [out, in]
    scale = ctx.weights.get(f"{site.module}.weights_scaling_factor").float()  # [out, groups]
    group = values.shape[1] // scale.shape[1]
    weight = _int4_weight(ctx, f"{site.module}.weight", values.t().contiguous())
    scale_t = ctx.constant_weight(f"{site.module}.weights_scaling_factor", scale.t().contiguous())
    return ctx.graph.op(
        "DequantizeLinear", [weight, scale_t], f"{site.module}.w_dq", axis=0, block_size=group
    )


def _qdq_per_group(
    ctx: LoweringContext, x: str, qmax: float, dtype: int, hint: str, group: int
) -> str:
    """Dynamic Q/DQ per (token, ``group`` channels): scale = max|x_g| / qmax, blocked along
    the hidden axis (the scale has x's shape with the last axis divided by ``group``)."""
    g = ctx.graph
    tiles = g.op("Reshape", [x, g.i64(-1, group)], f"{hint}.tiles")
    amax = g.op(
        "ReduceMax", [g.op("Abs", [tiles], f"{hint}.abs"), g.i64(-1)], f"{hint}.amax", keepdims=1
    )
    leading = g.op("Shape", [x], f"{hint}.leading", end=-1)
    shape = g.op("Concat", [leading, g.i64(-1)], f"{hint}.scale_shape", axis=0)
    amax = g.op("Reshape", [amax, shape], f"{hint}.amax_groups")
    scale = g.op("Div", [amax, g.const(qmax, np.float32, "qmax")], f"{hint}.scale_raw")
    scale = g.op("Max", [scale, g.const(_TINY_SCALE, np.float32, "tiny_scale")], f"{hint}.scale")
    q = g.op(
        "QuantizeLinear", [x, scale], f"{hint}.q", output_dtype=dtype, axis=-1, block_size=group
    )
    return g.op("DequantizeLinear", [q, scale], f"{hint}.dq", axis=-1, block_size=group)


class Ops:
    """The primitives a format record's lowering (``record_types.OnnxOps``) builds one
    quantized linear with; names are prefixed with the module's, as the built-in ones'."""

    _DTYPES = {"fp8": _FP8, "int8": _INT8}

    def __init__(self, ctx: LoweringContext, site: LinearSite) -> None:
        self._ctx, self._site = ctx, site
        self.module = site.module
        self.in_features, self.out_features = site.in_features, site.out_features

    def tensor(self, param: str) -> torch.Tensor:
        return self._ctx.weights.get(f"{self._site.module}.{param}")

    def constant(self, param: str, value: torch.Tensor) -> str:
        return self._ctx.constant_weight(f"{self._site.module}.{param}", value)

    def scalar(self, param: str) -> str:
        return _scale_flat(self._ctx, f"{self._site.module}.{param}", ())

    def stored_weight_t(self) -> str:
        """The stored (8-bit) weight as an initializer, transposed to ``[in, out]``."""
        stored = self.tensor("weight")
        return self._ctx.graph.weight(f"{self._site.module}.weight", stored.t().contiguous())

    def mul_input(self, x: str, param: str) -> str:
        return _mul_input(self._ctx, self._site, x, param)

    def qdq_static(self, x: str, scale: str, dtype: str, hint: str) -> str:
        return _qdq_static(self._ctx, x, scale, self._DTYPES[dtype], f"{self._site.module}.{hint}")

    def qdq_per_group(self, x: str, group: int, dtype: str, hint: str) -> str:
        qmax = layout.FP8_MAX if dtype == "fp8" else layout.INT8_MAX
        name = f"{self._site.module}.{hint}"
        return _qdq_per_group(self._ctx, x, qmax, self._DTYPES[dtype], name, group)

    def qdq_per_token(self, x: str, dtype: str, hint: str) -> str:
        qmax = layout.FP8_MAX if dtype == "fp8" else layout.INT8_MAX
        name = f"{self._site.module}.{hint}"
        return _qdq_per_token(self._ctx, x, qmax, self._DTYPES[dtype], name, self.in_features)

    def int4_groups(self) -> str:
        return _int4_groups(self._ctx, self._site)

    def div_input(self, x: str, param: str) -> str:
        return _mul_input(self._ctx, self._site, x, param, divide=True)

    def dq_per_column(self, param: str) -> str:
        """DQ of the stored 8-bit ``Wᵀ`` with ``param`` as one scale per output column."""
        scale = _per_column_scale(self._ctx, self._site, param)
        return _dq_weight(self._ctx, self._site, scale, per_column=True)

    def consume(self, name: str) -> None:
        """Mark a tensor of another module (e.g. a norm's) read, when the rank has it."""
        if self._ctx.weights.has(name):
            self._ctx.weights.get(name)

    def op(self, op_type: str, inputs: list[str], hint: str, **attrs: Any) -> str:
        return self._ctx.graph.op(op_type, inputs, f"{self._site.module}.{hint}", **attrs)

    def matmul(self, x: str, w: str) -> str:
        return _matmul(self._ctx, self._site, x, w)


def _record_lowering(lower: OnnxLowering) -> LinearLowering:
    def lowering(ctx: LoweringContext, site: LinearSite, x: str) -> str:
        return lower(Ops(ctx, site), x)

    return lowering


def _kv_cache(dtype: int):  # type: ignore[no-untyped-def]
    def lower(ctx: LoweringContext, layer: str, k: str, v: str) -> tuple[str, str]:
        # TensorRT-LLM applies the one kv scale to both caches; k/v ones are informational.
        for part in ("k_cache_scaling_factor", "v_cache_scaling_factor"):
            if ctx.weights.has(f"{layer}.{part}"):
                ctx.weights.get(f"{layer}.{part}")
        scale = _scale_flat(ctx, f"{layer}.kv_cache_scaling_factor", ())
        return (
            _qdq_static(ctx, k, scale, dtype, f"{layer}.k_cache"),
            _qdq_static(ctx, v, scale, dtype, f"{layer}.v_cache"),
        )

    return lower


for _fmt in records.FORMATS.values():
    if _fmt.onnx_lowering is not None:
        register_linear_lowering(_fmt.trtllm_algo, _record_lowering(_fmt.onnx_lowering))
register_kv_cache_lowering("INT8", _kv_cache(_INT8))
register_kv_cache_lowering("FP8", _kv_cache(_FP8))
