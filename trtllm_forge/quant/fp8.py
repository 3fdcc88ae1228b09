"""FP8 (E4M3) W8A8 through ModelOpt max calibration.

``per_tensor``: one scale per weight and one static scale per activation tensor
(``FP8``). ``per_channel_per_token``: one scale per output channel and dynamic
per-token activation scales (``FP8_PER_CHANNEL_PER_TOKEN``).

Everything forge knows about the method is here: its parameters, its two format records
(what each output target stores or why it refuses), and the formats' tensors, fake-quant
weights and ONNX lowerings, which the generic modules call through the records. The
activations are quantized by the generic rules (static, or per token).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from trtllm_forge.context import NullProgress, Progress
from trtllm_forge.quant.modelopt_method import quantizer
from trtllm_forge.quant.record_types import (
    FP8_ARGS,
    CompressedTensors,
    Method,
    ModelOpt,
    QuantFormat,
)

if TYPE_CHECKING:
    import torch

    from trtllm_forge.quant.record_types import OnnxOps, Tensors, TensorSource
    from trtllm_forge.quant.result import LinearQuant

    class Fp8Params(Protocol):
        """The validated parameters (quant/params.py builds their model from the recipe section)."""

        granularity: str


_NO_PROGRESS = NullProgress()


def modelopt_config(
    params: Fp8Params, targets: list[str], progress: Progress = _NO_PROGRESS
) -> dict[str, Any]:
    """The ModelOpt config forge calibrates with (tests hand it to ModelOpt's exporter too)."""
    from trtllm_forge.quant import modelopt_glue

    mtq = modelopt_glue.mtq(progress)
    per_channel = params.granularity == "per_channel_per_token"
    preset = copy.deepcopy(
        mtq.FP8_PER_CHANNEL_PER_TOKEN_CFG if per_channel else mtq.FP8_DEFAULT_CFG
    )
    return modelopt_glue.target_config(preset, targets)


quantize_model = quantizer(modelopt_config, "FP8")


# --- the formats' tensors (torch is imported when they run) ---


def _scale(lq: LinearQuant) -> torch.Tensor:
    from trtllm_forge.quant import layout

    return layout.scale_from_amax(lq.weight_amax, layout.FP8_MAX)


def _input_scale(lq: LinearQuant) -> torch.Tensor:
    from trtllm_forge.quant import layout

    if lq.input_amax is None:
        raise ValueError("calibration produced no activation range")
    return layout.scale_from_amax(lq.input_amax, layout.FP8_MAX)


def _trtllm_tensor(lq: LinearQuant, row: bool, dtype: torch.dtype) -> Tensors:
    from trtllm_forge.quant import layout

    scale, act = _scale(lq), _input_scale(lq)
    return {
        "weight": layout.quantize_fp8(lq.weight, scale),
        "weights_scaling_factor": scale.reshape(1),
        "activation_scaling_factor": act.reshape(1),
    }


def _trtllm_channel(lq: LinearQuant, row: bool, dtype: torch.dtype) -> Tensors:
    from trtllm_forge.quant import layout

    scale = _scale(lq)
    return {"weight": layout.quantize_fp8(lq.weight, scale), "per_channel_scale": scale}


def _modelopt_tensor(lq: LinearQuant, dtype: torch.dtype) -> Tensors:
    """The writer adds ``input_scale``."""
    import torch

    from trtllm_forge.quant import layout

    # ModelOpt divides the Python float (double) amax, then stores fp32.
    scale = torch.tensor(float(lq.weight_amax.item()) / layout.FP8_MAX)
    # A 0-d fp32 scale does not promote the weight: the quotient is in the checkpoint dtype.
    quotient = lq.weight.to(dtype) / scale
    return {"weight": quotient.to(torch.float8_e4m3fn), "weight_scale": scale}


def _modelopt_channel(lq: LinearQuant, dtype: torch.dtype) -> Tensors:
    import torch

    from trtllm_forge.quant import layout

    scale = layout.divide(lq.weight_amax.float(), layout.FP8_MAX)
    weight = lq.weight.to(dtype).float()
    return {"weight": (weight / scale[:, None]).to(torch.float8_e4m3fn), "weight_scale": scale}


def _ct_tensor(lq: LinearQuant, dtype: torch.dtype) -> Tensors:
    out = _ct_channel(lq, dtype)
    out["input_scale"] = _input_scale(lq).reshape(1).to(dtype)
    return out


def _ct_channel(lq: LinearQuant, dtype: torch.dtype) -> Tensors:
    """``weight_scale`` [out, 1] per channel, [1] per tensor, in the checkpoint dtype."""
    from trtllm_forge.quant import layout

    scale = _scale(lq)
    shaped = scale[:, None] if scale.dim() == 1 else scale.reshape(1)
    return {
        "weight": layout.quantize_fp8(lq.weight.float(), scale),
        "weight_scale": shaped.to(dtype),
    }


def _fake_weight(param: str) -> Any:
    def weight(reader: TensorSource, module: str) -> torch.Tensor:
        from trtllm_forge.quant import layout

        scale = reader.get(f"{module}.{param}").float()
        # Per channel as [out] or [1, out] (ModelOpt's export); per tensor as [1].
        scale = scale.reshape(-1) if scale.numel() > 1 else scale
        return layout.dequantize_fp8(reader.get(f"{module}.weight"), scale)

    return weight


def _onnx_tensor(ops: OnnxOps, x: str) -> str:
    """Q/DQ fp8 (static) → MatMul(DQ(fp8 Wᵀ, scalar))."""
    x = ops.qdq_static(x, ops.scalar("activation_scaling_factor"), "fp8", "act")
    scale = ops.scalar("weights_scaling_factor")
    return ops.matmul(x, ops.op("DequantizeLinear", [ops.stored_weight_t(), scale], "w_dq"))


def _onnx_channel(ops: OnnxOps, x: str) -> str:
    """Q/DQ fp8 per token → MatMul(DQ(fp8 Wᵀ, per column))."""
    x = ops.qdq_per_token(x, "fp8", "act")
    per_column = ops.tensor("per_channel_scale").float().reshape(ops.out_features)
    scale = ops.constant("per_channel_scale", per_column)
    w = ops.op("DequantizeLinear", [ops.stored_weight_t(), scale], "w_dq", axis=1)
    return ops.matmul(x, w)


PER_TENSOR = QuantFormat(
    name="FP8",
    trtllm_algo="FP8",
    weight="float8 e4m3, one scale per tensor; static fp8 activations",
    packing="float8_e4m3fn [out, in]",
    trtllm_tensors=(
        "weight F8_E4M3",
        "weights_scaling_factor F32 [1]",
        "activation_scaling_factor F32 [1]",
    ),
    strongly_typed=True,
    modelopt=ModelOpt(
        "FP8",
        ("weight_scale", "input_scale"),
        share_input=False,
        linear_tensors=_modelopt_tensor,
        numerics={"dynamic": False, "num_bits": 8, "type": "float"},
    ),
    compressed_tensors=CompressedTensors(
        "float-quantized",
        {**FP8_ARGS, "strategy": "tensor"},
        {**FP8_ARGS, "strategy": "tensor", "dynamic": False},
        ("weight", "weight_scale", "input_scale"),
        linear_tensors=_ct_tensor,
    ),
    activations="static_fp8",
    trtllm_share_input=True,
    trtllm_writer=_trtllm_tensor,
    fake_weight=_fake_weight("weights_scaling_factor"),
    onnx_lowering=_onnx_tensor,
)

PER_CHANNEL_PER_TOKEN = QuantFormat(
    name="FP8_PER_CHANNEL_PER_TOKEN",
    trtllm_algo="FP8_PER_CHANNEL_PER_TOKEN",
    weight="float8 e4m3, one scale per output channel; dynamic per-token activations",
    packing="float8_e4m3fn [out, in]",
    trtllm_tensors=("weight F8_E4M3", "per_channel_scale F32 [out]"),
    strongly_typed=True,
    modelopt=ModelOpt(
        "FP8_PER_CHANNEL_PER_TOKEN", ("weight_scale",), linear_tensors=_modelopt_channel
    ),
    compressed_tensors=CompressedTensors(
        "float-quantized",
        {**FP8_ARGS, "strategy": "channel"},
        {**FP8_ARGS, "strategy": "token", "dynamic": True},
        ("weight", "weight_scale"),
        linear_tensors=_ct_channel,
    ),
    activations="per_token_fp8",
    trtllm_writer=_trtllm_channel,
    fake_weight=_fake_weight("per_channel_scale"),
    onnx_lowering=_onnx_channel,
)


def _format_of(quant: Mapping[str, Any]) -> str:
    per_channel = quant.get("granularity") == "per_channel_per_token"
    return PER_CHANNEL_PER_TOKEN.name if per_channel else PER_TENSOR.name


METHOD = Method(
    name="fp8",
    needs_data=True,
    uses_modelopt=True,
    formats=(PER_TENSOR, PER_CHANNEL_PER_TOKEN),
    format_of=_format_of,
    doc_cases=({"granularity": "per_tensor"}, {"granularity": "per_channel_per_token"}),
)
