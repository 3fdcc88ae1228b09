"""Linear layers of the ort profile: float MatMul, or ONNX Runtime's MatMulNBits.

MatMulNBits (com.microsoft) keeps the weight quantized at run time (the portable
profile's DequantizeLinear is folded to float32 when a session starts, so it runs a
float GEMM on 8x the bytes). Its layout, per ContribOperators.md:

* ``B`` uint8 ``[N, blocks, block_size·bits/8]``: the weight row of output n, cut into
  blocks of ``block_size`` input channels, packed low bits first (two int4 per byte);
* ``scales`` ``[N·blocks]`` in the compute type, one per (n, block);
* no ``zero_points`` input: the kernel's default zero point 2^(bits-1) (8 for int4,
  128 for int8) is exactly forge's symmetric storage shifted to unsigned.

Sources, per checkpoint quant_algo (quant/formats.py):

* ``W4A16_AWQ`` (int4_wo, awq, gptq): int4 rows [out, in], scales [out, in/g] →
  bits 4, block_size g. AWQ's pre-quant scale multiplies the input channels; the
  decoder folds it into the RMSNorm weight before the linear when it can (see
  :class:`OrtLinears`), otherwise a Mul stays in front of the MatMulNBits. GPTQ
  (act_order too) is stored with contiguous groups and no g_idx (quant/gptq.py).
* ``W8A16`` (int8_wo): int8 [out, in], one scale per output row → bits 8 with that
  scale repeated over every block (K is zero-padded to whole blocks).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from onnx import TensorProto

from trtllm_forge.engine.onnx.context import LoweringContext
from trtllm_forge.engine.onnx.linear import LinearSite, module_quant_algo
from trtllm_forge.errors import recipe_error, source_error
from trtllm_forge.quant import layout

MS_DOMAIN = "com.microsoft"
INT8_BLOCK = 128  # int8 weight-only: the per-row scale repeated over blocks of this many inputs
# MatMulNBits accuracy_level: the minimum precision of the activations inside the kernel.
# 0 = the weight's compute type (activations stay float32 on CPU). 4 lets the CPU kernel
# quantize activations to int8 per block (what onnxruntime-genai's builder uses for CPU
# int4): faster, and it changes logits, so it is a choice (OrtLinears.accuracy_level).
ACCURACY_FLOAT = 0
ACCURACY_INT8 = 4


@dataclass(frozen=True)
class Packed:
    """A MatMulNBits weight written to the graph: ``B`` and ``scales`` initializer names."""

    weight: str
    scales: str
    bits: int
    block: int
    n: int
    k: int


@dataclass
class OrtLinears:
    """How this graph lowers its linears, which AWQ pre-quant scales the decoder has
    already multiplied into the norm before their linears (``folded``), and the int4
    weights already written (``packed``: a tied model's embedding reads lm_head's)."""

    accuracy_level: int = ACCURACY_FLOAT
    folded: set[str] = field(default_factory=set)
    packed: dict[str, Packed] = field(default_factory=dict)


def linear(
    ctx: LoweringContext, module: str, x: str, n_in: int, n_out: int, linears: OrtLinears
) -> str:
    """``x @ W.T`` (no bias) for the module's stored quantization."""
    algo = module_quant_algo(ctx, module)
    site = LinearSite(module, "column", n_in, n_out)
    if algo is None:
        return _dense(ctx, site, x)
    if algo == "W4A16_AWQ":
        if module not in linears.folded:
            x = _prequant_mul(ctx, site, x)
        return _matmul_nbits(
            ctx, site, x, int4_weight(ctx, module, linears), linears.accuracy_level
        )
    if algo == "W8A16":
        return _int8(ctx, site, x, linears.accuracy_level)
    raise recipe_error(
        f"build.profile ort has no lowering for quant_algo {algo!r}",
        hint="use build.profile: portable for this quantization",
    )


def prequant_scale(ctx: LoweringContext, module: str) -> torch.Tensor | None:
    """The module's AWQ pre-quant scale [in] (float32), read (marked used), or None."""
    name = f"{module}.prequant_scaling_factor"
    if module_quant_algo(ctx, module) != "W4A16_AWQ" or not ctx.weights.has(name):
        return None
    return ctx.weights.get(name).float().reshape(-1)


def _dense(ctx: LoweringContext, site: LinearSite, x: str) -> str:
    weight = ctx.load(f"{site.module}.weight", transpose=True)
    return ctx.graph.op("MatMul", [x, weight], f"{site.module}.out")


def _prequant_mul(ctx: LoweringContext, site: LinearSite, x: str) -> str:
    scale = prequant_scale(ctx, site.module)
    if scale is None:
        return x
    value = ctx.constant_weight(f"{site.module}.prequant_scaling_factor", scale)
    return ctx.graph.op("Mul", [x, value], f"{site.module}.prequant")


def int4_weight(ctx: LoweringContext, module: str, linears: OrtLinears) -> Packed:
    """The module's int4 rows as MatMulNBits initializers, written once per graph."""
    if module not in linears.packed:
        values = layout.unpack_int4_rows(ctx.weights.get(f"{module}.weight"))  # [out, in]
        scales = ctx.weights.get(f"{module}.weights_scaling_factor").float()  # [out, groups]
        block = values.shape[1] // scales.shape[1]
        linears.packed[module] = _store(ctx, module, values, scales, bits=4, block=block)
    return linears.packed[module]


def _int8(ctx: LoweringContext, site: LinearSite, x: str, accuracy: int) -> str:
    values = ctx.weights.get(f"{site.module}.weight")  # int8 [out, in]
    scale = ctx.weights.get(f"{site.module}.weights_scaling_factor").float().reshape(-1, 1)
    blocks = -(-values.shape[1] // INT8_BLOCK)
    pad = blocks * INT8_BLOCK - values.shape[1]
    values = torch.nn.functional.pad(values, (0, pad))  # zeros: the padded inputs count 0
    stored = _store(ctx, site.module, values, scale.expand(-1, blocks), bits=8, block=INT8_BLOCK)
    return _matmul_nbits(ctx, site, x, replace(stored, k=site.in_features), accuracy)


def pack_blocks(values: torch.Tensor, bits: int, block: int) -> torch.Tensor:
    """Signed ``[N, K]`` integers → MatMulNBits ``B`` uint8 ``[N, K/block, block·bits/8]``."""
    unsigned = (values.to(torch.int16) + (1 << (bits - 1))).to(torch.uint8)
    n, k = unsigned.shape
    if bits == 4:
        pairs = unsigned.reshape(n, k // 2, 2)
        unsigned = pairs[..., 0] | (pairs[..., 1] << 4)
    return unsigned.reshape(n, k // block, block * bits // 8).contiguous()


def _store(
    ctx: LoweringContext,
    module: str,
    values: torch.Tensor,
    scales: torch.Tensor,
    *,
    bits: int,
    block: int,
) -> Packed:
    g = ctx.graph
    packed = g.weight(f"{module}.weight_nbits", pack_blocks(values, bits, block))
    scale_dtype = torch.float16 if ctx.compute_type == TensorProto.FLOAT16 else torch.float32
    scale = g.weight(f"{module}.scales", scales.contiguous().reshape(-1).to(scale_dtype))
    return Packed(packed, scale, bits, block, int(values.shape[0]), int(values.shape[1]))


def _matmul_nbits(
    ctx: LoweringContext, site: LinearSite, x: str, packed: Packed, accuracy: int
) -> str:
    return ctx.graph.op(
        "MatMulNBits",
        [x, packed.weight, packed.scales],
        f"{site.module}.out",
        domain=MS_DOMAIN,
        K=packed.k,
        N=packed.n,
        bits=packed.bits,
        block_size=packed.block,
        accuracy_level=accuracy,
    )


def tied_embedding(ctx: LoweringContext, ids: str, linears: OrtLinears) -> str:
    """Embedding rows of a tied model whose checkpoint keeps only the int4 lm_head (the
    quantizer drops the float table: quant/writer.py): GatherBlockQuantized reads the
    head's MatMulNBits bytes, whose [N, blocks, block/2] layout is the op's [N, K/2]
    (two int4 per byte along K, zero point 8), through a Reshape, with the same scales."""
    if module_quant_algo(ctx, "lm_head") != "W4A16_AWQ":
        raise source_error(
            "the checkpoint has no transformer.vocab_embedding.weight and no int4 lm_head "
            "to share it with"
        )
    head = int4_weight(ctx, "lm_head", linears)
    g = ctx.graph
    table = g.op("Reshape", [head.weight, g.i64(head.n, head.k // 2)], "embed.table")
    scales = g.op("Reshape", [head.scales, g.i64(head.n, head.k // head.block)], "embed.scales")
    return g.op(
        "GatherBlockQuantized",
        [table, ids, scales],
        "embed.out",
        domain=MS_DOMAIN,
        bits=4,
        block_size=head.block,
        gather_axis=0,
        quantize_axis=1,
    )
