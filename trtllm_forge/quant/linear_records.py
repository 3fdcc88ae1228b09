"""Calibration records: each HF linear's ranges as calibrated, before any layout fusion.

The canonical checkpoint holds what TensorRT-LLM runs: q/k/v fused into one GEMM
with shared scales, int4 packed. A Hugging Face target applies *its own* fusion
rule (ModelOpt's exporter shares scales across gate/up too, but not for FP8), so
it needs the per-module result. ``linears.safetensors`` (in the calibrate
artifact) keeps it small: per HF linear its fp32 ``weight_amax``, ``input_amax``
and ``pre_quant_scale``; the weight itself only where it cannot be rebuilt
bit-exactly from the original snapshot (GPTQ's error-fed weights), which is
checked when the file is written, never assumed.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import ExitStack
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from trtllm_forge.checkpoint.convert import hf_weight_files
from trtllm_forge.quant.result import LinearQuant, QuantResult

RECORDS_FILE = "linears.safetensors"
_FIELDS = ("weight_amax", "input_amax", "pre_quant_scale")
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class OriginalWeights:
    """The snapshot's linear weights as the calibration model saw them (float, [out, in])."""

    def __init__(self, hf_dir: Path, transposed: Mapping[str, bool], stack: ExitStack) -> None:
        self._files = hf_weight_files(Path(hf_dir))
        self._transposed = transposed
        self._stack = stack
        self._handles: dict[Path, object] = {}

    def get(self, module: str) -> torch.Tensor:
        path = self._files[f"{module}.weight"]
        if path not in self._handles:
            self._handles[path] = self._stack.enter_context(safe_open(str(path), framework="pt"))
        tensor: torch.Tensor = self._handles[path].get_tensor(f"{module}.weight")  # type: ignore[attr-defined]
        # HF Conv1D (GPT-2) stores [in, out]; calibration swapped it for nn.Linear.
        return tensor.t().contiguous() if self._transposed.get(module) else tensor


def rebuilt_weight(
    original: torch.Tensor, pre_quant_scale: torch.Tensor | None, dtype: str
) -> torch.Tensor:
    """The weight a ModelOpt-calibrated linear holds: the original in the calibration
    dtype, divided by its pre-quant scale the way ModelOpt smooths (multiply by the fp32
    reciprocal, round to the weight dtype)."""
    weight = original.to(_DTYPES[dtype])
    if pre_quant_scale is not None:
        inverse = 1.0 / pre_quant_scale.to(torch.float32)
        weight = (weight * inverse[None, :]).to(weight.dtype)
    return weight.float()


def save_records(
    path: Path,
    result: QuantResult,
    originals: OriginalWeights,
    calibration_dtype: str,
) -> dict[str, int]:
    """Write ``linears.safetensors``; return how many weights had to be stored."""
    tensors: dict[str, torch.Tensor] = {}
    stored = 0
    for module, lq in result.linears.items():
        for field in _FIELDS:
            value = getattr(lq, field)
            if value is not None:
                tensors[f"{module}.{field}"] = value.float().contiguous()
        rebuilt = rebuilt_weight(originals.get(module), lq.pre_quant_scale, calibration_dtype)
        if not torch.equal(rebuilt, lq.weight.float()):
            tensors[f"{module}.weight"] = lq.weight.float().contiguous()
            stored += 1
    for layer, (k_amax, v_amax) in result.kv_amax.items():
        tensors[f"kv.{layer}"] = torch.tensor([k_amax, v_amax], dtype=torch.float32)
    save_file(tensors, str(path), metadata={"calibration_dtype": calibration_dtype})
    return {"linears": len(result.linears), "stored_weights": stored}


def load_records(path: Path, originals: OriginalWeights) -> QuantResult:
    """The per-module :class:`QuantResult` back, weights rebuilt from the snapshot."""
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
        names = list(handle.keys())
        values = {name: handle.get_tensor(name) for name in names}
    dtype = metadata.get("calibration_dtype", "float32")
    result = QuantResult()
    for module in _modules(names):
        fields = {f: values.get(f"{module}.{f}") for f in _FIELDS}
        weight = values.get(f"{module}.weight")
        if weight is None:
            weight = rebuilt_weight(originals.get(module), fields["pre_quant_scale"], dtype)
        amax = fields["weight_amax"]
        assert amax is not None, f"{path}: {module} has no weight_amax"
        result.linears[module] = LinearQuant(
            weight, amax, fields["input_amax"], fields["pre_quant_scale"]
        )
    for name in names:
        if name.startswith("kv."):
            k_amax, v_amax = values[name].tolist()
            result.kv_amax[int(name.removeprefix("kv."))] = (k_amax, v_amax)
    return result


def _modules(names: list[str]) -> Iterator[str]:
    seen: dict[str, None] = {}
    for name in names:
        if name.endswith(".weight_amax"):
            seen[name.removesuffix(".weight_amax")] = None
    yield from seen
