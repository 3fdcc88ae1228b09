"""NVFP4 (FP4 E2M1 in blocks of 16, FP8 E4M3 block scales, FP32 per-tensor scales)
through ModelOpt's ``NVFP4_DEFAULT_CFG`` max calibration.

Calibration only yields per-tensor ranges — the weight's (its FP32 global scale) and
the input's (the activations' static global scale); block scales follow from the
weight when it is written, and from the activations at run time. ModelOpt's
calibration runs on the CPU; only its fake-quant forward needs CUDA, which forge does
not use (forge's own fake quant, quant/layout.py, equals ModelOpt's exporter bit for
bit, tests/test_quant_nvfp4.py).
"""

from __future__ import annotations

import copy
from typing import Any

from torch import nn

from trtllm_forge.context import NullProgress, Progress
from trtllm_forge.quant import modelopt_glue
from trtllm_forge.quant.calibration import CalibrationData
from trtllm_forge.quant.params import NvFp4Params
from trtllm_forge.quant.result import QuantResult

_NO_PROGRESS = NullProgress()


def quantize_model(
    model: nn.Module,
    data: CalibrationData | None,
    params: NvFp4Params,
    targets: list[str],
    progress: Progress = _NO_PROGRESS,
) -> QuantResult:
    if data is None:
        raise ValueError("NVFP4 needs calibration data (the activations' global scale)")
    config = modelopt_config(params, targets, progress)
    modelopt_glue.calibrate(model, config, data, progress)
    return modelopt_glue.extract(model, targets)


def modelopt_config(
    params: NvFp4Params, targets: list[str], progress: Progress = _NO_PROGRESS
) -> dict[str, Any]:
    """The ModelOpt config forge calibrates with (tests hand it to ModelOpt's exporter too)."""
    preset = copy.deepcopy(modelopt_glue.mtq(progress).NVFP4_DEFAULT_CFG)
    return modelopt_glue.target_config(preset, targets)
