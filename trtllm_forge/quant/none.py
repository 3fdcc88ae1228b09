"""No weight quantization: the checkpoint keeps its weights; only the KV cache may be quantized."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from trtllm_forge.context import NullProgress, Progress
from trtllm_forge.quant.record_types import Method

if TYPE_CHECKING:
    from collections.abc import Mapping

    from torch import nn

    from trtllm_forge.quant.calibration import CalibrationData
    from trtllm_forge.quant.result import QuantResult

_NO_PROGRESS = NullProgress()


def quantize_model(
    model: nn.Module,
    data: CalibrationData | None,
    params: object,
    targets: list[str],
    progress: Progress = _NO_PROGRESS,
) -> QuantResult:
    from trtllm_forge.quant.result import QuantResult

    return QuantResult()


def _no_format(quant: Mapping[str, Any]) -> None:
    return None


METHOD = Method(
    name="none",
    needs_data=False,
    uses_modelopt=False,
    formats=(),
    format_of=_no_format,
    doc_cases=(),
)
