"""INT4 group-wise weight-only: per (channel, group) round-to-nearest, no calibration data."""

from __future__ import annotations

from torch import nn

from trtllm_forge.context import NullProgress, Progress
from trtllm_forge.quant import layout
from trtllm_forge.quant.calibration import CalibrationData
from trtllm_forge.quant.params import Int4WoParams
from trtllm_forge.quant.result import LinearQuant, QuantResult

_NO_PROGRESS = NullProgress()


def quantize_model(
    model: nn.Module,
    data: CalibrationData | None,
    params: Int4WoParams,
    targets: list[str],
    progress: Progress = _NO_PROGRESS,
) -> QuantResult:
    modules = dict(model.named_modules())
    result = QuantResult()
    for name in targets:
        weight = modules[name].weight.detach().float()
        result.linears[name] = LinearQuant(weight, layout.group_amax(weight, params.group_size))
    return result
