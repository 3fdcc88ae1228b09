"""SmoothQuant through ModelOpt: migrate activation outliers into the weights.

Per linear, ModelOpt takes per-input-channel activation maxima ``a`` and weight
maxima ``w`` and picks ``s = a^α / w^(1-α)``; activations are divided by ``s``
(kept as ``pre_quant_scale = 1/s``) and weights multiplied by it, then both are
INT8-quantized: weights per output channel, activations per tensor (static
range) or, with ``activations: per_token``, per token at run time (the static
range is then unused).

Everything forge knows about the method is here: its two format records (static
per-tensor INT8 activations, or TensorRT-LLM's per-token plugin layout) and their
hooks, which the generic modules call through the records.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from trtllm_forge.context import NullProgress, Progress
from trtllm_forge.errors import recipe_error
from trtllm_forge.quant import int8_wo
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

    from trtllm_forge.quant.record_types import OnnxOps, Tensors
    from trtllm_forge.quant.result import LinearQuant, QuantResult
    from trtllm_forge.quant.targets import TargetPlan

    class SmoothQuantParams(Protocol):
        """The validated parameters (quant/params.py builds their model from the recipe section)."""

        alpha: float
        activations: str


_NO_PROGRESS = NullProgress()


def modelopt_config(
    params: SmoothQuantParams, targets: list[str], progress: Progress = _NO_PROGRESS
) -> dict[str, Any]:
    """The ModelOpt config forge calibrates with (tests hand it to ModelOpt's exporter too)."""
    from trtllm_forge.quant import modelopt_glue

    preset = copy.deepcopy(modelopt_glue.mtq(progress).INT8_SMOOTHQUANT_CFG)
    algorithm = {"method": "smoothquant", "alpha": params.alpha}
    return modelopt_glue.target_config(preset, targets, algorithm=algorithm)


_calibrated = quantizer(modelopt_config, "SmoothQuant")


def quantize_model(
    model: torch.nn.Module,
    data: Any,
    params: SmoothQuantParams,
    targets: list[str],
    progress: Progress = _NO_PROGRESS,
) -> QuantResult:
    """ModelOpt's SmoothQuant, each linear's fp32 smoothing factor kept as
    ``smooth_factor``: in float16/bfloat16 the ``pre_quant_scale`` ModelOpt keeps is
    rounded to the weight dtype and no longer gives the smoothed weight back, so without
    the factor the calibration records store every weight in float32 (twice a float16
    model; quant/linear_records.py checks the rebuild when it writes them)."""
    from dataclasses import replace

    modules = dict(model.named_modules())
    # Taken before ModelOpt smooths the weights in place.
    columns = {name: modules[name].weight.detach().abs().amax(dim=0) for name in targets}
    result = _calibrated(model, data, params, targets, progress)
    modules = dict(model.named_modules())
    for name, linear in result.linears.items():
        activations = getattr(modules[name].input_quantizer, "_amax_for_smoothing", None)
        if activations is not None and name in columns:
            scale = smoothing_scale(columns[name], activations, params.alpha)
            result.linears[name] = replace(linear, smooth_factor=1.0 / scale)
    return result


def smoothing_scale(
    column_amax: torch.Tensor, activation_amax: torch.Tensor, alpha: float
) -> torch.Tensor:
    """The fp32 ``s = w^(1-α) / a^α`` per input channel that ModelOpt 0.47's SmoothQuant
    divides activations by and multiplies weights with (its ``smoothquant`` postprocess):
    weight maxima in the weight dtype, activation maxima in fp32, channels without
    activations left at 1, clamped to [1e-4, 1e4]. The same operations on the same
    device as ModelOpt, so the result is its bits (checked where it is used)."""
    activations = activation_amax.to(column_amax.device).float().reshape(-1)
    scale = column_amax.reshape(-1).pow(1 - alpha) / activations.pow(alpha)
    epsilon = 1.0 / (1 << 31)
    if scale.min() <= epsilon:
        scale[activations <= epsilon] = 1
    return scale.clamp(min=1e-4, max=1e4)


def _check_plan(params: SmoothQuantParams, plan: TargetPlan, hf_config: Mapping[str, Any]) -> None:
    """The per-token plugin layout smooths whole decoder layers through their norms."""
    from trtllm_forge.quant.targets import check_smoothing_fold

    if params.activations != "per_token":
        return
    if plan.excluded:
        raise recipe_error(
            "smoothquant with activations: per_token cannot exclude decoder linears "
            f"(excluded: {', '.join(t.module for t in plan.excluded[:3])})",
            hint="TensorRT-LLM's SmoothQuant plugin layers cover whole decoder layers; "
            "use activations: per_tensor to exclude single layers",
        )
    check_smoothing_fold(hf_config)


# --- the formats' tensors (torch is imported when they run) ---


def _need(t: torch.Tensor | None, what: str) -> torch.Tensor:
    if t is None:
        raise ValueError(f"calibration produced no {what}")
    return t


def _trtllm_static(lq: LinearQuant, row: bool, dtype: torch.dtype) -> Tensors:
    from trtllm_forge.quant import layout

    out = int8_wo.trtllm_int8(lq)
    act = layout.scale_from_amax(_need(lq.input_amax, "activation range"), layout.INT8_MAX)
    pqs = _need(lq.pre_quant_scale, "smoothing scale")
    out["activation_scaling_factor"] = act.reshape(1)
    out["prequant_scaling_factor"] = pqs.to(dtype)
    return out


def _trtllm_plugin(lq: LinearQuant, row: bool, dtype: torch.dtype) -> Tensors:
    from trtllm_forge.quant import layout

    scale = layout.scale_from_amax(lq.weight_amax, layout.INT8_MAX)
    out = {
        "weight": layout.quantize_int8(lq.weight, scale),
        "per_channel_scale": scale.reshape(1, -1),
    }
    if row:
        # Row layers divide their input by `smoother` at run time; ModelOpt's
        # pre_quant_scale multiplies it, so the smoother is its inverse.
        pqs = _need(lq.pre_quant_scale, "smoothing scale")
        out["smoother"] = (1.0 / pqs.float()).reshape(1, -1)
    return out


def _onnx_static(ops: OnnxOps, x: str) -> str:
    """x·pqs → Q/DQ int8 (static scale) → MatMul(DQ(int8 Wᵀ))."""
    x = ops.mul_input(x, "prequant_scaling_factor")
    x = ops.qdq_static(x, ops.scalar("activation_scaling_factor"), "int8", "act")
    return ops.matmul(x, ops.dq_per_column("weights_scaling_factor"))


def _onnx_plugin(ops: OnnxOps, x: str) -> str:
    """[x ÷ smoother] → Q/DQ int8 per token → MatMul(DQ(int8 Wᵀ))."""
    from trtllm_forge.checkpoint.layout import parse_name
    from trtllm_forge.quant.targets import SMOOTHING_NORMS

    # The norm's scale_to_int is 1.0 under per-token scaling (the runtime computes it).
    parsed = parse_name(f"{ops.module}.weight")
    for norm in SMOOTHING_NORMS if parsed is not None else ():
        ops.consume(f"transformer.layers.{parsed.layer}.{norm}.scale_to_int")  # type: ignore[union-attr]
    x = ops.div_input(x, "smoother")
    x = ops.qdq_per_token(x, "int8", "act")
    return ops.matmul(x, ops.dq_per_column("per_channel_scale"))


STATIC = QuantFormat(
    name="W8A8_SQ_PER_CHANNEL",
    trtllm_algo="W8A8_SQ_PER_CHANNEL",
    weight="int8 per output channel of the smoothed weight; static int8 activations",
    packing="int8 [out, in]",
    trtllm_tensors=(
        "weight I8",
        "weights_scaling_factor F32 [out]",
        "activation_scaling_factor F32 [1]",
        "prequant_scaling_factor dtype [in]",
    ),
    strongly_typed=False,
    modelopt=ModelOpt(
        "W8A8_SQ_PER_CHANNEL",
        ("weight_scale", "input_scale", "pre_quant_scale"),
        linear_tensors=int8_wo.modelopt_int8,
    ),
    compressed_tensors=NotCarried(PRE_QUANT_IN_CT),
    activations="static_int8",
    trtllm_writer=_trtllm_static,
    fake_weight=int8_wo.int8_weight("weights_scaling_factor"),  # type: ignore[arg-type]
    onnx_lowering=_onnx_static,
)

PER_TOKEN_PLUGIN = QuantFormat(
    name="W8A8_SQ_PER_CHANNEL_PER_TOKEN_PLUGIN",
    trtllm_algo="W8A8_SQ_PER_CHANNEL_PER_TOKEN_PLUGIN",
    weight="int8 per output channel; dynamic per-token int8 activations",
    packing="int8 [out, in]",
    trtllm_tensors=("weight I8", "per_channel_scale F32 [1,out]", "smoother F32 [1,in]"),
    strongly_typed=False,
    modelopt=NotCarried(
        "ModelOpt's format has no dynamic per-token INT8 activations "
        "(its SmoothQuant is W8A8_SQ_PER_CHANNEL with a static input scale)"
    ),
    compressed_tensors=NotCarried(
        "the row layers' smoother (o_proj/down_proj inputs) has no place in compressed-tensors"
    ),
    activations="per_token_int8",
    trtllm_share_input=True,
    folds_smoothing_into_norm=True,
    trtllm_writer=_trtllm_plugin,
    fake_weight=int8_wo.int8_weight("per_channel_scale"),  # type: ignore[arg-type]
    onnx_lowering=_onnx_plugin,
)


def _format_of(quant: Mapping[str, Any]) -> str:
    per_token = quant.get("activations") == "per_token"
    return PER_TOKEN_PLUGIN.name if per_token else STATIC.name


def _quantization_fields(params: SmoothQuantParams) -> dict[str, Any]:
    return {"smoothquant_val": params.alpha}


METHOD = Method(
    name="smoothquant",
    needs_data=True,
    uses_modelopt=True,
    formats=(STATIC, PER_TOKEN_PLUGIN),
    format_of=_format_of,
    quantization_fields=_quantization_fields,
    doc_cases=({"activations": "per_tensor"}, {"activations": "per_token"}),
    check_plan=_check_plan,
)
