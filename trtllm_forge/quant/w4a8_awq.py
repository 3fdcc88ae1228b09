"""W4A8 AWQ through ModelOpt's ``W4A8_AWQ_BETA_CFG`` (``awq_lite``).

As AWQ (quant/awq.py), but the scale search runs against INT4 groups followed by a
per-tensor FP8 quantizer of the dequantized weight, and the inputs are quantized to
FP8 with a static range: TensorRT-LLM's W4A8 kernels turn the INT4 groups into FP8
and run an FP8 GEMM. The FP8 weight scale is the largest group range over 448,
derived from the group ranges when the checkpoint is written.
"""

from __future__ import annotations

import copy
from typing import Any

from torch import nn

from trtllm_forge.context import NullProgress, Progress
from trtllm_forge.quant import modelopt_glue
from trtllm_forge.quant.calibration import CalibrationData
from trtllm_forge.quant.params import W4A8AwqParams
from trtllm_forge.quant.result import QuantResult

_NO_PROGRESS = NullProgress()


def quantize_model(
    model: nn.Module,
    data: CalibrationData | None,
    params: W4A8AwqParams,
    targets: list[str],
    progress: Progress = _NO_PROGRESS,
) -> QuantResult:
    if data is None:
        raise ValueError("W4A8 AWQ needs calibration data")
    config = modelopt_config(params, targets, progress)
    modelopt_glue.calibrate(model, config, data, progress)
    return modelopt_glue.extract(model, targets)


def modelopt_config(
    params: W4A8AwqParams, targets: list[str], progress: Progress = _NO_PROGRESS
) -> dict[str, Any]:
    """The ModelOpt config forge calibrates with (tests hand it to ModelOpt's exporter too)."""
    preset = copy.deepcopy(modelopt_glue.mtq(progress).W4A8_AWQ_BETA_CFG)
    weight_cfg, _ = modelopt_glue.preset_numerics(preset)
    assert isinstance(weight_cfg, list)  # [INT4 groups, FP8 per tensor], applied in order
    weight_cfg[0]["block_sizes"] = {-1: params.group_size, "type": "static"}
    return modelopt_glue.target_config(preset, targets, weight_cfg=weight_cfg)
