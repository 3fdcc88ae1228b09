"""AWQ (activation-aware weight quantization) through ModelOpt's ``awq_lite``.

ModelOpt searches, per linear, the per-input-channel scale ``s`` that minimises
the output error of the INT4 group-quantized layer on calibration activations,
folds ``1/s`` into the weight and keeps ``s`` as the input ``pre_quant_scale``.
forge fuses and packs the result (``W4A16_AWQ``: packed int4, per-group scales,
``prequant_scaling_factor``).
"""

from __future__ import annotations

import copy
from typing import Any

from torch import nn

from trtllm_forge.context import NullProgress, Progress
from trtllm_forge.quant import modelopt_glue
from trtllm_forge.quant.calibration import CalibrationData
from trtllm_forge.quant.params import AwqParams
from trtllm_forge.quant.result import QuantResult

_NO_PROGRESS = NullProgress()


def quantize_model(
    model: nn.Module,
    data: CalibrationData | None,
    params: AwqParams,
    targets: list[str],
    progress: Progress = _NO_PROGRESS,
) -> QuantResult:
    if data is None:
        raise ValueError("AWQ needs calibration data")
    config = modelopt_config(params, targets, progress)
    modelopt_glue.calibrate(model, config, data, progress)
    return modelopt_glue.extract(model, targets)


def modelopt_config(
    params: AwqParams, targets: list[str], progress: Progress = _NO_PROGRESS
) -> dict[str, Any]:
    """The ModelOpt config forge calibrates with (tests hand it to ModelOpt's exporter too)."""
    preset = copy.deepcopy(modelopt_glue.mtq(progress).INT4_AWQ_CFG)
    weight_cfg, _ = modelopt_glue.preset_numerics(preset)
    assert weight_cfg is not None
    weight_cfg["block_sizes"] = {-1: params.group_size, "type": "static"}
    return modelopt_glue.target_config(preset, targets, weight_cfg=weight_cfg)
