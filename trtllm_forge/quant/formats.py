"""TensorRT-LLM tensors of one quantized linear, per ``quant_algo``
(docs/trtllm-checkpoint.md §2).

Each builder turns a fused :class:`LinearQuant` into ``{param: tensor}`` for one
TensorRT-LLM module (``weight`` plus its scales). A method declared in its own module
brings its builder in its format record (``trtllm_writer``); :func:`builder` finds
either. Shapes and dtypes of the built-in ones:

============================================  ==========================================
quant_algo                                    tensors (out/in = the module's sizes)
============================================  ==========================================
W8A16                                         weight I8 [out,in]; weights_scaling_factor F32 [out]
W4A16_AWQ                                     weight I8 [out/2,in] (two int4 rows per byte);
                                              weights_scaling_factor F32 [out,in/g];
                                              prequant_scaling_factor dtype [in] (AWQ only)
W8A8_SQ_PER_CHANNEL                           weight I8; weights_scaling_factor F32 [out];
                                              activation_scaling_factor F32 [1];
                                              prequant_scaling_factor dtype [in]
W8A8_SQ_PER_CHANNEL_PER_TOKEN_PLUGIN          weight I8; per_channel_scale F32 [1,out];
                                              row layers: smoother F32 [1,in]; column layers'
                                              smoothing is folded into the norm before them
============================================  ==========================================
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from trtllm_forge.quant import kv_formats, layout, records
from trtllm_forge.quant.result import LinearQuant

Tensors = dict[str, torch.Tensor]
Builder = Callable[[LinearQuant, bool, torch.dtype], Tensors]


def _require(t: torch.Tensor | None, what: str) -> torch.Tensor:
    if t is None:
        raise ValueError(f"calibration produced no {what}")
    return t


def w8a16(lq: LinearQuant, row: bool, dtype: torch.dtype) -> Tensors:
    scale = layout.scale_from_amax(lq.weight_amax, layout.INT8_MAX)
    return {"weight": layout.quantize_int8(lq.weight, scale), "weights_scaling_factor": scale}


def w4a16_groupwise(lq: LinearQuant, row: bool, dtype: torch.dtype) -> Tensors:
    return layout.int4_group_tensors(lq.weight, lq.weight_amax, lq.pre_quant_scale, dtype)


def sq_per_channel(lq: LinearQuant, row: bool, dtype: torch.dtype) -> Tensors:
    scale = layout.scale_from_amax(lq.weight_amax, layout.INT8_MAX)
    act = layout.scale_from_amax(_require(lq.input_amax, "activation range"), layout.INT8_MAX)
    pqs = _require(lq.pre_quant_scale, "smoothing scale")
    return {
        "weight": layout.quantize_int8(lq.weight, scale),
        "weights_scaling_factor": scale,
        "activation_scaling_factor": act.reshape(1),
        "prequant_scaling_factor": pqs.to(dtype),
    }


def sq_per_token_plugin(lq: LinearQuant, row: bool, dtype: torch.dtype) -> Tensors:
    scale = layout.scale_from_amax(lq.weight_amax, layout.INT8_MAX)
    out = {
        "weight": layout.quantize_int8(lq.weight, scale),
        "per_channel_scale": scale.reshape(1, -1),
    }
    if row:
        # Row layers divide their input by `smoother` at run time; ModelOpt's
        # pre_quant_scale multiplies it, so the smoother is its inverse.
        pqs = _require(lq.pre_quant_scale, "smoothing scale")
        out["smoother"] = (1.0 / pqs.float()).reshape(1, -1)
    return out


BUILDERS: dict[str, Builder] = {
    "W8A16": w8a16,
    "W4A16_AWQ": w4a16_groupwise,
    "W8A8_SQ_PER_CHANNEL": sq_per_channel,
    "W8A8_SQ_PER_CHANNEL_PER_TOKEN_PLUGIN": sq_per_token_plugin,
}


def builder(algo: str) -> Builder:
    """The TensorRT-LLM tensor builder of ``algo``: its format record's, else built in."""
    fmt = records.by_trtllm_algo(algo)
    if fmt is not None and fmt.trtllm_writer is not None:
        return fmt.trtllm_writer
    return BUILDERS[algo]


# Formats whose fc/gate (same input) must share input-side quantities, and formats that
# fold column layers' smoothing into the preceding norm: the format records say which.
SHARE_INPUT_GROUPS = records.trtllm_algos(lambda f: f.trtllm_share_input)
FOLDS_SMOOTHING_INTO_NORM = records.trtllm_algos(lambda f: f.folds_smoothing_into_norm)


def kv_cache_scales(k_amax: float, v_amax: float, algo: str) -> Tensors:
    """``{k,v,kv}_cache_scaling_factor`` (F32 [1]) of one attention layer.

    INT8: ``amax / 127``. FP8: ``amax / 448`` raised to at least 1.0, as ModelOpt
    writes it (TensorRT-LLM's FP8 attention kernels are tuned for scale 1 and
    older builds overwrite the scale with 1.0 anyway). A KV format with its own scales
    (its record's ``trtllm_scales``) gives them. ``kv`` = max of the two, the one scale
    TensorRT-LLM applies to both caches.
    """
    kv = kv_formats.by_trtllm_algo(algo)
    if kv is not None and kv.trtllm_scales is not None:
        scales = list(kv.trtllm_scales(k_amax, v_amax))
    else:
        qmax = layout.FP8_MAX if algo == "FP8" else layout.INT8_MAX
        scales = [layout.scale_from_amax(torch.tensor([a]), qmax) for a in (k_amax, v_amax)]
    if algo == "FP8":
        scales = [torch.clamp(s, min=1.0) for s in scales]
    return {
        "k_cache_scaling_factor": scales[0],
        "v_cache_scaling_factor": scales[1],
        "kv_cache_scaling_factor": torch.maximum(scales[0], scales[1]),
    }
