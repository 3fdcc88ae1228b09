"""FP8 block-scaled weights (``FP8_BLOCK_SCALES``): one E4M3 scale per b × b tile.

Everything forge knows about the method is here: its parameters, its format record
(what each output target stores or why it refuses), and the format's tensors, fake
quant and ONNX lowering, which the generic modules call through the record.

The weight's range is taken per tile (round-to-nearest, no calibration data): it is
exactly what ModelOpt's ``FP8_2D_BLOCKWISE_WEIGHT_ONLY_CFG`` max calibration computes
(tests/test_quant_fp8_block.py checks it). Activations carry no calibrated range:
serving kernels quantize them per (token, b channels) at run time, which fake quant
and the ONNX lowering reproduce.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from trtllm_forge.context import NullProgress, Progress
from trtllm_forge.quant.record_types import (
    FP8_ARGS,
    CompressedTensors,
    Method,
    NotCarried,
    QuantFormat,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    import torch
    from torch import nn

    from trtllm_forge.quant.calibration import CalibrationData
    from trtllm_forge.quant.record_types import OnnxOps, Tensors, TensorSource
    from trtllm_forge.quant.result import LinearQuant, QuantResult

_NO_PROGRESS = NullProgress()


if TYPE_CHECKING:

    class Fp8BlockParams(Protocol):
        """The validated parameters (quant/params.py builds their model from the recipe section)."""

        block_size: int


def _quantization_fields(params: Fp8BlockParams) -> dict[str, Any]:
    return {"group_size": params.block_size}


def _linear_misfit(params: Fp8BlockParams, out: int, width: int) -> tuple[str, str] | None:
    block = params.block_size
    if out % block == 0 and width % block == 0:
        return None
    return (
        f"{out}×{width} is not a whole number of {block}×{block} FP8 blocks",
        "pick a block_size dividing every layer's sizes, or exclude the layer",
    )


def quantize_model(
    model: nn.Module,
    data: CalibrationData | None,
    params: Fp8BlockParams,
    targets: list[str],
    progress: Progress = _NO_PROGRESS,
) -> QuantResult:
    from trtllm_forge.quant.result import LinearQuant, QuantResult

    modules = dict(model.named_modules())
    result = QuantResult()
    for name in targets:
        weight = modules[name].weight.detach().float()
        result.linears[name] = LinearQuant(weight, block_amax(weight, params.block_size))
    return result


# --- numerics (torch is imported when they run: `forge plan` reads only the record) ---


def block_amax(weight: torch.Tensor, block: int) -> torch.Tensor:
    """Per ``block × block`` tile ``[out / block, in / block]``."""
    out, inp = weight.shape
    if out % block or inp % block:
        raise ValueError(f"weight {out}×{inp} is not a whole number of {block}×{block} blocks")
    tiles = weight.reshape(out // block, block, inp // block, block)
    return tiles.abs().amax(dim=(1, 3)).float()


def expand_blocks(scale: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """``[out / b, in / b]`` → ``[out, in]`` (each tile's scale over its elements)."""
    rows, cols = shape
    return scale.repeat_interleave(rows // scale.shape[0], dim=0).repeat_interleave(
        cols // scale.shape[1], dim=1
    )


def quantize_blocks(weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Block-scaled float8 e4m3fn (``scale [out / b, in / b]``)."""
    import torch

    return (weight.float() / expand_blocks(scale.float(), weight.shape)).to(torch.float8_e4m3fn)


def dequantize_blocks(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return q.float() * expand_blocks(scale.float(), q.shape)


def per_group_scale(x: torch.Tensor, group: int, qmax: float) -> torch.Tensor:
    """Dynamic dequant scale per (token, ``group`` consecutive channels): ``max|x| / qmax``,
    broadcast back to ``x``'s shape (1 for an all-zero group)."""
    import torch

    grouped = x.reshape(*x.shape[:-1], x.shape[-1] // group, group)
    amax = grouped.abs().amax(dim=-1, keepdim=True)
    scale = torch.where(amax == 0, torch.ones_like(amax), amax / qmax)
    return scale.expand_as(grouped).reshape(x.shape)


def _tile_scale(lq: LinearQuant) -> torch.Tensor:
    from trtllm_forge.quant import layout

    return layout.scale_from_amax(lq.weight_amax, layout.FP8_MAX)  # [out/b, in/b]


def _trtllm(lq: LinearQuant, row: bool, dtype: torch.dtype) -> Tensors:
    scale = _tile_scale(lq)
    return {"weight": quantize_blocks(lq.weight, scale), "weights_scaling_factor": scale}


def _compressed_tensors(lq: LinearQuant, dtype: torch.dtype) -> Tensors:
    scale = _tile_scale(lq)
    return {"weight": quantize_blocks(lq.weight.float(), scale), "weight_scale": scale.to(dtype)}


def _fake_weight(reader: TensorSource, module: str) -> torch.Tensor:
    return dequantize_blocks(
        reader.get(f"{module}.weight"), reader.get(f"{module}.weights_scaling_factor")
    )


def _fake_input(reader: TensorSource, module: str) -> Callable[[torch.Tensor], torch.Tensor]:
    from trtllm_forge.quant import layout

    # The activations' channel group is the weight tiles' input edge.
    group = (
        reader.shape(f"{module}.weight")[1] // reader.shape(f"{module}.weights_scaling_factor")[1]
    )
    return lambda x: layout.fake_quant_fp8(x, per_group_scale(x, group, layout.FP8_MAX))


def _onnx(ops: OnnxOps, x: str) -> str:
    """Q/DQ fp8 per (token, b channels) → MatMul(DQ(fp8 Wᵀ, blocked along in, tile scales))."""
    tiles = ops.tensor("weights_scaling_factor").float()  # [out/b, in/b]
    block = ops.in_features // tiles.shape[1]
    x = ops.qdq_per_group(x, block, "fp8", "act")
    # Blocked DQ is one-dimensional: along Wᵀ's input axis, each tile's scale repeated
    # over the tile's output columns ([in/b, out]) — the same numbers, exactly.
    per_column = tiles.t().repeat_interleave(ops.out_features // tiles.shape[0], dim=1)
    scale = ops.constant("weights_scaling_factor", per_column.contiguous())
    w = ops.op("DequantizeLinear", [ops.stored_weight_t(), scale], "w_dq", axis=0, block_size=block)
    return ops.matmul(x, w)


FORMAT = QuantFormat(
    name="FP8_BLOCK_SCALES",
    trtllm_algo="FP8_BLOCK_SCALES",
    weight="float8 e4m3, one scale per b×b tile (b = 128 for the kernels); dynamic "
    "fp8 activations per token and b input channels",
    packing="float8_e4m3fn [out, in]",
    trtllm_tensors=("weight F8_E4M3 [out,in]", "weights_scaling_factor F32 [out/b,in/b]"),
    strongly_typed=True,
    modelopt=NotCarried(
        "ModelOpt 0.47 exports 2-D block FP8 only as weight-only `fp8_pb_wo` (no "
        "activation quantization, a 4-D [out/b,1,in/b,1] scale), a quant_algo "
        "TensorRT-LLM's loader does not know; TensorRT-LLM reads FP8_BLOCK_SCALES from "
        "compressed-tensors `strategy: block`"
    ),
    compressed_tensors=CompressedTensors(
        "float-quantized",
        {**FP8_ARGS, "strategy": "block"},
        {**FP8_ARGS, "strategy": "group", "dynamic": True},
        ("weight", "weight_scale"),
        linear_tensors=_compressed_tensors,
    ),
    activations="own",
    trtllm_build=NotCarried(
        "TensorRT-LLM's TensorRT-engine path handles FP8_BLOCK_SCALES only partly "
        "(a PyTorch-backend algo; docs/trtllm-checkpoint.md §2), so forge writes no "
        "trtllm-build checkpoint for it; its PyTorch flow reads the compressed-tensors "
        "folder"
    ),
    trtllm_writer=_trtllm,
    fake_weight=_fake_weight,
    fake_input=_fake_input,
    onnx_lowering=_onnx,
)

METHOD = Method(
    name="fp8_block",
    needs_data=False,
    uses_modelopt=False,
    formats=(FORMAT,),
    quantization_fields=_quantization_fields,
    linear_misfit=_linear_misfit,
)
