"""INT8 weight-only (W8A16): per-output-channel round-to-nearest, no calibration data."""

from __future__ import annotations

from torch import nn

from trtllm_forge.context import NullProgress, Progress
from trtllm_forge.quant import layout
from trtllm_forge.quant.calibration import CalibrationData
from trtllm_forge.quant.params import Int8WoParams
from trtllm_forge.quant.result import LinearQuant, QuantResult

_NO_PROGRESS = NullProgress()


def quantize_model(
    model: nn.Module,
    data: CalibrationData | None,
    params: Int8WoParams,
    targets: list[str],
    progress: Progress = _NO_PROGRESS,
) -> QuantResult:
    modules = dict(model.named_modules())
    result = QuantResult()
    for name in targets:
        weight = modules[name].weight.detach().float()
        result.linears[name] = LinearQuant(weight, layout.channel_amax(weight))
    return result
