"""``quantize_model`` of a method ModelOpt calibrates: the method's ModelOpt config, run
on the calibration data, the ranges read back (quant/modelopt_glue.py).

Apart from modelopt_glue so that a method module builds its ``quantize_model`` at import
without importing torch or ModelOpt (``forge plan`` imports every method module).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from trtllm_forge.context import NullProgress, Progress

if TYPE_CHECKING:
    from torch import nn

    from trtllm_forge.quant.calibration import CalibrationData
    from trtllm_forge.quant.result import QuantResult

_NO_PROGRESS = NullProgress()
ConfigOf = Callable[[Any, list[str], Progress], dict[str, Any]]


def quantizer(modelopt_config: ConfigOf, method: str) -> Callable[..., QuantResult]:
    """The method's ``quantize_model(model, data, params, targets, progress)``; ``method``
    names it in the error when calibration data is missing."""

    def quantize_model(
        model: nn.Module,
        data: CalibrationData | None,
        params: Any,
        targets: list[str],
        progress: Progress = _NO_PROGRESS,
    ) -> QuantResult:
        from trtllm_forge.quant import modelopt_glue

        def config() -> dict[str, Any]:
            return modelopt_config(params, targets, progress)

        return modelopt_glue.quantize(model, data, targets, config, progress, method=method)

    return quantize_model
