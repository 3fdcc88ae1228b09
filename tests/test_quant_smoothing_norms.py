"""Per-token SmoothQuant (TensorRT-LLM's plugin layout) folds each column linear's
smoothing into the norm before it. That is exact only if the fold scales the norm's
bias too and picks the norm that really feeds the linear — which differs by family:
LayerNorm with bias (GPT-2, BLOOM, GPT-NeoX, StarCoder), Gemma 2's sandwich norms
(``post_layernorm`` normalizes the attention output; the MLP reads
``pre_feedforward_layernorm``). Parallel blocks whose one norm feeds attention and
MLP (GPT-J, old Falcon) cannot hold two smoothings and are refused before any work.

A wrong fold still yields a self-consistent checkpoint, so the test compares the
fake-quant forward with transformers' float model: a correct fold costs only INT8
rounding (mean KL ~1e-5 on these tiny models); the broken folds measured 0.02–0.18.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import assert_clean_error, forge, write_recipe
from tests.tinymodels import make_tiny_hf
from trtllm_forge.checkpoint.convert import convert_hf_checkpoint
from trtllm_forge.engine.metrics import kl_per_token
from trtllm_forge.quant.fakequant import FakeQuantForward
from trtllm_forge.quant.quantize import load_hf_model, quantize_checkpoint

FOLDING = ["gpt2", "bloom", "gpt_neox", "gpt_bigcode", "gemma2", "llama"]
SHARED_NORM = ["gptj", "falcon"]
MAX_MEAN_KL = 1e-3


def _per_token_sq(hf: Path, root: Path) -> Path:
    canonical, out = root / "canonical", root / "sq"
    convert_hf_checkpoint(hf, canonical, dtype="float32")
    quantize_checkpoint(
        hf_dir=hf,
        canonical_dir=canonical,
        out_dir=out,
        method="smoothquant",
        params={"alpha": 0.5, "activations": "per_token"},
        calibration=torch.randint(3, 250, (8, 32), generator=torch.Generator().manual_seed(0)),
    )
    return out


@pytest.mark.parametrize("arch", FOLDING)
def test_folded_smoothing_keeps_the_model(tmp_path: Path, arch: str) -> None:
    hf = make_tiny_hf(arch, tmp_path / "hf", seed=1)
    out = _per_token_sq(hf, tmp_path)
    ids = torch.randint(3, 250, (2, 24), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        reference = load_hf_model(hf)(input_ids=ids).logits.numpy()
    fake = FakeQuantForward(out)
    try:
        with torch.no_grad():
            quantized = fake.logits(ids).numpy()
    finally:
        fake.close()
    kl = kl_per_token(
        reference.reshape(-1, reference.shape[-1]), quantized.reshape(-1, quantized.shape[-1])
    )
    assert 0 < float(np.mean(kl)) < MAX_MEAN_KL, (arch, float(np.mean(kl)))


@pytest.mark.parametrize("arch", SHARED_NORM)
def test_shared_norm_families_are_refused_before_any_work(tmp_path: Path, arch: str) -> None:
    hf = make_tiny_hf(arch, tmp_path / "hf", seed=1)
    recipe = write_recipe(
        tmp_path / "r.yaml",
        source={"path": str(hf)},
        quantize={"method": "smoothquant", "activations": "per_token"},
    )
    run = forge("plan", str(recipe), env={"FORGE_HOME": str(tmp_path / "home")})
    assert_clean_error(run, 2, "r.yaml:", "quantize.activations", "one norm feeds both")
    assert not (tmp_path / "home" / "artifacts" / "convert").exists()
