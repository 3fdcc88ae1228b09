"""NVFP4 (FP4 E2M1 in blocks of 16, FP8 E4M3 block scales, FP32 per-tensor scales)
through ModelOpt's ``NVFP4_DEFAULT_CFG`` max calibration.

Everything forge knows about the method is here: its parameters, its format record
(what each output target stores or why it refuses), and the format's tensors and fake
quant, which the generic modules call through the record. The E2M1 arithmetic itself
is quant/layout.py's, shared with the NVFP4 KV cache (quant/kv_formats.py).

Calibration only yields per-tensor ranges — the weight's (its FP32 global scale) and
the input's (the activations' static global scale); block scales follow from the
weight when it is written, and from the activations at run time. ModelOpt's
calibration runs on the CPU; only its fake-quant forward needs CUDA, which forge does
not use (forge's own fake quant, quant/layout.py, equals ModelOpt's exporter bit for
bit, tests/test_quant_nvfp4.py).
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from trtllm_forge.context import NullProgress, Progress
from trtllm_forge.quant.record_types import (
    CompressedTensors,
    Method,
    ModelOpt,
    NotCarried,
    QuantFormat,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    import torch
    from torch import nn

    from trtllm_forge.quant.calibration import CalibrationData
    from trtllm_forge.quant.record_types import Tensors, TensorSource
    from trtllm_forge.quant.result import LinearQuant, QuantResult

_NO_PROGRESS = NullProgress()
BLOCK = 16  # E2M1 values sharing one FP8 scale (quant/layout.py: NVFP4_BLOCK)
# compressed-tensors' QuantizationArgs of NVFP4 numbers (the KV cache's too, kv_formats.py).
CT_ARGS: dict[str, Any] = {
    "num_bits": 4,
    "type": "float",
    "symmetric": True,
    "strategy": "tensor_group",
    "scale_dtype": "torch.float8_e4m3fn",  # block scales (activations: computed) are FP8
}


def _quantization_fields(params: object) -> dict[str, Any]:
    return {"group_size": BLOCK}


def quantize_model(
    model: nn.Module,
    data: CalibrationData | None,
    params: object,
    targets: list[str],
    progress: Progress = _NO_PROGRESS,
) -> QuantResult:
    from trtllm_forge.quant import modelopt_glue

    if data is None:
        raise ValueError("NVFP4 needs calibration data (the activations' global scale)")
    config = modelopt_config(params, targets, progress)
    modelopt_glue.calibrate(model, config, data, progress)
    return modelopt_glue.extract(model, targets)


def modelopt_config(
    params: object, targets: list[str], progress: Progress = _NO_PROGRESS
) -> dict[str, Any]:
    """The ModelOpt config forge calibrates with (tests hand it to ModelOpt's exporter too)."""
    from trtllm_forge.quant import modelopt_glue

    preset = copy.deepcopy(modelopt_glue.mtq(progress).NVFP4_DEFAULT_CFG)
    return modelopt_glue.target_config(preset, targets)


# --- the format's tensors (torch is imported when they run) ---


def _packed(lq: LinearQuant, weight: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(packed e2m1 uint8 [out, in/2], fp8 block scales [out, in/16], 0-d weight global
    scale, 0-d activation global scale), the global scales amax / (6 · 448)."""
    from trtllm_forge.quant import layout

    if lq.input_amax is None:
        raise ValueError("calibration produced no activation range")
    global_scale = layout.nvfp4_global_scale(lq.weight_amax).reshape(())
    packed, scales = layout.quantize_nvfp4(weight, global_scale)
    return packed, scales, global_scale, layout.nvfp4_global_scale(lq.input_amax).reshape(())


def _trtllm(lq: LinearQuant, row: bool, dtype: torch.dtype) -> Tensors:
    packed, scales, weight_global, input_global = _packed(lq, lq.weight)
    return {
        "weight": packed,
        "weights_scaling_factor": scales,
        # 0-d, as ModelOpt's TensorRT-LLM export writes them (NVFP4 builds accept it).
        "weights_scaling_factor_2": weight_global,
        "activation_scaling_factor": input_global,
    }


def _modelopt(lq: LinearQuant, dtype: torch.dtype) -> Tensors:
    """The weight is rounded to the checkpoint dtype first, as ModelOpt's exporter does."""
    packed, scales, weight_global, input_global = _packed(lq, lq.weight.to(dtype))
    return {
        "weight": packed,
        "weight_scale": scales,
        "weight_scale_2": weight_global,
        "input_scale": input_global,
    }


def _compressed_tensors(lq: LinearQuant, dtype: torch.dtype) -> Tensors:
    """``nvfp4-pack-quantized``: the same packed e2m1 and fp8 block scales as ModelOpt's;
    compressed-tensors' global scales are the reciprocals (dequant = q · scale / global)."""
    packed, scales, weight_global, input_global = _packed(lq, lq.weight.float())
    return {
        "weight_packed": packed,
        "weight_scale": scales,
        "weight_global_scale": (1.0 / weight_global).reshape(1),
        "input_global_scale": (1.0 / input_global).reshape(1),
    }


def _fake_weight(reader: TensorSource, module: str) -> torch.Tensor:
    from trtllm_forge.quant import layout

    global_scale = reader.get(f"{module}.weights_scaling_factor_2").float().reshape(())
    scales = reader.get(f"{module}.weights_scaling_factor")  # fp8, decoded with the global
    return layout.dequantize_nvfp4(reader.get(f"{module}.weight"), scales, global_scale)


def _fake_input(reader: TensorSource, module: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """E2M1 per 16 channels, FP8 block scales under the static global scale."""
    from trtllm_forge.quant import layout

    static = reader.get(f"{module}.activation_scaling_factor").float().reshape(())
    return lambda x: layout.fake_quant_nvfp4(x, static)


FORMAT = QuantFormat(
    name="NVFP4",
    trtllm_algo="NVFP4",
    weight="fp4 e2m1 in blocks of 16 input channels, one fp8 e4m3 scale per block and "
    "one fp32 scale per tensor; activations the same, block scales computed at run time",
    packing="uint8 [out, in/2], two inputs per byte, low nibble = even input",
    trtllm_tensors=(
        "weight U8 [out,in/2]",
        "weights_scaling_factor F8_E4M3 [out,in/16]",
        "weights_scaling_factor_2 F32 []",
        "activation_scaling_factor F32 []",
    ),
    strongly_typed=True,
    modelopt=ModelOpt(
        "NVFP4",
        ("weight_scale", "weight_scale_2", "input_scale"),
        block_size=BLOCK,
        linear_tensors=_modelopt,
        numerics={"dynamic": False, "num_bits": 4, "type": "float", "group_size": BLOCK},
    ),
    compressed_tensors=CompressedTensors(
        "nvfp4-pack-quantized",
        {**CT_ARGS, "dynamic": False},
        {**CT_ARGS, "dynamic": "local"},
        ("weight_packed", "weight_scale", "weight_global_scale", "input_global_scale"),
        linear_tensors=_compressed_tensors,
        group_size=BLOCK,
        # compressed-tensors 0.20 unpacks NVFP4 weights to bfloat16 whatever the model's
        # dtype (a float32 model then fails in its first GEMM).
        load_dtype="bfloat16",
    ),
    activations="own",
    weight_bits=4,
    trtllm_share_input=True,
    onnx=NotCarried(
        "ONNX Runtime 1.31's CPU provider has no QuantizeLinear to FLOAT4E2M1 "
        "(opset 23-25: NOT_IMPLEMENTED), so NVFP4 activations cannot be Q/DQ'd; the "
        "Hugging Face formats carry it (build.backend: hf), verified by fake quant"
    ),
    trtllm_writer=_trtllm,
    fake_weight=_fake_weight,
    fake_input=_fake_input,
)

METHOD = Method(
    name="nvfp4",
    needs_data=True,
    uses_modelopt=True,
    formats=(FORMAT,),
    quantization_fields=_quantization_fields,
)
