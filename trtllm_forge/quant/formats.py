"""TensorRT-LLM tensors of one quantized linear, per ``quant_algo``
(docs/trtllm-checkpoint.md §2), and of the KV-cache scales.

Each format's builder (its record's ``trtllm_writer``, declared in its method's module)
turns a fused :class:`LinearQuant` into ``{param: tensor}`` for one TensorRT-LLM module
(``weight`` plus its scales); the records' ``trtllm_tensors`` list what each writes.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from trtllm_forge.quant import kv_formats, layout, records
from trtllm_forge.quant.result import LinearQuant

Tensors = dict[str, torch.Tensor]
Builder = Callable[[LinearQuant, bool, torch.dtype], Tensors]


def builder(algo: str) -> Builder:
    """The TensorRT-LLM tensor builder of ``algo`` (its format record's)."""
    fmt = records.by_trtllm_algo(algo)
    if fmt is None or fmt.trtllm_writer is None:
        raise KeyError(f"no format record writes quant_algo {algo!r}")
    return fmt.trtllm_writer


def packs_on_device(algo: str | None) -> bool:
    """Whether ``algo``'s tensors can be built where calibration ran (a GPU) with the
    same bytes as on the CPU: its builder uses only exactly rounded elementwise
    arithmetic, max reductions and integer packing (int4 groups: divide, round half to
    even, clamp, pack two rows per byte). Other formats are built on the host."""
    from trtllm_forge.quant import int4_wo

    return algo is not None and builder(algo) is int4_wo.trtllm_int4


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
