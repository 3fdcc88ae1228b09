"""compressed-tensors: tensors per linear and config.json's ``quantization_config``.

As compressed-tensors 0.20 reads them (``compressors/``, ``quantization/lifecycle``):

* ``pack-quantized`` (integer weights, no activation quantization): ``weight_packed``
  int32 — each value offset by 2^(b-1) and packed densely along the input dim, element
  ``i`` of a word at bit ``i·b`` — plus ``weight_shape`` (int64 [2]) and ``weight_scale``
  ([out, 1] per channel, [out, in/g] per group);
* ``float-quantized``: ``weight`` float8_e4m3fn plus ``weight_scale`` ([1] per tensor,
  [out, 1] per channel, [out/b, in/b] per block) and, for static activations,
  ``input_scale`` [1];
* scales in the checkpoint dtype (the loader allocates them in the weight's dtype);
* KV cache: ``self_attn.k_scale`` / ``self_attn.v_scale`` [1] = amax / qmax, or what the
  KV format's record writes (a ``tensor_group`` scheme's reciprocal global scales).

Each format builds its own tensors (its record's ``compressed_tensors.linear_tensors``,
in its method's module; the packing is quant/layout.py's ``ct_pack_quantized``).

The integers are forge's own (the fp32 weight over its fp32 scale, as the canonical
checkpoint computes them), so a loader's dequantization equals forge's fake-quant
model up to the scale's rounding to the checkpoint dtype.
"""

from __future__ import annotations

from typing import Any

import torch

from trtllm_forge.quant import layout
from trtllm_forge.quant.records import KV_FORMATS, CompressedTensors, NotCarried, QuantFormat
from trtllm_forge.quant.result import LinearQuant

Tensors = dict[str, torch.Tensor]


def unpack_int32(packed: torch.Tensor, bits: int, cols: int) -> torch.Tensor:
    """Inverse of quant/layout.py's ``pack_int32`` (an independent reader's view of the
    format)."""
    per_word = 32 // bits
    words = packed.to(torch.int64) & 0xFFFFFFFF
    shifts = torch.arange(per_word, dtype=torch.int64) * bits
    values = (words[..., None] >> shifts) & ((1 << bits) - 1)
    return (values.reshape(packed.shape[0], -1)[:, :cols] - (1 << (bits - 1))).to(torch.int8)


def linear_tensors(fmt: QuantFormat, lq: LinearQuant, dtype: torch.dtype) -> Tensors:
    """``{param: tensor}`` of one quantized linear."""
    mapping = fmt.compressed_tensors
    assert isinstance(mapping, CompressedTensors)
    assert mapping.linear_tensors is not None, f"{fmt.name} has no compressed-tensors tensors"
    return mapping.linear_tensors(lq, dtype)


def kv_tensors(kv: str, k_amax: float, v_amax: float, dtype: torch.dtype) -> Tensors:
    """The attention module's KV-cache tensors: ``k_scale`` / ``v_scale`` [1] = amax / qmax
    in the checkpoint dtype, or the KV format's own (its record's ``ct_tensors``)."""
    kv_format = KV_FORMATS[kv]
    if kv_format.ct_tensors is not None:
        return kv_format.ct_tensors(k_amax, v_amax, dtype)
    qmax = kv_format.qmax
    k, v = (layout.scale_from_amax(torch.tensor([a]), qmax).to(dtype) for a in (k_amax, v_amax))
    return {"k_scale": k, "v_scale": v}


def quantization_config(
    fmt: QuantFormat | None,
    kv: str | None,
    *,
    group_size: int | None,
    act_order: bool,
    ignore: list[str],
    version: str,
) -> dict[str, Any]:
    """config.json ``quantization_config`` (``quant_method: compressed-tensors``)."""
    groups: dict[str, Any] = {}
    compression = "dense"
    if fmt is not None:
        mapping = fmt.compressed_tensors
        assert not isinstance(mapping, NotCarried)
        compression = mapping.format
        groups["group_0"] = _config_group(mapping, group_size, act_order)
    kv_scheme = None
    if kv is not None:
        scheme = KV_FORMATS[kv].compressed_tensors
        assert not isinstance(scheme, NotCarried)
        kv_scheme = dict(scheme)
    return {
        "quant_method": "compressed-tensors",
        "format": compression,
        "quantization_status": "compressed",
        "config_groups": groups,
        "ignore": ignore,
        "kv_cache_scheme": kv_scheme,
        "global_compression_ratio": None,
        "version": version,
    }


def _config_group(
    mapping: CompressedTensors, group_size: int | None, act_order: bool
) -> dict[str, Any]:
    weights = {**mapping.weights, "dynamic": False}
    if weights.get("strategy") == "group":
        weights["group_size"] = group_size
    if mapping.group_size is not None:  # the format fixes its group
        weights["group_size"] = mapping.group_size
    if weights.get("strategy") == "block":
        weights["block_structure"] = [group_size, group_size]
    # forge's GPTQ visits columns by activation order but keeps groups contiguous:
    # compressed-tensors calls that "weight" ordering (no g_idx to store).
    if act_order:
        weights["actorder"] = "weight"
    group: dict[str, Any] = {"targets": ["Linear"], "weights": weights}
    inputs = dict(mapping.input_activations) if mapping.input_activations else None
    if inputs is not None and inputs.get("strategy") == "group":
        inputs["group_size"] = group_size  # per token and block of input channels
    if inputs is not None and mapping.group_size is not None:
        inputs["group_size"] = mapping.group_size
    group["input_activations"] = inputs
    group["output_activations"] = None
    group["format"] = mapping.format
    return group
