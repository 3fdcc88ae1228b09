"""Slow tier: issue 4's quantization bars on the real SmolLM2-135M, on a reduced run of
`python -m bench.quant` (3 evaluation windows of 512 tokens, fewer calibration windows,
no ModelOpt side; needs `make data`). The full run is docs/quantization.md.

Bars (engine perplexity: the ONNX engine run by forge's own runtime, ``OrtEngine``):
INT8 weight-only within 1 % of the float32 reference; SmoothQuant (per-token
activations, alpha 0.5: the configuration that meets it) and FP8 within 5 %; AWQ and
GPTQ below INT4 round-to-nearest at group size 128 (SmolLM2's 576-wide inputs do not
hold 128-wide groups, so only mlp.proj is INT4 there, for all three alike). And the
engine computes what the checkpoint means: weight-only formats equal forge's fake
quant to float precision; activation formats are held to the noise floor that a
1e-7 nudge of the fake-quant model's own linear inputs shows (docs/quantization.md).
"""

from __future__ import annotations

from typing import Any

import pytest

from bench import quant

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (quant.MODEL.is_dir() and quant.EVAL_TEXT.is_file() and quant.CALIB_TEXT.is_file()),
        reason="run `make data` first (SmolLM2-135M, Wikipedia eval and calibration text)",
    ),
]

SETTINGS = quant.Settings(
    windows=3,
    samples=16,
    gptq_samples=16,
    awq_samples=8,
    modelopt=False,
    smoothquant=((0.5, "per_token"),),
)
METHODS = ["int8_wo", "int4_wo", "awq", "gptq", "smoothquant", "fp8"]
SMOOTHQUANT = "smoothquant α=0.5 per-token"
WEIGHT_ONLY = ["int8_wo", "int4_wo g128", "awq g128", "gptq g128"]
ACTIVATIONS = [SMOOTHQUANT, "fp8"]


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    home = tmp_path_factory.mktemp("quant-home")
    work = tmp_path_factory.mktemp("quant-recipes")
    cases = quant.build_cases(METHODS, [128], SETTINGS)
    windows = quant.eval_windows(SETTINGS.windows, SETTINGS.window_len)
    ref = quant.Reference(windows)
    progress = quant.StderrProgress()
    rows = {
        case.label: quant.run_case(case, SETTINGS, home, work, windows, ref, progress)
        for case in cases
    }
    return {"reference": ref.ppl, "rows": rows}


def _increase(results: dict[str, Any], label: str) -> float:
    return float(results["rows"][label]["ppl_engine"] / results["reference"] - 1.0)


def test_reference_is_smollm2_on_wikipedia(results: dict[str, Any]) -> None:
    assert 10 < results["reference"] < 40  # data.md: ≈ 21 on this text


def test_int8_weight_only_within_one_percent(results: dict[str, Any]) -> None:
    assert results["rows"]["int8_wo"]["quantized_modules"] == 150
    assert 0 < _increase(results, "int8_wo") <= 0.01  # INT8 is not free, and not far off


@pytest.mark.parametrize("label", [SMOOTHQUANT, "fp8"])
def test_activation_formats_within_five_percent(results: dict[str, Any], label: str) -> None:
    assert results["rows"][label]["quantized_modules"] == 150
    assert 0 < _increase(results, label) <= 0.05


@pytest.mark.parametrize("method", ["awq", "gptq"])
def test_calibrated_int4_beats_round_to_nearest(results: dict[str, Any], method: str) -> None:
    rtn, calibrated = results["rows"]["int4_wo g128"], results["rows"][f"{method} g128"]
    assert calibrated["quantized_modules"] == rtn["quantized_modules"] == 30  # mlp.proj only
    assert calibrated["ppl_engine"] < rtn["ppl_engine"], (
        calibrated["ppl_engine"],
        rtn["ppl_engine"],
    )


@pytest.mark.parametrize("label", WEIGHT_ONLY)
def test_weight_only_engine_equals_fake_quant(results: dict[str, Any], label: str) -> None:
    row = results["rows"][label]
    # float32 accumulation order only (the full bench run: max 1.2e-3, mean 8e-6)
    assert row["engine_vs_fakequant"]["max_abs_logit"] < 5e-3
    assert row["engine_vs_fakequant"]["mean_abs_logit"] < 1e-4
    assert row["engine_vs_fakequant"]["argmax_differs"] == 0
    assert abs(row["ppl_engine"] / row["ppl_fakequant"] - 1) < 1e-5


@pytest.mark.parametrize("label", ACTIVATIONS)
def test_activation_engine_within_rounding_noise_of_fake_quant(
    results: dict[str, Any], label: str
) -> None:
    """Activation Q/DQ on 30 layers is chaotic: float32 rounding differences flip a few
    INT8/FP8 codes and the flips grow. The engine may differ from fake quant by what a
    1e-7 nudge of fake quant's own inputs already does (x3 spread, plus a little); a
    lowering mismatch (a wrong scale, a missing smoother) moves these figures by orders
    of magnitude."""
    row = results["rows"][label]
    engine, floor = row["engine_vs_fakequant"], row["nudged_vs_fakequant"]
    assert engine["mean_abs_logit"] < 3 * floor["mean_abs_logit"] + 1e-3, (engine, floor)
    assert engine["argmax_differs"] < 3 * floor["argmax_differs"] + 0.02, (engine, floor)
    engine_ppl = abs(row["ppl_engine"] / row["ppl_fakequant"] - 1)
    nudged_ppl = abs(row["ppl_nudged"] / row["ppl_fakequant"] - 1)
    assert engine_ppl < 3 * nudged_ppl + 0.005, (row["ppl_engine"], row["ppl_nudged"])
