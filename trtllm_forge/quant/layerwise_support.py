"""What layer-wise calibration (``quantize.calibration.mode: layerwise``) can do yet.

Checked at plan time, from the recipe and the model's config.json, so a recipe the
layer walk cannot calibrate is refused (exit 2) before any work, never calibrated
another way. Importing this module is cheap (no torch).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Methods whose algorithm the walk runs per layer, tested equal to the whole-model run
# (tests/test_layerwise.py). The others have no per-layer walk yet.
METHODS = (
    "none",
    "awq",
    "gptq",
    "smoothquant",
    "fp8",
    "nvfp4",
    "w4a8_awq",
    "int8_wo",
    "int4_wo",
    "fp8_block",
)
# Decoder families whose HF model the walk builds layer by layer (a layer list at
# model.layers, rotary tables outside the layers, no experts): tested in
# tests/test_layerwise.py.
FAMILIES = ("llama", "mistral", "qwen2", "qwen3")


def refusal(
    method: str,
    params: Mapping[str, Any],
    kv_cache: str | None,
    hf_config: Mapping[str, Any] | None,
) -> str | None:
    """Why the layer walk cannot calibrate this, or None. ``hf_config`` None: the parts
    knowable from the recipe alone."""
    if method not in METHODS:
        return (
            f"quantize.calibration.mode layerwise does not calibrate method {method} yet "
            f"(it does: {', '.join(m for m in METHODS if m != 'none')})"
        )
    if params.get("quantize_lm_head"):
        return "quantize.calibration.mode layerwise does not quantize lm_head yet"
    if method == "none" and kv_cache in (None, "none"):
        return "quantize.calibration.mode layerwise has nothing to calibrate (method none)"
    if hf_config is None:
        return None
    model_type = str(hf_config.get("model_type", ""))
    if model_type not in FAMILIES:
        return (
            f"quantize.calibration.mode layerwise does not walk {model_type or 'this'} "
            f"models yet (it does: {', '.join(FAMILIES)})"
        )
    return None
