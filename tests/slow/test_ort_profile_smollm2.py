"""Slow tier: SmolLM2-135M int4 AWQ (g64) in the ort profile keeps the perplexity the
fake-quant model has (issue 20). The checkpoint is `bench.quant`'s reduced AWQ run; the
engine is the same checkpoint lowered to MatMulNBits/GroupQueryAttention, run by forge's
runtime on 3 evaluation windows of 512 tokens. Float activations (the default) compute
the checkpoint's numbers; int8 activations (build.int8_activations) stay within 1 %.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
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

SETTINGS = quant.Settings(windows=3, samples=16, awq_samples=8, modelopt=False)


@pytest.fixture(scope="module")
def awq(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    home = tmp_path_factory.mktemp("ort-home")
    work = tmp_path_factory.mktemp("ort-recipes")
    (case,) = quant.build_cases(["awq"], [64], SETTINGS)
    built = quant.forge_build(case, SETTINGS, home, work, quant.StderrProgress())
    windows = quant.eval_windows(SETTINGS.windows, SETTINGS.window_len)
    return {"checkpoint": Path(built["checkpoint"]), "windows": windows, "work": work}


@pytest.mark.parametrize(("int8_activations", "bound"), [(False, 1e-4), (True, 0.01)])
def test_awq_ort_engine_has_the_fake_quant_perplexity(
    awq: dict[str, Any], int8_activations: bool, bound: float
) -> None:
    from trtllm_forge.engine.backends import BuildOptions, build_engine

    options = BuildOptions(
        max_batch_size=1,
        max_input_len=SETTINGS.window_len // 2,
        max_seq_len=SETTINGS.window_len,
        profile="ort",
    )
    engine = awq["work"] / f"engine-ort-int8act{int(int8_activations)}"
    build_engine(
        "onnxruntime",
        awq["checkpoint"],
        engine,
        replace(options, int8_activations=int8_activations),
    )
    ref = quant.Reference(awq["windows"])
    row = quant.evaluate_forge(awq["checkpoint"], engine, awq["windows"], ref)
    assert abs(row["ppl_engine"] / row["ppl_fakequant"] - 1) < bound, row
