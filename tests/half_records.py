"""Shared by the half-precision calibration-records tests (AWQ, SmoothQuant): a tiny real
Llama converted to float16, one whole-model calibration with the result the method handed
the writer, and a records file read back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open

from tests.tinymodels import make_tiny_hf
from trtllm_forge.checkpoint.convert import convert_hf_checkpoint
from trtllm_forge.quant import quantize
from trtllm_forge.quant.calibration import CalibrationSpec
from trtllm_forge.quant.layerwise import calibrate_layerwise
from trtllm_forge.quant.linear_records import RECORDS_FILE
from trtllm_forge.quant.result import QuantResult

CALIB = CalibrationSpec(samples=4, seq_len=16, seed=0)


def tiny_llama(root: Path, layers: int = 2) -> dict[str, Path]:
    hf = make_tiny_hf(
        "llama",
        root / "hf",
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=layers,
        with_tokenizer=True,
    )
    convert_hf_checkpoint(hf, root / "canonical", dtype="float16")
    return {"hf": hf, "canonical": root / "canonical", "root": root}


def common_args(
    paths: dict[str, Path], method: str, params: dict[str, Any], dtype: str
) -> dict[str, Any]:
    """The arguments a whole-model and a layer-wise calibration of ``paths`` share."""
    return {
        "hf_dir": paths["hf"],
        "canonical_dir": paths["canonical"],
        "method": method,
        "params": params,
        "calibration": CALIB,
        "dtype": dtype,
    }


def calibrate_whole(
    paths: dict[str, Path],
    method: str,
    params: dict[str, Any],
    dtype: str,
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[Path, dict[str, Any], QuantResult]:
    """The whole-model calibration's folder and summary, and the method's result."""
    out = paths["root"] / f"whole-{dtype}"
    summary, result = calibrated(out, common_args(paths, method, params, dtype), monkeypatch)
    return out, summary, result


def layerwise_equals_whole(
    paths: dict[str, Path], method: str, params: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> dict[str, Any]:
    """A float16 layer walk writes the whole-model run's checkpoint and records; its
    summary."""
    whole, _, _ = calibrate_whole(paths, method, params, "float16", monkeypatch)
    layers = paths["root"] / "layers-float16"
    common = common_args(paths, method, params, "float16")
    summary = calibrate_layerwise(out_dir=layers, work_dir=paths["root"] / "work-float16", **common)
    assert_same_files(whole, layers, ("rank0.safetensors",))
    return summary


def assert_same_files(
    whole: Path, layered: Path, names: tuple[str, ...] = ("rank0.safetensors", "config.json")
) -> None:
    """``names`` byte for byte, and the calibration records tensor for tensor."""
    for name in names:
        assert (whole / name).read_bytes() == (layered / name).read_bytes(), name
    a, b = read_records(whole / RECORDS_FILE), read_records(layered / RECORDS_FILE)
    assert sorted(a) == sorted(b)
    assert [n for n in a if not torch.equal(a[n], b[n])] == []


def calibrated(
    out: Path, common: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> tuple[dict[str, Any], QuantResult]:
    """``quantize_checkpoint`` into ``out``: its summary, and the method's result."""
    seen: list[QuantResult] = []
    real = quantize._calibrated

    def spy(*args: Any, **kwargs: Any) -> Any:
        result, data = real(*args, **kwargs)
        seen.append(result)
        return result, data

    monkeypatch.setattr(quantize, "_calibrated", spy)
    summary = quantize.quantize_checkpoint(out_dir=out, **common)
    return summary, seen[0]


def read_records(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as handle:
        return {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
