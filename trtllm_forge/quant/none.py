"""No weight quantization: the checkpoint keeps its weights; only the KV cache may be quantized."""

from __future__ import annotations

from torch import nn

from trtllm_forge.context import NullProgress, Progress
from trtllm_forge.quant.calibration import CalibrationData
from trtllm_forge.quant.params import NoneParams
from trtllm_forge.quant.result import QuantResult

_NO_PROGRESS = NullProgress()


def quantize_model(
    model: nn.Module,
    data: CalibrationData | None,
    params: NoneParams,
    targets: list[str],
    progress: Progress = _NO_PROGRESS,
) -> QuantResult:
    return QuantResult()
