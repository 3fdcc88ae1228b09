"""The KV-cache formats: recipe name, TensorRT-LLM algo, and each HF target's spelling.

Apart from the weight formats (quant/records.py) so that the method parameters
(quant/params.py) read the KV algos without importing the method registry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from trtllm_forge.quant.nvfp4 import CT_ARGS as NVFP4_CT_ARGS
from trtllm_forge.quant.record_types import NotCarried


@dataclass(frozen=True)
class KvFormat:
    """A KV-cache format: recipe name, TensorRT-LLM algo, and each HF target's spelling.

    ``qmax`` turns a cache's calibrated max |K| or |V| into the HF targets' scale
    (amax / qmax; ModelOpt writes amax / 448 for FP8 and NVFP4 alike). ``onnx`` says why
    an ONNX engine cannot run the format exactly, or None when engine/onnx/quant_lowering.py does.
    """

    name: str
    trtllm_algo: str
    qmax: float
    modelopt: str | NotCarried  # hf_quant_config kv_cache_quant_algo
    compressed_tensors: dict[str, Any] | NotCarried  # kv_cache_scheme
    onnx: NotCarried | None = None


KV_FORMATS: dict[str, KvFormat] = {
    "int8": KvFormat(
        "int8",
        "INT8",
        127.0,
        NotCarried(
            "ModelOpt's HF exporter writes only FP8 (and NVFP4) KV-cache scales; 0.47 refuses "
            "an INT8 KV cache ('Invalid KV cache quantization format')"
        ),
        {"num_bits": 8, "type": "int", "symmetric": True, "strategy": "tensor", "dynamic": False},
    ),
    "fp8": KvFormat(
        "fp8",
        "FP8",
        448.0,
        "FP8",
        {
            "num_bits": 8,
            "type": "float",
            "symmetric": True,
            "strategy": "tensor",
            "dynamic": False,
        },
    ),
    # NVFP4 (ModelOpt's NVFP4_KV_CFG): E2M1 values in blocks of 16 along the head
    # dimension, FP8 E4M3 block scales computed as the cache is written, one static FP32
    # scale per cache (amax / (6 · 448)). compressed-tensors 0.20 expresses it as a
    # tensor_group scheme, whose static part is `self_attn.k_global_scale` (the reciprocal).
    "nvfp4": KvFormat(
        "nvfp4",
        "NVFP4",
        448.0,
        "NVFP4",
        {**NVFP4_CT_ARGS, "group_size": 16, "dynamic": "local"},
        onnx=NotCarried(
            "ONNX Runtime 1.31's CPU provider has no QuantizeLinear to FLOAT4E2M1 (opset "
            "23-25: NOT_IMPLEMENTED), so an NVFP4 KV cache cannot be Q/DQ'd; the Hugging Face "
            "formats carry it (build.backend: hf), verified by fake quant"
        ),
    ),
}

# The recipe's kv_cache names and their TensorRT-LLM algos.
KV_CACHE_ALGOS: dict[str, str] = {name: kv.trtllm_algo for name, kv in KV_FORMATS.items()}
