"""FP8 block-scaled weights (``FP8_BLOCK_SCALES``): one E4M3 scale per 128 × 128 tile.

The weight's range is taken per tile (round-to-nearest, no calibration data): it is
exactly what ModelOpt's ``FP8_2D_BLOCKWISE_WEIGHT_ONLY_CFG`` max calibration computes
(tests/test_quant_fp8_block.py checks it). Activations carry no calibrated range:
serving kernels quantize them per (token, 128 channels) at run time, which fake quant
and the ONNX lowering reproduce.
"""

from __future__ import annotations

from torch import nn

from trtllm_forge.context import NullProgress, Progress
from trtllm_forge.quant import layout
from trtllm_forge.quant.calibration import CalibrationData
from trtllm_forge.quant.params import Fp8BlockParams
from trtllm_forge.quant.result import LinearQuant, QuantResult

_NO_PROGRESS = NullProgress()


def quantize_model(
    model: nn.Module,
    data: CalibrationData | None,
    params: Fp8BlockParams,
    targets: list[str],
    progress: Progress = _NO_PROGRESS,
) -> QuantResult:
    modules = dict(model.named_modules())
    result = QuantResult()
    for name in targets:
        weight = modules[name].weight.detach().float()
        result.linears[name] = LinearQuant(weight, layout.block_amax(weight, params.block_size))
    return result
