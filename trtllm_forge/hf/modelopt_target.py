"""ModelOpt's unified HF checkpoint: tensors per linear, ``hf_quant_config.json``, and
config.json's ``quantization_config`` — written the way ModelOpt 0.47's
``export_hf_checkpoint`` writes them, so the two are byte-identical on the same
calibration (tests/test_hf_outputs.py compares them).

The exporter's rules, as forge applies them:

* linears reading one activation share a pre-quant scale, a static input range and
  a per-tensor weight range (``preprocess_linear_fusion``), except for per-tensor FP8;
* AWQ folds that shared pre-quant scale into the norm before the group;
* the weight is rounded to the checkpoint dtype *before* it is divided by its scale;
* scales are fp32 (``weight_scale`` [out] / [out, in/g] / 0-d, ``input_scale`` 0-d),
  the pre-quant scale is in the checkpoint dtype, int4 is packed two output rows per
  byte (uint8), and the FP8 KV-cache scales are ``k_proj.k_scale`` / ``v_proj.v_scale``
  (amax / 448, not raised to 1.0 as the TensorRT-LLM checkpoint does).

Each format builds its own tensors (its record's ``modelopt.linear_tensors``, in its
method's module); the rules shared by all of them are here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from trtllm_forge.quant import layout
from trtllm_forge.quant.records import FORMATS, KV_FORMATS, ModelOpt, NotCarried, QuantFormat
from trtllm_forge.quant.result import LinearQuant

Tensors = dict[str, torch.Tensor]


def linear_tensors(
    fmt: QuantFormat, lq: LinearQuant, dtype: torch.dtype, *, keep_pre_quant_scale: bool
) -> Tensors:
    """``{param: tensor}`` of one quantized linear."""
    mapping = fmt.modelopt
    assert isinstance(mapping, ModelOpt)
    assert mapping.linear_tensors is not None, f"{fmt.name} has no ModelOpt tensors"
    out = mapping.linear_tensors(lq, dtype)
    if lq.input_amax is not None and "input_scale" in mapping.tensors and "input_scale" not in out:
        qmax = layout.FP8_MAX if fmt.activations == "static_fp8" else layout.INT8_MAX
        out["input_scale"] = (lq.input_amax.float() / qmax).reshape(())
    if lq.pre_quant_scale is not None and keep_pre_quant_scale:
        out["pre_quant_scale"] = lq.pre_quant_scale.to(dtype)
    return out


def kv_tensors(kv: str, k_amax: float, v_amax: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``k_scale``, ``v_scale`` (fp32, 0-d): amax / 448. Unlike ModelOpt's TensorRT-LLM
    checkpoint export, the HF export does not raise FP8 KV scales to 1.0."""
    qmax = KV_FORMATS[kv].qmax
    k, v = (torch.tensor(amax, dtype=torch.float32) / qmax for amax in (k_amax, v_amax))
    return k, v


def quant_config(
    fmt: QuantFormat | None,
    kv: str | None,
    *,
    group_size: int | None,
    exclude: list[str],
    producer_version: str,
) -> dict[str, Any]:
    """``hf_quant_config.json``."""
    algo = None
    quantization: dict[str, Any] = {}
    if fmt is not None:
        mapping = fmt.modelopt
        assert not isinstance(mapping, NotCarried)
        algo = mapping.quant_algo
        quantization["quant_algo"] = algo
        if mapping.group_fields:
            quantization["group_size"] = group_size
            quantization["has_zero_point"] = False
            quantization["pre_quant_scale"] = True
        elif mapping.block_size is not None:
            quantization["group_size"] = mapping.block_size
    else:
        quantization["quant_algo"] = None
    kv_algo = KV_FORMATS[kv].modelopt if kv else None
    quantization["kv_cache_quant_algo"] = kv_algo
    quantization["exclude_modules"] = exclude
    return {
        "producer": {"name": "modelopt", "version": producer_version},
        "quantization": _order(quantization),
    }


def _numerics(algo: str | None) -> Mapping[str, Any] | None:
    """The config_groups numerics ModelOpt writes for ``algo`` (its format record's)."""
    for fmt in FORMATS.values():
        if isinstance(fmt.modelopt, ModelOpt) and fmt.modelopt.quant_algo == algo:
            return fmt.modelopt.numerics
    return None


def _order(quantization: dict[str, Any]) -> dict[str, Any]:
    keys = ("quant_algo", "kv_cache_quant_algo", "group_size", "has_zero_point", "pre_quant_scale")
    ordered = {k: quantization[k] for k in keys if k in quantization}
    ordered["exclude_modules"] = quantization["exclude_modules"]
    return ordered


def hf_quantization_config(hf_quant: dict[str, Any]) -> dict[str, Any]:
    """config.json ``quantization_config`` (``quant_method: modelopt``) from hf_quant_config."""
    quantization = hf_quant["quantization"]
    algo = quantization.get("quant_algo")
    out: dict[str, Any] = {}
    numerics = _numerics(algo)
    if numerics is not None:
        out["config_groups"] = {
            "group_0": {
                "input_activations": dict(numerics),
                "weights": dict(numerics),
                "targets": ["Linear"],
            }
        }
    out["ignore"] = list(quantization.get("exclude_modules") or [])
    if algo:
        out["quant_algo"] = algo
    kv_algo = quantization.get("kv_cache_quant_algo")
    if kv_algo == "FP8":
        out["kv_cache_scheme"] = {"dynamic": False, "num_bits": 8, "type": "float"}
    elif kv_algo:
        out["kv_cache_scheme"] = kv_algo
    out["producer"] = dict(hf_quant["producer"])
    out["quant_method"] = "modelopt"
    return out
