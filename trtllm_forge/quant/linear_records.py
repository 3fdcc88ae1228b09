"""Calibration records: each HF linear's ranges as calibrated, before any layout fusion.

The canonical checkpoint holds what TensorRT-LLM runs: q/k/v fused into one GEMM
with shared scales, int4 packed. A Hugging Face target applies *its own* fusion
rule (ModelOpt's exporter shares scales across gate/up too, but not for FP8), so
it needs the per-module result. ``linears.safetensors`` (in the calibrate
artifact) keeps it small: per HF linear its fp32 ``weight_amax``, ``input_amax``,
``pre_quant_scale`` and (W4A8) ``fp8_weight_amax``; the weight itself only where it cannot be rebuilt
bit-exactly from the original snapshot (GPTQ's error-fed weights, kept as their int4
values when they are exactly ``q × scale``), which is checked when the file is
written, never assumed. An AWQ or SmoothQuant weight calibrated in float16/bfloat16 is rebuilt with
``smooth_factor``, the fp32 factor ModelOpt smoothed it with (its ``pre_quant_scale`` is
rounded to the calibration dtype and no longer gives the weight back); the field is
written only when the rounded scale does not do, so float32 calibrations' files are
unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import ExitStack
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from trtllm_forge.checkpoint.snapshot import SnapshotTensors
from trtllm_forge.quant import layout
from trtllm_forge.quant.result import LinearQuant, QuantResult

RECORDS_FILE = "linears.safetensors"
_FIELDS = ("weight_amax", "input_amax", "pre_quant_scale", "fp8_weight_amax")
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class OriginalWeights:
    """The snapshot's linear weights as the calibration model saw them (float, [out, in]).

    ``loaded``: weights the caller already holds as the calibration model loaded them
    (module → the snapshot's values cast to the calibration dtype, e.g. on the GPU),
    given back instead of the snapshot's; :func:`rebuilt_weight` casts to that dtype
    first, so either gives the same rebuilt weight."""

    def __init__(
        self,
        hf_dir: Path,
        transposed: Mapping[str, bool],
        stack: ExitStack,
        loaded: Mapping[str, torch.Tensor] | None = None,
    ) -> None:
        self._tensors = SnapshotTensors(hf_dir, stack)
        self._transposed = transposed
        self._loaded = loaded or {}

    def get(self, module: str) -> torch.Tensor:
        if module in self._loaded:
            return self._loaded[module]
        tensor = self._tensors.get(f"{module}.weight")
        # HF Conv1D (GPT-2) stores [in, out]; calibration swapped it for nn.Linear.
        return tensor.t().contiguous() if self._transposed.get(module) else tensor


def _stored_weight(module: str, lq: LinearQuant) -> dict[str, torch.Tensor]:
    """A weight the snapshot cannot give back: as its int4 values when it is exactly
    ``q × (weight_amax / 7)`` per group (GPTQ's output: a quarter of fp32), else fp32."""
    weight = lq.weight.float()
    if lq.weight_amax.dim() == 2:
        scale = _group_scale(lq.weight_amax, weight.shape[1])
        q = (weight / scale).round().clamp(-8, 7)
        if torch.equal(q * scale, weight):
            return {f"{module}.weight_int4": q.to(torch.int8).contiguous()}
    return {f"{module}.weight": weight.contiguous()}


def _group_scale(weight_amax: torch.Tensor, in_features: int) -> torch.Tensor:
    scale = layout.scale_from_amax(weight_amax, layout.INT4_MAX)
    return layout.expand_groups(scale, in_features)


def rebuilt_weight(
    original: torch.Tensor,
    pre_quant_scale: torch.Tensor | None,
    dtype: str,
    smooth_factor: torch.Tensor | None = None,
) -> torch.Tensor:
    """The weight a ModelOpt-calibrated linear holds: the original in the calibration
    dtype, smoothed the way ModelOpt smooths (multiply by an fp32 factor, round to the
    weight dtype). The factor is ``smooth_factor`` when given, else the fp32 reciprocal
    of the pre-quant scale."""
    weight = original.to(_DTYPES[dtype])
    factor = smooth_factor
    if factor is None and pre_quant_scale is not None:
        factor = 1.0 / pre_quant_scale.to(torch.float32)
    if factor is not None:
        weight = (weight * factor.to(weight.device, torch.float32)[None, :]).to(weight.dtype)
    return weight.float()


def _needed_factor(lq: LinearQuant) -> torch.Tensor | None:
    """``lq.smooth_factor`` unless the pre-quant scale gives the same factor (float32
    calibration): then nothing new is written."""
    factor, scale = lq.smooth_factor, lq.pre_quant_scale
    if factor is None or scale is None:
        return None
    factor = factor.to("cpu", torch.float32)
    return None if torch.equal(factor, 1.0 / scale.to("cpu", torch.float32)) else factor


def _weight_record(
    module: str, lq: LinearQuant, original: torch.Tensor, dtype: str
) -> dict[str, torch.Tensor]:
    """What rebuilds ``lq.weight``: nothing, the smoothing factor, or the weight itself."""
    factor = _needed_factor(lq)
    if torch.equal(rebuilt_weight(original, lq.pre_quant_scale, dtype, factor), lq.weight.float()):
        return {} if factor is None else {f"{module}.smooth_factor": factor.contiguous()}
    return _stored_weight(module, lq)


def save_records(
    path: Path,
    result: QuantResult,
    originals: OriginalWeights,
    calibration_dtype: str,
) -> dict[str, int]:
    """Write ``linears.safetensors``; return how many weights had to be stored."""
    host, counts = record_tensors(result, originals, calibration_dtype)
    save_file(host, str(path), metadata={"calibration_dtype": calibration_dtype})
    return counts


def record_tensors(
    result: QuantResult, originals: OriginalWeights, calibration_dtype: str
) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """The tensors :func:`save_records` writes (on the host) and its counts."""
    tensors: dict[str, torch.Tensor] = {}
    stored = floats = 0
    for module, lq in result.linears.items():
        for field in _FIELDS:
            value = getattr(lq, field)
            if value is not None:
                tensors[f"{module}.{field}"] = value.float().contiguous()
        weight = _weight_record(module, lq, originals.get(module), calibration_dtype)
        tensors.update(weight)
        stored += any(not name.endswith(".smooth_factor") for name in weight)
        floats += f"{module}.weight" in weight  # not int4 values: 4 bytes a weight
    for layer, (k_amax, v_amax) in result.kv_amax.items():
        tensors[f"kv.{layer}"] = torch.tensor([k_amax, v_amax], dtype=torch.float32)
    # Records computed where calibration ran (a GPU) come to the host only now: ranges
    # and packed weights, never a float32 weight that the snapshot gives back.
    host = {name: tensor.to("cpu") for name, tensor in tensors.items()}
    counts = {"linears": len(result.linears), "stored_weights": stored, "float_weights": floats}
    return host, counts


class CalibrationRecords:
    """Lazy reader of ``linears.safetensors``: one module's :class:`LinearQuant` at a time,
    its weight rebuilt from the snapshot (memory stays at one layer, not the model)."""

    def __init__(self, path: Path, originals: OriginalWeights, stack: ExitStack) -> None:
        self._handle = stack.enter_context(safe_open(str(path), framework="pt"))
        self._names = set(self._handle.keys())
        self._originals = originals
        self.dtype = (self._handle.metadata() or {}).get("calibration_dtype", "float32")
        self.modules = list(_modules(sorted(self._names)))
        self.kv_amax: dict[int, tuple[float, float]] = {}
        for name in self._names:
            if name.startswith("kv."):
                k_amax, v_amax = self._handle.get_tensor(name).tolist()
                self.kv_amax[int(name.removeprefix("kv."))] = (k_amax, v_amax)

    def _get(self, name: str) -> torch.Tensor | None:
        return self._handle.get_tensor(name) if name in self._names else None

    def linear(self, module: str) -> LinearQuant:
        amax = self._get(f"{module}.weight_amax")
        if amax is None:
            raise KeyError(f"no calibration record for {module}")
        pqs = self._get(f"{module}.pre_quant_scale")
        factor = self._get(f"{module}.smooth_factor")
        weight = self._get(f"{module}.weight")
        packed = self._get(f"{module}.weight_int4")
        if packed is not None:
            weight = packed.float() * _group_scale(amax, packed.shape[1])
        elif weight is None:
            weight = rebuilt_weight(self._originals.get(module), pqs, self.dtype, factor)
        return LinearQuant(
            weight,
            amax,
            self._get(f"{module}.input_amax"),
            pqs,
            self._get(f"{module}.fp8_weight_amax"),
            factor,
        )


def _modules(names: Iterable[str]) -> Iterator[str]:
    seen: dict[str, None] = {}
    for name in names:
        if name.endswith(".weight_amax"):
            seen[name.removesuffix(".weight_amax")] = None
    yield from seen
