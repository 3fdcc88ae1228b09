"""NVFP4 (FP4 E2M1 in blocks of 16, FP8 E4M3 block scales, FP32 per-tensor scales)
through ModelOpt's ``NVFP4_DEFAULT_CFG`` max calibration.

Everything forge knows about the method is here: its parameters, its format record
(what each output target stores or why it refuses), and the format's tensors and fake
quant, which the generic modules call through the record. The E2M1 arithmetic itself
is here too, shared with the NVFP4 KV cache (its record, ``KV_FORMAT``, is here as well).

Calibration only yields per-tensor ranges — the weight's (its FP32 global scale) and
the input's (the activations' static global scale); block scales follow from the
weight when it is written, and from the activations at run time. ModelOpt's
calibration runs on the CPU; only its fake-quant forward needs CUDA, which forge does
not use (forge's own fake quant, below, equals ModelOpt's exporter bit for bit,
tests/test_quant_nvfp4.py).
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from trtllm_forge.context import NullProgress, Progress
from trtllm_forge.quant.modelopt_method import quantizer
from trtllm_forge.quant.record_types import (
    CompressedTensors,
    KvFormat,
    Method,
    ModelOpt,
    NotCarried,
    QuantFormat,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    import torch

    from trtllm_forge.quant.record_types import Tensors, TensorSource
    from trtllm_forge.quant.result import LinearQuant

_NO_PROGRESS = NullProgress()
BLOCK = 16  # E2M1 values sharing one FP8 scale
# compressed-tensors' QuantizationArgs of NVFP4 numbers (the KV cache's too).
CT_ARGS: dict[str, Any] = {
    "num_bits": 4,
    "type": "float",
    "symmetric": True,
    "strategy": "tensor_group",
    "scale_dtype": "torch.float8_e4m3fn",  # block scales (activations: computed) are FP8
}


def _quantization_fields(params: object) -> dict[str, Any]:
    return {"group_size": BLOCK}


def modelopt_config(
    params: object, targets: list[str], progress: Progress = _NO_PROGRESS
) -> dict[str, Any]:
    """The ModelOpt config forge calibrates with (tests hand it to ModelOpt's exporter too)."""
    from trtllm_forge.quant import modelopt_glue

    preset = copy.deepcopy(modelopt_glue.mtq(progress).NVFP4_DEFAULT_CFG)
    return modelopt_glue.target_config(preset, targets)


quantize_model = quantizer(modelopt_config, "NVFP4")


# --- E2M1 arithmetic (docs/trtllm-checkpoint.md §2): values in blocks of 16 along the
# input, each block scaled by an FP8 E4M3 factor, all of them by one FP32 per-tensor
# factor. torch is imported when they run. ---

FP4_MAX = 6.0
_E2M1 = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)  # magnitudes by 3-bit code
_FP8_SMALLEST_SCALE = 2.0**-9  # the smallest positive float8 e4m3fn (subnormal)


def global_scale(amax: torch.Tensor) -> torch.Tensor:
    """Per-tensor dequant factor ``amax / (6 · 448)``: block scales then fit FP8's range."""
    from trtllm_forge.quant.layout import FP8_MAX

    return amax.float() / (FP4_MAX * FP8_MAX)


def block_scales(weight: torch.Tensor, global_scale: torch.Tensor) -> torch.Tensor:
    """FP8 E4M3 scale of each 16-wide input block ``[..., in / 16]``, relative to
    ``global_scale``; an all-zero block gets 1, and every scale is kept inside FP8's range."""
    import torch

    from trtllm_forge.quant.layout import FP8_MAX

    blocks = weight.float().reshape(*weight.shape[:-1], -1, BLOCK)
    scale = blocks.abs().amax(dim=-1) / (FP4_MAX * global_scale)
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    return scale.clamp(min=_FP8_SMALLEST_SCALE, max=FP8_MAX).to(torch.float8_e4m3fn)


def e2m1_codes(x: torch.Tensor) -> torch.Tensor:
    """4-bit E2M1 codes (bit 3 = sign, bits 0-2 = index into the magnitudes) of the
    nearest value; a tie goes to the even index (round half to even)."""
    import torch

    distance = (x.abs().unsqueeze(-1) - torch.tensor(_E2M1)).abs()
    nearest = distance == distance.amin(dim=-1, keepdim=True)
    even_first = nearest.to(torch.uint8) * (2 - torch.arange(8) % 2).to(torch.uint8)
    index = even_first.argmax(dim=-1).to(torch.uint8)
    return index | ((x < 0).to(torch.uint8) << 3)


def e2m1_values(codes: torch.Tensor) -> torch.Tensor:
    import torch

    magnitude = torch.tensor(_E2M1)[(codes & 0x7).long()]
    return torch.where(codes & 0x8 != 0, -magnitude, magnitude)


def pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """``[..., n]`` 4-bit codes → uint8 ``[..., n / 2]``, low nibble = even index."""
    return codes[..., 0::2] | (codes[..., 1::2] << 4)


def unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    import torch

    both = torch.stack([packed & 0x0F, packed >> 4], dim=-1)
    return both.reshape(*packed.shape[:-1], -1)


def quantize(weight: torch.Tensor, global_scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(packed uint8 ``[out, in / 2]``, FP8 block scales ``[out, in / 16]``)."""
    scales = block_scales(weight, global_scale)
    blocks = weight.reshape(*weight.shape[:-1], -1, BLOCK)
    scaled = blocks / (scales.float() * global_scale).unsqueeze(-1)
    return pack_nibbles(e2m1_codes(scaled.reshape(weight.shape))), scales


def dequantize(
    packed: torch.Tensor, scales: torch.Tensor, global_scale: torch.Tensor
) -> torch.Tensor:
    values = e2m1_values(unpack_nibbles(packed))
    factor = (scales.float() * global_scale.float()).repeat_interleave(BLOCK, dim=-1)
    return values * factor


def fake_quant(x: torch.Tensor, global_scale: torch.Tensor) -> torch.Tensor:
    """Dynamic NVFP4 activations (or a cache): per-16 FP8 block scales under a static
    global scale."""
    scales = block_scales(x, global_scale)
    factor = (scales.float() * global_scale).repeat_interleave(BLOCK, dim=-1)
    return (e2m1_values(e2m1_codes(x.float() / factor)) * factor).to(x.dtype)


# --- the format's tensors (torch is imported when they run) ---


def _packed(lq: LinearQuant, weight: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(packed e2m1 uint8 [out, in/2], fp8 block scales [out, in/16], 0-d weight global
    scale, 0-d activation global scale), the global scales amax / (6 · 448)."""
    if lq.input_amax is None:
        raise ValueError("calibration produced no activation range")
    weight_global = global_scale(lq.weight_amax).reshape(())
    packed, scales = quantize(weight, weight_global)
    return packed, scales, weight_global, global_scale(lq.input_amax).reshape(())


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
    weight_global = reader.get(f"{module}.weights_scaling_factor_2").float().reshape(())
    scales = reader.get(f"{module}.weights_scaling_factor")  # fp8, decoded with the global
    return dequantize(reader.get(f"{module}.weight"), scales, weight_global)


def _fake_input(reader: TensorSource, module: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """E2M1 per 16 channels, FP8 block scales under the static global scale."""
    static = reader.get(f"{module}.activation_scaling_factor").float().reshape(())
    return lambda x: fake_quant(x, static)


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


# --- the NVFP4 KV cache (ModelOpt's NVFP4_KV_CFG): E2M1 in blocks of 16 along the head
# dimension, FP8 block scales computed as the cache is written, one static FP32 scale per
# cache (amax / (6 · 448)). compressed-tensors 0.20 expresses it as a tensor_group
# scheme, whose static part is ``self_attn.k_global_scale`` (the reciprocal). ---


def _kv_trtllm_scales(k_amax: float, v_amax: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-tensor scales, 0-d as ModelOpt's TensorRT-LLM export writes them."""
    import torch

    return global_scale(torch.tensor(k_amax)), global_scale(torch.tensor(v_amax))


def _kv_ct_tensors(k_amax: float, v_amax: float, dtype: torch.dtype) -> Tensors:
    """fp32 ``k_global_scale`` / ``v_global_scale`` [1], the reciprocals of the scales."""
    import torch

    k, v = (1.0 / global_scale(torch.tensor([a])) for a in (k_amax, v_amax))
    return {"k_global_scale": k, "v_global_scale": v}


KV_FORMAT = KvFormat(
    "nvfp4",
    "NVFP4",
    448.0,
    "NVFP4",
    {**CT_ARGS, "group_size": BLOCK, "dynamic": "local"},
    onnx=NotCarried(
        "ONNX Runtime 1.31's CPU provider has no QuantizeLinear to FLOAT4E2M1 (opset "
        "23-25: NOT_IMPLEMENTED), so an NVFP4 KV cache cannot be Q/DQ'd; the Hugging Face "
        "formats carry it (build.backend: hf), verified by fake quant"
    ),
    trtllm_scales=_kv_trtllm_scales,
    fake_quant=fake_quant,
    ct_tensors=_kv_ct_tensors,
)
