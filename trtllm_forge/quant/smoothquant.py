"""SmoothQuant through ModelOpt: migrate activation outliers into the weights.

Per linear, ModelOpt takes per-input-channel activation maxima ``a`` and weight
maxima ``w`` and picks ``s = a^α / w^(1-α)``; activations are divided by ``s``
(kept as ``pre_quant_scale = 1/s``) and weights multiplied by it, then both are
INT8-quantized: weights per output channel, activations per tensor (static
range) or, with ``activations: per_token``, per token at run time (the static
range is then unused).
"""

from __future__ import annotations

import copy
from typing import Any

from torch import nn

from trtllm_forge.context import NullProgress, Progress
from trtllm_forge.quant import modelopt_glue
from trtllm_forge.quant.calibration import CalibrationData
from trtllm_forge.quant.params import SmoothQuantParams
from trtllm_forge.quant.result import QuantResult

_NO_PROGRESS = NullProgress()


def quantize_model(
    model: nn.Module,
    data: CalibrationData | None,
    params: SmoothQuantParams,
    targets: list[str],
    progress: Progress = _NO_PROGRESS,
) -> QuantResult:
    if data is None:
        raise ValueError("SmoothQuant needs calibration data")
    config = modelopt_config(params, targets, progress)
    modelopt_glue.calibrate(model, config, data, progress)
    return modelopt_glue.extract(model, targets)


def modelopt_config(
    params: SmoothQuantParams, targets: list[str], progress: Progress = _NO_PROGRESS
) -> dict[str, Any]:
    """The ModelOpt config forge calibrates with (tests hand it to ModelOpt's exporter too)."""
    preset = copy.deepcopy(modelopt_glue.mtq(progress).INT8_SMOOTHQUANT_CFG)
    algorithm = {"method": "smoothquant", "alpha": params.alpha}
    return modelopt_glue.target_config(preset, targets, algorithm=algorithm)
