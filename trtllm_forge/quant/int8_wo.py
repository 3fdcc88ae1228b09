"""INT8 weight-only (W8A16): per-output-channel round-to-nearest, no calibration data.

Everything forge knows about the method is here: its format record (what each output
target stores or why it refuses) and the format's tensors, fake-quant weight and ONNX
lowering, which the generic modules call through the record. The per-channel INT8
helpers are SmoothQuant's too (quant/smoothquant.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from trtllm_forge.context import NullProgress, Progress
from trtllm_forge.quant.record_types import CompressedTensors, Method, ModelOpt, QuantFormat

if TYPE_CHECKING:
    import torch
    from torch import nn

    from trtllm_forge.quant.calibration import CalibrationData
    from trtllm_forge.quant.record_types import OnnxOps, Tensors, TensorSource
    from trtllm_forge.quant.result import LinearQuant, QuantResult

_NO_PROGRESS = NullProgress()
CT_INT8_CHANNEL = {"num_bits": 8, "type": "int", "symmetric": True, "strategy": "channel"}


def quantize_model(
    model: nn.Module,
    data: CalibrationData | None,
    params: object,
    targets: list[str],
    progress: Progress = _NO_PROGRESS,
) -> QuantResult:
    from trtllm_forge.quant import layout
    from trtllm_forge.quant.result import LinearQuant, QuantResult

    modules = dict(model.named_modules())
    result = QuantResult()
    for name in targets:
        weight = modules[name].weight.detach().float()
        result.linears[name] = LinearQuant(weight, layout.channel_amax(weight))
    return result


# --- the format's tensors (torch is imported when they run) ---


def trtllm_int8(lq: LinearQuant) -> Tensors:
    """int8 ``weight`` [out, in] and fp32 ``weights_scaling_factor`` [out]."""
    from trtllm_forge.quant import layout

    scale = layout.scale_from_amax(lq.weight_amax, layout.INT8_MAX)
    return {"weight": layout.quantize_int8(lq.weight, scale), "weights_scaling_factor": scale}


def modelopt_int8(lq: LinearQuant, dtype: torch.dtype) -> Tensors:
    """ModelOpt rounds the weight to the checkpoint dtype, then divides by amax / 127."""
    from trtllm_forge.quant import layout

    scale = layout.divide(lq.weight_amax.float(), layout.INT8_MAX)
    return {
        "weight": layout.quantize_int8(lq.weight.to(dtype).float(), scale),
        "weight_scale": scale,
    }


def _trtllm(lq: LinearQuant, row: bool, dtype: torch.dtype) -> Tensors:
    return trtllm_int8(lq)


def _compressed_tensors(lq: LinearQuant, dtype: torch.dtype) -> Tensors:
    from trtllm_forge.quant import layout

    scale = layout.scale_from_amax(lq.weight_amax, layout.INT8_MAX)
    q = layout.quantize_int8(lq.weight.float(), scale)
    return layout.ct_pack_quantized(q, 8, scale[:, None], dtype)


def int8_weight(param: str) -> object:
    """Fake-quant weight of int8 values × a per-channel ``param`` ([out] or [1, out])."""

    def weight(reader: TensorSource, module: str) -> torch.Tensor:
        from trtllm_forge.quant import layout

        scale = reader.get(f"{module}.{param}").float()
        scale = scale.reshape(-1) if scale.numel() > 1 else scale.reshape(())
        return layout.dequantize_int8(reader.get(f"{module}.weight"), scale)

    return weight


def _onnx(ops: OnnxOps, x: str) -> str:
    """DQ(int8 Wᵀ, per-column scale) → MatMul."""
    return ops.matmul(x, ops.dq_per_column("weights_scaling_factor"))


FORMAT = QuantFormat(
    name="W8A16",
    trtllm_algo="W8A16",
    weight="int8, one scale per output channel",
    packing="int8 [out, in]",
    trtllm_tensors=("weight I8 [out,in]", "weights_scaling_factor F32 [out]"),
    strongly_typed=False,
    modelopt=ModelOpt("W8A16", ("weight_scale",), linear_tensors=modelopt_int8),
    compressed_tensors=CompressedTensors(
        "pack-quantized",
        CT_INT8_CHANNEL,
        None,
        ("weight_packed", "weight_scale"),
        linear_tensors=_compressed_tensors,
    ),
    trtllm_writer=_trtllm,
    fake_weight=int8_weight("weights_scaling_factor"),  # type: ignore[arg-type]
    onnx_lowering=_onnx,
)

METHOD = Method(name="int8_wo", needs_data=False, uses_modelopt=False, formats=(FORMAT,))
