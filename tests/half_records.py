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
from trtllm_forge.quant.result import QuantResult


def tiny_llama(root: Path) -> dict[str, Path]:
    hf = make_tiny_hf(
        "llama",
        root / "hf",
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        with_tokenizer=True,
    )
    convert_hf_checkpoint(hf, root / "canonical", dtype="float16")
    return {"hf": hf, "canonical": root / "canonical", "root": root}


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
