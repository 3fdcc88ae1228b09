"""W4A8 AWQ through ModelOpt's ``W4A8_AWQ_BETA_CFG`` (``awq_lite``).

Everything forge knows about the method is here: its parameters, its format record
(what each output target stores or why it refuses), and the format's tensors, fake
quant and ONNX lowering, which the generic modules call through the record.

As AWQ (quant/awq.py), but the scale search runs against INT4 groups followed by a
per-tensor FP8 quantizer of the dequantized weight, and the inputs are quantized to
FP8 with a static range: TensorRT-LLM's W4A8 kernels turn the INT4 groups into FP8
and run an FP8 GEMM. The FP8 weight scale is the largest group range over 448,
derived from the group ranges when the checkpoint is written.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any, Protocol

from trtllm_forge.context import NullProgress, Progress
from trtllm_forge.quant.modelopt_method import quantizer
from trtllm_forge.quant.record_types import (
    PRE_QUANT_IN_CT,
    Method,
    ModelOpt,
    NotCarried,
    QuantFormat,
)

if TYPE_CHECKING:
    import torch

    from trtllm_forge.quant.record_types import OnnxOps, Tensors, TensorSource
    from trtllm_forge.quant.result import LinearQuant

_NO_PROGRESS = NullProgress()


if TYPE_CHECKING:

    class W4A8AwqParams(Protocol):
        """The validated parameters (quant/params.py builds their model from the recipe section)."""

        group_size: int


def _quantization_fields(params: W4A8AwqParams) -> dict[str, Any]:
    # TensorRT-LLM's groupwise INT4 fields; the groups are symmetric (no zero point) and
    # the AWQ pre-quant scale is stored.
    return {"group_size": params.group_size, "has_zero_point": False, "pre_quant_scale": True}


def modelopt_config(
    params: W4A8AwqParams, targets: list[str], progress: Progress = _NO_PROGRESS
) -> dict[str, Any]:
    """The ModelOpt config forge calibrates with (tests hand it to ModelOpt's exporter too)."""
    from trtllm_forge.quant import modelopt_glue

    preset = copy.deepcopy(modelopt_glue.mtq(progress).W4A8_AWQ_BETA_CFG)
    weight_cfg, _ = modelopt_glue.preset_numerics(preset)
    assert isinstance(weight_cfg, list)  # [INT4 groups, FP8 per tensor], applied in order
    weight_cfg[0]["block_sizes"] = {-1: params.group_size, "type": "static"}
    return modelopt_glue.target_config(preset, targets, weight_cfg=weight_cfg)


quantize_model = quantizer(modelopt_config, "W4A8 AWQ")


# --- the format's tensors (torch is imported when they run) ---


def fp8_scale(fp8_weight_amax: torch.Tensor | None) -> torch.Tensor:
    """The per-tensor FP8 weight scale ``amax / 448`` (the range calibrated for the FP8
    quantizer over the INT4-dequantized weight)."""
    from trtllm_forge.quant import layout

    if fp8_weight_amax is None:
        raise ValueError("calibration produced no FP8 weight range (W4A8)")
    return layout.divide(fp8_weight_amax.float(), layout.FP8_MAX)


def requantize_fp8(weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Float weight Q/DQ'd through float8 e4m3fn with a per-tensor scale (the second
    weight quantizer: the INT4 groups run as FP8)."""
    import torch

    from trtllm_forge.quant import layout

    limit = layout.FP8_MAX
    return (weight / scale).clamp(-limit, limit).to(torch.float8_e4m3fn).float() * scale


def _trtllm(lq: LinearQuant, row: bool, dtype: torch.dtype) -> Tensors:
    """W4A16_AWQ's tensors (packed int4, group scales, pre-quant scale) plus the FP8
    scale over the groups and the static FP8 activation scale."""
    from trtllm_forge.quant import layout

    if lq.input_amax is None:
        raise ValueError("calibration produced no activation range")
    out = layout.int4_group_tensors(lq.weight, lq.weight_amax, lq.pre_quant_scale, dtype)
    out["weights_scaling_factor_2"] = fp8_scale(lq.fp8_weight_amax).reshape(1)
    act = layout.scale_from_amax(lq.input_amax, layout.FP8_MAX)
    out["activation_scaling_factor"] = act.reshape(1)
    return out


def _modelopt(lq: LinearQuant, dtype: torch.dtype) -> Tensors:
    """ModelOpt's W4A16_AWQ tensors plus ``weight_scale_2`` (the writer adds
    ``input_scale`` and ``pre_quant_scale``)."""
    import torch

    from trtllm_forge.quant import layout

    scale = layout.divide(lq.weight_amax.float(), layout.INT4_MAX)
    int4 = layout.quantize_int4(lq.weight.to(dtype).float(), scale)
    return {
        "weight": layout.pack_int4_rows(int4).view(torch.uint8),
        "weight_scale": scale,
        "weight_scale_2": fp8_scale(lq.fp8_weight_amax).reshape(()),
    }


def _fake_weight(reader: TensorSource, module: str) -> torch.Tensor:
    from trtllm_forge.quant import layout

    scale = reader.get(f"{module}.weights_scaling_factor").float()
    groups = layout.dequantize_int4(reader.get(f"{module}.weight"), scale)
    return requantize_fp8(
        groups, reader.get(f"{module}.weights_scaling_factor_2").float().reshape(())
    )


def _onnx(ops: OnnxOps, x: str) -> str:
    """x·pqs → Q/DQ fp8 (static) → MatMul(Q/DQ fp8(DQ(int4 Wᵀ)))."""
    x = ops.mul_input(x, "prequant_scaling_factor")
    x = ops.qdq_static(x, ops.scalar("activation_scaling_factor"), "fp8", "act")
    # The INT4 groups run as FP8: Q/DQ of the dequantized weight with the FP8 tensor scale.
    fp8 = ops.scalar("weights_scaling_factor_2")
    return ops.matmul(x, ops.qdq_static(ops.int4_groups(), fp8, "fp8", "w_fp8"))


FORMAT = QuantFormat(
    name="W4A8_AWQ",
    trtllm_algo="W4A8_AWQ",
    weight="int4 groups of the AWQ-smoothed weight run as fp8 (one per-tensor fp8 "
    "scale over the groups), a pre-quant scale, static fp8 activations",
    packing="two int4 output rows per byte, low nibble = even row",
    trtllm_tensors=(
        "weight I8 [out/2,in]",
        "weights_scaling_factor F32 [out,in/g]",
        "weights_scaling_factor_2 F32 [1]",
        "activation_scaling_factor F32 [1]",
        "prequant_scaling_factor dtype [in]",
    ),
    strongly_typed=True,
    modelopt=ModelOpt(
        "W4A8_AWQ",
        ("weight_scale", "weight_scale_2", "input_scale", "pre_quant_scale"),
        fold_pre_quant_scale=True,
        group_fields=True,
        linear_tensors=_modelopt,
    ),
    compressed_tensors=NotCarried(PRE_QUANT_IN_CT),
    activations="static_fp8",
    weight_bits=4,
    trtllm_writer=_trtllm,
    fake_weight=_fake_weight,
    onnx_lowering=_onnx,
)

METHOD = Method(
    name="w4a8_awq",
    needs_data=True,
    uses_modelopt=True,
    formats=(FORMAT,),
    quantization_fields=_quantization_fields,
)
