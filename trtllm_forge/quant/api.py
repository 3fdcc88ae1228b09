"""Adapter from the recipe's ``quantize`` section to :func:`quantize.quantize_checkpoint`.

``stages/calibrate.py`` hands over the validated recipe model; this splits it
into method, method parameters, KV-cache format, exclusions and calibration
settings. Importing this module is cheap; the heavy work imports on call.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trtllm_forge.context import NullProgress, Progress
from trtllm_forge.recipe.schema import QUANTIZE_COMMON_FIELDS

_NO_PROGRESS = NullProgress()


def method_params(spec: Any) -> dict[str, Any]:
    """The method's own parameters from a recipe ``quantize`` model (or dict)."""
    data = spec if isinstance(spec, dict) else spec.model_dump(mode="json")
    return {k: v for k, v in data.items() if k not in QUANTIZE_COMMON_FIELDS}


def quantize_checkpoint(
    *,
    hf_dir: Path,
    canonical_dir: Path,
    out_dir: Path,
    spec: Any,
    calibration_file: Path | None = None,
    tokenizer_dir: Path | None = None,
    progress: Progress = _NO_PROGRESS,
) -> dict[str, Any]:
    """Quantize per a recipe ``quantize`` section (see ``recipe.schema.Quantize``)."""
    from trtllm_forge.quant import quantize
    from trtllm_forge.quant.calibration import CalibrationSpec

    calib = spec.calibration
    calibration = CalibrationSpec(
        file=calibration_file, samples=calib.samples, seq_len=calib.seq_len, seed=calib.seed
    )
    return quantize.quantize_checkpoint(
        hf_dir=hf_dir,
        canonical_dir=canonical_dir,
        out_dir=out_dir,
        method=spec.method,
        params=method_params(spec),
        kv_cache=spec.kv_cache,
        exclude=list(spec.exclude),
        calibration=calibration,
        tokenizer_dir=tokenizer_dir,
        device=calib.device,
        dtype=calib.dtype,
        progress=progress,
    )
