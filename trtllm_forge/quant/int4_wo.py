"""INT4 group-wise weight-only: per (channel, group) round-to-nearest, no calibration data.

Everything forge knows about the method is here: its format record (``W4A16``, stored
under TensorRT-LLM's ``W4A16_AWQ`` without a pre-quant scale) and the format's tensors,
fake-quant weight and ONNX lowering, which the generic modules call through the record.
GPTQ stores the same format (quant/gptq.py), AWQ the same tensors plus a pre-quant scale
(quant/awq.py); both use the helpers here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from trtllm_forge.context import NullProgress, Progress
from trtllm_forge.quant.record_types import CompressedTensors, Method, ModelOpt, QuantFormat

if TYPE_CHECKING:
    import torch
    from torch import nn

    from trtllm_forge.quant.calibration import CalibrationData
    from trtllm_forge.quant.record_types import OnnxOps, Tensors, TensorSource
    from trtllm_forge.quant.result import LinearQuant, QuantResult

    class GroupParams(Protocol):
        """The validated parameters (quant/params.py builds their model from the recipe section)."""

        group_size: int


_NO_PROGRESS = NullProgress()
CT_INT4_GROUP = {"num_bits": 4, "type": "int", "symmetric": True, "strategy": "group"}


def quantize_model(
    model: nn.Module,
    data: CalibrationData | None,
    params: GroupParams,
    targets: list[str],
    progress: Progress = _NO_PROGRESS,
) -> QuantResult:
    from trtllm_forge.quant import layout
    from trtllm_forge.quant.result import LinearQuant, QuantResult

    modules = dict(model.named_modules())
    result = QuantResult()
    for name in targets:
        weight = modules[name].weight.detach().float()
        result.linears[name] = LinearQuant(weight, layout.group_amax(weight, params.group_size))
    return result


def group_fields(pre_quant_scale: bool) -> Any:
    """The groupwise INT4 ``quantization`` fields: the kernels are symmetric here (no zero
    point is stored); ``pre_quant_scale`` says whether the AWQ scale is."""

    def fields(params: GroupParams) -> dict[str, Any]:
        return {
            "group_size": params.group_size,
            "has_zero_point": False,
            "pre_quant_scale": pre_quant_scale,
        }

    return fields


# --- the format's tensors (torch is imported when they run) ---


def trtllm_int4(lq: LinearQuant, row: bool, dtype: torch.dtype) -> Tensors:
    from trtllm_forge.quant import layout

    return layout.int4_group_tensors(lq.weight, lq.weight_amax, lq.pre_quant_scale, dtype)


def modelopt_int4(lq: LinearQuant, dtype: torch.dtype) -> Tensors:
    """uint8 ``weight`` (two int4 rows per byte) and fp32 ``weight_scale`` [out, in/g];
    the writer adds the pre-quant scale (AWQ)."""
    import torch

    from trtllm_forge.quant import layout

    scale = layout.divide(lq.weight_amax.float(), layout.INT4_MAX)
    packed = layout.pack_int4_rows(layout.quantize_int4(lq.weight.to(dtype).float(), scale))
    return {"weight": packed.view(torch.uint8), "weight_scale": scale}


def _compressed_tensors(lq: LinearQuant, dtype: torch.dtype) -> Tensors:
    from trtllm_forge.quant import layout

    scale = layout.scale_from_amax(lq.weight_amax, layout.INT4_MAX)
    q = layout.quantize_int4(lq.weight.float(), scale)
    return layout.ct_pack_quantized(q, 4, scale, dtype)


def int4_weight(reader: TensorSource, module: str) -> torch.Tensor:
    from trtllm_forge.quant import layout

    scale = reader.get(f"{module}.weights_scaling_factor").float()  # [out, groups]
    return layout.dequantize_int4(reader.get(f"{module}.weight"), scale)


def onnx_int4(ops: OnnxOps, x: str) -> str:
    """[x·pre_quant_scale] → MatMul(DQ(int4 Wᵀ, blocked scale))."""
    return ops.matmul(ops.mul_input(x, "prequant_scaling_factor"), ops.int4_groups())


FORMAT = QuantFormat(
    name="W4A16",
    trtllm_algo="W4A16_AWQ",
    weight="int4, one scale per (output channel, input group)",
    packing="two int4 output rows per byte, low nibble = even row",
    trtllm_tensors=("weight I8 [out/2,in]", "weights_scaling_factor F32 [out,in/g]"),
    strongly_typed=False,
    weight_bits=4,
    modelopt=ModelOpt(
        "W4A16_AWQ", ("weight_scale",), group_fields=True, linear_tensors=modelopt_int4
    ),
    compressed_tensors=CompressedTensors(
        "pack-quantized",
        CT_INT4_GROUP,
        None,
        ("weight_packed", "weight_scale"),
        linear_tensors=_compressed_tensors,
    ),
    trtllm_writer=trtllm_int4,
    fake_weight=int4_weight,
    onnx_lowering=onnx_int4,
)

METHOD = Method(
    name="int4_wo",
    needs_data=False,
    uses_modelopt=False,
    formats=(FORMAT,),
    quantization_fields=group_fields(pre_quant_scale=False),
)
