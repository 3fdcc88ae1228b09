"""AWQ calibrated in float16/bfloat16: the calibration records keep no weight.

ModelOpt smooths an AWQ weight with the fp32 pre-quant scale but keeps the scale
rounded to the weight dtype, so the rounded scale cannot rebuild the weight. The
records keep the fp32 factor instead (``smooth_factor``, one ``[in]`` vector per
linear) and rebuild the calibrated weight bit for bit; before, every AWQ weight was
stored in float32 (twice a float16 model). Real tiny Llama, real ModelOpt, on the CPU.
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import pytest
import torch

from tests.half_records import (
    calibrate_whole,
    common_args,
    layerwise_equals_whole,
    read_records,
    tiny_llama,
)
from trtllm_forge.quant import quantize
from trtllm_forge.quant.linear_records import RECORDS_FILE, CalibrationRecords, OriginalWeights

GROUP = 64
METHOD = "awq"
PARAMS = {"group_size": GROUP}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return tiny_llama(tmp_path_factory.mktemp("awq-half"))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_awq_records_store_no_weight_and_rebuild_bit_exactly(
    tiny: dict[str, Path], dtype: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    out, summary, result = calibrate_whole(tiny, METHOD, PARAMS, dtype, monkeypatch)
    expected = {"linears": len(result.linears), "stored_weights": 0, "float_weights": 0}
    assert summary["records"] == expected
    stored = read_records(out / RECORDS_FILE)
    kinds = {name.rsplit(".", 1)[1] for name in stored if not name.startswith("kv.")}
    assert kinds == {"weight_amax", "pre_quant_scale", "smooth_factor"}
    assert {t.dtype for t in stored.values()} == {torch.float32}
    for module, lq in result.linears.items():
        out_features, in_features = lq.weight.shape
        assert stored[f"{module}.smooth_factor"].shape == (in_features,)
        assert stored[f"{module}.pre_quant_scale"].shape == (in_features,)
        assert stored[f"{module}.weight_amax"].shape == (out_features, in_features // GROUP)
        # The rounded scale alone does not give the weight back; the factor does.
        assert lq.pre_quant_scale is not None
        assert torch.equal(lq.pre_quant_scale, lq.pre_quant_scale.to(getattr(torch, dtype)).float())
    weights = sum(lq.weight.numel() * 2 for lq in result.linears.values())  # as float16
    assert (out / RECORDS_FILE).stat().st_size < weights / 8
    with ExitStack() as stack:
        records = CalibrationRecords(
            out / RECORDS_FILE, OriginalWeights(tiny["hf"], {}, stack), stack
        )
        assert records.dtype == dtype
        for module, lq in result.linears.items():
            rebuilt = records.linear(module)
            assert rebuilt.weight.dtype == torch.float32
            assert torch.equal(rebuilt.weight, lq.weight), module


def test_float32_awq_records_keep_their_layout(
    tiny: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """float32 calibration: the pre-quant scale gives the factor, so nothing is added."""
    out, summary, result = calibrate_whole(tiny, METHOD, PARAMS, "float32", monkeypatch)
    assert summary["records"]["stored_weights"] == 0
    assert all(lq.smooth_factor is not None for lq in result.linears.values())
    assert not [name for name in read_records(out / RECORDS_FILE) if "smooth_factor" in name]


def test_half_awq_layerwise_writes_the_whole_models_records(
    tiny: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    summary = layerwise_equals_whole(tiny, METHOD, PARAMS, monkeypatch)
    assert summary["records"]["stored_weights"] == 0


def test_half_gptq_records_keep_int4_values(tiny: dict[str, Path]) -> None:
    """GPTQ's weights are q × (weight_amax / 7) exactly, in float16 calibration too: the
    records keep the int4 values, never a float32 weight (the H200's 8B run stored 18 GB
    of them; docs/performance.md says why)."""
    out = tiny["root"] / "gptq-float16"
    kwargs = common_args(tiny, "gptq", PARAMS, "float16")
    summary = quantize.quantize_checkpoint(out_dir=out, **kwargs)
    stored = read_records(out / RECORDS_FILE)
    assert not [name for name in stored if name.endswith(".weight")]
    int4 = [name for name in stored if name.endswith(".weight_int4")]
    assert summary["records"] == {
        "linears": len(int4),
        "stored_weights": len(int4),
        "float_weights": 0,
    }
