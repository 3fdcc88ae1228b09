"""AWQ (activation-aware weight quantization) through ModelOpt's ``awq_lite``.

ModelOpt searches, per linear, the per-input-channel scale ``s`` that minimises
the output error of the INT4 group-quantized layer on calibration activations,
folds ``1/s`` into the weight and keeps ``s`` as the input ``pre_quant_scale``.
forge fuses and packs the result (``W4A16_AWQ``: packed int4, per-group scales,
``prequant_scaling_factor``).
"""

from __future__ import annotations

import copy

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
    mtq = modelopt_glue.mtq(progress)
    preset = copy.deepcopy(mtq.INT4_AWQ_CFG)
    weight_cfg, _ = modelopt_glue.preset_numerics(preset)
    assert weight_cfg is not None
    weight_cfg["block_sizes"] = {-1: params.group_size, "type": "static"}
    config = modelopt_glue.target_config(preset, targets, weight_cfg=weight_cfg)
    modelopt_glue.calibrate(model, config, data, progress)
    return modelopt_glue.extract(model, targets)
