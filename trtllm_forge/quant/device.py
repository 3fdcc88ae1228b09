"""Where calibration runs: the recipe's ``quantize.calibration.device`` and ``dtype``.

The default (cpu, float32) is what forge always did. On ``cuda`` the HF model
is cast to the compute dtype and moved to the GPU, the calibration windows go
with it, and every tensor a method hands back is brought to the CPU before the
writer packs it, so the methods and the writer stay device-agnostic.

Importing this module is cheap (the CLI start path reaches it through the
calibrate stage's key); torch loads only when a device must be resolved or used.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any

from trtllm_forge.errors import dependency_error, recipe_error

if TYPE_CHECKING:
    from torch import nn

    from trtllm_forge.quant.calibration import CalibrationData
    from trtllm_forge.quant.result import QuantResult

DEVICES = ("cpu", "cuda", "auto")
DTYPES = ("float32", "float16", "bfloat16")
DEFAULT = ("cpu", "float32")

__all__ = ["DEVICES", "DTYPES", "Placement", "key_fields", "require_device", "resolve_device"]


def cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def _known(requested: str) -> None:
    if requested not in DEVICES:
        raise recipe_error(
            f"unknown calibration device {requested!r}", hint=f"use one of: {', '.join(DEVICES)}"
        )


def _without_auto(requested: str) -> str:
    """``auto`` as what it picks here; any other device as it is (unchecked)."""
    if requested == "auto":
        return "cuda" if cuda_available() else "cpu"
    return requested


def require_device(requested: str) -> None:
    """Exit 4 (before any work) when the recipe asks for CUDA and there is none."""
    _known(requested)
    if requested == "cuda" and not cuda_available():
        raise dependency_error(
            "quantize.calibration.device is cuda, but torch sees no CUDA GPU",
            hint="run on a machine with an NVIDIA GPU and a CUDA build of torch, "
            "or set quantize.calibration.device: auto (falls back to cpu) or cpu",
        )


def resolve_device(requested: str) -> str:
    """``cpu`` or ``cuda``: what ``requested`` means on this machine."""
    require_device(requested)
    return _without_auto(requested)


def key_fields(requested: str, dtype: str) -> dict[str, str]:
    """Cache-key fields: none for the default placement, so keys made before the field
    existed stay valid; otherwise the *resolved* device (``auto`` keys as what it chose,
    since a GPU and a CPU calibration give different numbers) and the dtype.

    ``cuda`` keys as ``cuda`` without looking for a GPU, so ``forge plan`` works
    anywhere; building it without one fails in :func:`require_device` instead.
    Only ``auto`` imports torch here, to see what it resolves to.
    """
    _known(requested)
    device = _without_auto(requested)
    if (device, dtype) == DEFAULT:
        return {}
    return {"quantize.calibration.device": device, "quantize.calibration.dtype": dtype}


@dataclass(frozen=True)
class Placement:
    """A resolved device and compute dtype for one calibration run."""

    device: str = "cpu"
    dtype: str = "float32"

    @classmethod
    def of(cls, requested: str, dtype: str) -> Placement:
        if dtype not in DTYPES:
            raise recipe_error(
                f"unknown calibration dtype {dtype!r}", hint=f"use one of: {', '.join(DTYPES)}"
            )
        return cls(resolve_device(requested), dtype)

    @property
    def is_default(self) -> bool:
        return (self.device, self.dtype) == DEFAULT

    def model(self, model: nn.Module) -> nn.Module:
        """The model in this dtype on this device (in place; returned for chaining)."""
        import torch

        if not self.is_default:
            model.to(device=self.device, dtype=getattr(torch, self.dtype))
        return model

    def data(self, data: CalibrationData | None) -> CalibrationData | None:
        """The same windows (same digest) on this device."""
        if data is None or self.device == "cpu":
            return data
        return replace(data, tokens=data.tokens.to(self.device))

    def to_cpu(self, result: QuantResult) -> QuantResult:
        """Every tensor of a method's result on the CPU in float32, for the writer."""
        if self.is_default:
            return result
        result.linears = {name: _linear_to(q, "cpu") for name, q in result.linears.items()}
        return result

    def to_float32(self, result: QuantResult) -> QuantResult:
        """Every tensor of a method's result in float32 where it is (the values
        :meth:`to_cpu` gives, left on the device for a writer that packs there)."""
        result.linears = {name: _linear_to(q, None) for name, q in result.linears.items()}
        return result


def _linear_to(record: Any, device: str | None) -> Any:
    """Every tensor field of a LinearQuant in float32, on ``device`` (None: where it is;
    a field added later comes along without being named here)."""
    import torch

    moved = {
        f.name: value.detach().to(device or value.device, dtype=torch.float32)
        for f in fields(record)
        if isinstance(value := getattr(record, f.name), torch.Tensor)
    }
    return replace(record, **moved)
