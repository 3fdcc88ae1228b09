"""Slow tier (issue 12): SmolLM2-135M through the compressed-tensors loader.

Each method compressed-tensors can carry is calibrated exactly as `python -m bench.quant`
calibrates it for docs/quantization.md (same recipe, same calibration and evaluation
windows), written as a compressed-tensors folder, loaded by transformers with the
compressed-tensors library (decompressed on the CPU), and its perplexity on the
documented windows must equal the table's "ppl fake-quant (forge)" figure within 0.5 %.
Needs `make data`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench import quant

pytestmark = pytest.mark.slow
needs_bench_data = pytest.mark.skipif(
    not (quant.MODEL.is_dir() and quant.EVAL_TEXT.is_file() and quant.CALIB_TEXT.is_file()),
    reason="run `make data` first (SmolLM2-135M, Wikipedia eval and calibration text)",
)
needs_model = pytest.mark.skipif(not quant.MODEL.is_dir(), reason="run `make data` (SmolLM2-135M)")

SETTINGS = quant.Settings(modelopt=False, smoothquant=())
# Rows of docs/quantization.md whose format compressed-tensors carries.
LABELS = ["int8_wo", "int4_wo g128", "int4_wo g64", "gptq g128", "gptq g64", "fp8"]
FAKE_QUANT_COLUMN = "ppl fake-quant (forge)"


def documented_fake_quant() -> dict[str, float]:
    """label → the documented fake-quant perplexity (docs/quantization.md's first table)."""
    lines = [line for line in quant.DOC.read_text().splitlines() if line.startswith("| ")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    column = header.index(FAKE_QUANT_COLUMN)
    table = {}
    for line in lines[1:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if cells[0] in LABELS and cells[0] not in table:
            table[cells[0]] = float(cells[column])
    return table


@pytest.fixture(scope="module")
def windows() -> Any:
    return quant.eval_windows(SETTINGS.windows, SETTINGS.window_len)


@pytest.fixture(scope="module")
def cases() -> dict[str, quant.Case]:
    built = quant.build_cases(["int8_wo", "int4_wo", "gptq", "fp8"], [128, 64], SETTINGS)
    return {case.label: case for case in built}


@needs_bench_data
@pytest.mark.parametrize("label", LABELS)
def test_compressed_tensors_perplexity_equals_documented_fake_quant(
    label: str, cases: dict[str, quant.Case], windows: Any, tmp_path_factory: pytest.TempPathFactory
) -> None:
    import transformers
    import yaml

    from trtllm_forge import api
    from trtllm_forge.context import RunContext
    from trtllm_forge.context import Settings as ForgeSettings
    from trtllm_forge.hf.folder import write_hf_folder
    from trtllm_forge.stages.build import checkpoint_dir
    from trtllm_forge.stages.fetch import snapshot_dir

    case = cases[label]
    work = tmp_path_factory.mktemp("ct-smollm2")
    recipe = work / f"{case.slug}.yaml"
    recipe.write_text(yaml.safe_dump(quant.recipe_doc(case, SETTINGS), sort_keys=False))
    home = Path(quant.HOME)  # bench.quant's store: a calibration it made is reused
    ctx = RunContext(ForgeSettings(home=home), quant.StderrProgress())
    artifacts = api.build(recipe=recipe, until="calibrate", ctx=ctx).artifacts
    folder = work / "hf"
    write_hf_folder(
        hf_dir=snapshot_dir(artifacts["fetch"]),
        calibrated_dir=checkpoint_dir(artifacts["calibrate"]),
        out_dir=folder,
        target="compressed-tensors",
    )
    model = transformers.AutoModelForCausalLM.from_pretrained(str(folder))
    ppl = quant.perplexity([quant.nll(quant.hf_logits(model, ids), ids) for ids in windows])
    documented = documented_fake_quant()[label]
    assert abs(ppl / documented - 1.0) <= 0.005, (label, ppl, documented)


@needs_model
@pytest.mark.parametrize(
    ("method", "params"),
    [("int8_wo", {}), ("int4_wo", {"group_size": 64}), ("fp8", {})],
)
def test_compressed_tensors_equals_fake_quant_on_forge_data(
    method: str, params: dict[str, Any], tmp_path: Path
) -> None:
    """Without the bench data: forge's built-in calibration corpus and held-out text, the
    loader's perplexity against forge's fake quant of the same checkpoint (within 0.5 %)."""
    import torch
    import transformers

    from trtllm_forge.checkpoint.convert import convert_hf_checkpoint
    from trtllm_forge.hf.folder import write_hf_folder
    from trtllm_forge.quant.calibration import CalibrationSpec, load_tokenizer
    from trtllm_forge.quant.fakequant import FakeQuantForward
    from trtllm_forge.quant.quantize import quantize_checkpoint
    from trtllm_forge.quickeval import builtin_eval_text

    canonical, calibrated, folder = tmp_path / "canonical", tmp_path / "calibrated", tmp_path / "hf"
    convert_hf_checkpoint(quant.MODEL, canonical, dtype="float32")
    exclude = (
        ["lm_head", "*mlp.fc", "*mlp.gate", "*attention*"] if method == "int4_wo" else ["lm_head"]
    )
    quantize_checkpoint(
        hf_dir=quant.MODEL,
        canonical_dir=canonical,
        out_dir=calibrated,
        method=method,
        params=params,
        exclude=exclude,
        calibration=CalibrationSpec(samples=16, seq_len=256),
    )
    write_hf_folder(
        hf_dir=quant.MODEL, calibrated_dir=calibrated, out_dir=folder, target="compressed-tensors"
    )
    tokens = load_tokenizer(quant.MODEL)(builtin_eval_text(), add_special_tokens=False)["input_ids"]
    windows = torch.tensor([tokens[:512]])  # the built-in text is one short window
    model = transformers.AutoModelForCausalLM.from_pretrained(str(folder))
    fake = FakeQuantForward(calibrated)
    try:
        ppl_loader = quant.perplexity(
            [quant.nll(quant.hf_logits(model, ids), ids) for ids in windows]
        )
        with torch.no_grad():
            ppl_fake = quant.perplexity(
                [quant.nll(fake.logits(ids[None])[0].float().numpy(), ids) for ids in windows]
            )
    finally:
        fake.close()
    print(f"{method}: loader {ppl_loader:.4f} fake-quant {ppl_fake:.4f}")
    assert abs(ppl_loader / ppl_fake - 1.0) <= 0.005
