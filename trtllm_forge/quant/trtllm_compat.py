"""Make a forge rank file loadable by ``trtllm-build`` where forge's layout differs.

forge stores every format already quantized, ModelOpt style, because its own
ONNX engines need the integers. For one format that is not what TensorRT-LLM
loads:

* ``W8A16``: TensorRT-LLM wants either a GPU-specific, kernel-interleaved int8
  ``[in, out]`` weight with ``per_channel_scale`` (made by a CUDA op at convert
  time) or a plain float weight it quantizes itself at build time (docs/trtllm-checkpoint.md
  §2: the portable form). forge's int8 ``[out, in]`` +
  ``weights_scaling_factor`` is neither, so the export dequantizes it: the float
  weight is exactly ``q × scale``, and TensorRT-LLM's per-channel requantization
  of it recovers the same grid up to its own rounding.

Every other format (W4A16_AWQ for int4_wo/awq/gptq, SmoothQuant, FP8, KV scales)
is already in the layout TensorRT-LLM's ``preprocess_weights`` expects.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from trtllm_forge.quant import layout


def trtllm_build_tensors(
    tensors: Mapping[str, torch.Tensor], quantization: Mapping[str, Any], dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    """One rank's tensors, rewritten where trtllm-build expects another layout."""
    out = dict(tensors)
    if quantization.get("quant_algo") != "W8A16":
        return out
    for name in list(out):
        if not name.endswith(".weights_scaling_factor"):
            continue
        module = name.removesuffix(".weights_scaling_factor")
        weight = out[f"{module}.weight"]
        if weight.dtype == torch.int8:
            out[f"{module}.weight"] = layout.dequantize_int8(weight, out.pop(name)).to(dtype)
    return out
