"""SmoothQuant calibrated in float16/bfloat16: the calibration records keep no weight.

ModelOpt smooths a SmoothQuant weight with an fp32 factor but keeps its
``pre_quant_scale`` rounded to the weight dtype, as for AWQ
(tests/test_awq_half_records.py): before, the rounded scale could not rebuild the
weight and every weight was stored in float32. The records now keep the fp32 factor
(quant/smoothquant.py) and rebuild each calibrated weight bit for bit. Real tiny
Llama, real ModelOpt, on the CPU.
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import pytest
import torch

from tests.half_records import calibrate_whole, layerwise_equals_whole, read_records, tiny_llama
from trtllm_forge.quant.linear_records import RECORDS_FILE, CalibrationRecords, OriginalWeights

METHOD = "smoothquant"
PARAMS = {"alpha": 0.5}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return tiny_llama(tmp_path_factory.mktemp("smoothquant-half"))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_smoothquant_records_store_no_weight_and_rebuild_bit_exactly(
    tiny: dict[str, Path], dtype: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    out, summary, result = calibrate_whole(tiny, METHOD, PARAMS, dtype, monkeypatch)
    expected = {"linears": len(result.linears), "stored_weights": 0, "float_weights": 0}
    assert summary["records"] == expected
    stored = read_records(out / RECORDS_FILE)
    assert not [name for name in stored if name.endswith((".weight", ".weight_int4"))]
    for module, lq in result.linears.items():
        assert stored[f"{module}.smooth_factor"].shape == (lq.weight.shape[1],)
    with ExitStack() as stack:
        records = CalibrationRecords(
            out / RECORDS_FILE, OriginalWeights(tiny["hf"], {}, stack), stack
        )
        for module, lq in result.linears.items():
            assert torch.equal(records.linear(module).weight, lq.weight), module


def test_float32_smoothquant_records_keep_their_layout(
    tiny: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """float32: the pre-quant scale is the factor's exact reciprocal, nothing is added."""
    out, summary, result = calibrate_whole(tiny, METHOD, PARAMS, "float32", monkeypatch)
    assert summary["records"]["stored_weights"] == 0
    for lq in result.linears.values():
        assert lq.smooth_factor is not None and lq.pre_quant_scale is not None
        assert torch.equal(lq.smooth_factor, 1.0 / lq.pre_quant_scale)
    assert not [name for name in read_records(out / RECORDS_FILE) if "smooth_factor" in name]


def test_half_smoothquant_layerwise_writes_the_whole_models_files(
    tiny: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    summary = layerwise_equals_whole(tiny, METHOD, PARAMS, monkeypatch)
    assert summary["records"]["stored_weights"] == 0
