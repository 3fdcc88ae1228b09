"""FP8 (E4M3) W8A8 through ModelOpt max calibration.

``per_tensor``: one scale per weight and one static scale per activation tensor
(``FP8``). ``per_channel_per_token``: one scale per output channel and dynamic
per-token activation scales (``FP8_PER_CHANNEL_PER_TOKEN``).
"""

from __future__ import annotations

import copy
from typing import Any

from torch import nn

from trtllm_forge.context import NullProgress, Progress
from trtllm_forge.quant import modelopt_glue
from trtllm_forge.quant.calibration import CalibrationData
from trtllm_forge.quant.params import Fp8Params
from trtllm_forge.quant.result import QuantResult

_NO_PROGRESS = NullProgress()


def quantize_model(
    model: nn.Module,
    data: CalibrationData | None,
    params: Fp8Params,
    targets: list[str],
    progress: Progress = _NO_PROGRESS,
) -> QuantResult:
    if data is None:
        raise ValueError("FP8 needs calibration data")
    config = modelopt_config(params, targets, progress)
    modelopt_glue.calibrate(model, config, data, progress)
    return modelopt_glue.extract(model, targets)


def modelopt_config(
    params: Fp8Params, targets: list[str], progress: Progress = _NO_PROGRESS
) -> dict[str, Any]:
    """The ModelOpt config forge calibrates with (tests hand it to ModelOpt's exporter too)."""
    mtq = modelopt_glue.mtq(progress)
    per_channel = params.granularity == "per_channel_per_token"
    preset = copy.deepcopy(
        mtq.FP8_PER_CHANNEL_PER_TOKEN_CFG if per_channel else mtq.FP8_DEFAULT_CFG
    )
    return modelopt_glue.target_config(preset, targets)
