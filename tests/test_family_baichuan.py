"""Baichuan 2, 7B (rope) and 13B (ALiBi): what only Baichuan has.

The conformance suite (tests/test_family_conformance.py) proves both sizes like every
family, against forge's own reference model (models/baichuan_model.py; transformers has
no class for them). Here: the NormHead (``lm_head`` rows stored L2-normalized, and the
raw head breaking the agreement), the variant read from the config class, an int8 KV
cache calibrated from the native model's cache, the native model in bfloat16, and
``forge build`` of a folder whose config.json has Baichuan2-7B-Base's ``auto_map``
building and verifying without running any file of the folder.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from tests.engine_support import quantized_logits_check, rel_diff, tiny_checkpoint
from tests.helpers import forge, write_recipe
from tests.test_family_chatglm import write_trap_files
from tests.tinymodels import BAICHUAN_AUTO_MAP, make_tiny_native
from trtllm_forge.checkpoint.convert import convert_hf_checkpoint
from trtllm_forge.checkpoint.forward import CheckpointForward
from trtllm_forge.checkpoint.io import CheckpointReader, read_config
from trtllm_forge.engine.verify import load_reference
from trtllm_forge.errors import ForgeError
from trtllm_forge.models.registry import family_for
from trtllm_forge.quant.quantize import load_hf_model

IDS = torch.randint(3, 250, (2, 40), generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module", params=["baichuan2_7b", "baichuan2_13b"])
def model(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """The tiny folder and its float32 checkpoint (no engine: the suite builds those)."""
    arch = str(request.param)
    root = tmp_path_factory.mktemp(arch)
    make_tiny_native(arch, root / "hf")
    hf, canonical = tiny_checkpoint(root, arch)
    with torch.no_grad():
        logits = load_reference(hf)(input_ids=IDS).logits
    return {"arch": arch, "root": root, "hf": hf, "canonical": canonical, "logits": logits}


def _hf_tensors(hf: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(hf / "model.safetensors"), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def _forward_rel_diff(ckpt: Path, want: torch.Tensor) -> float:
    forward = CheckpointForward(ckpt)
    try:
        got = forward.logits(IDS)
    finally:
        forward.close()
    return float((got - want).abs().max() / want.abs().max())


def test_norm_head_is_stored_normalized_and_bites(model: dict[str, Any], tmp_path: Path) -> None:
    """``lm_head`` rows are the HF rows over their L2 norms; the raw head in their place
    breaks the checkpoint forward's agreement with the reference."""
    raw = _hf_tensors(model["hf"])["lm_head.weight"]
    with CheckpointReader(model["canonical"]) as reader:
        tensors = {name: reader.get(name) for name in reader.names()}
    head = tensors["lm_head.weight"]
    assert torch.allclose(head.norm(dim=-1), torch.ones(raw.shape[0]), atol=1e-6)
    assert torch.allclose(head * raw.norm(dim=-1, keepdim=True), raw, atol=1e-6)
    assert _forward_rel_diff(model["canonical"], model["logits"]) < 1e-5
    broken = tmp_path / "ckpt"
    shutil.copytree(model["canonical"], broken)
    tensors["lm_head.weight"] = raw
    save_file(tensors, str(broken / "rank0.safetensors"))
    assert _forward_rel_diff(broken, model["logits"]) > 0.05


def test_int8_kv_cache_verifies(model: dict[str, Any]) -> None:
    """The int8 KV cache reads its ranges from the native model's cache (what the cache
    stores: keys after rope for 7B, plain keys for the ALiBi 13B)."""
    from trtllm_forge.quant.quantize import quantize_checkpoint

    root, hf = model["root"], model["hf"]
    convert_hf_checkpoint(hf, root / "canonical-f16", dtype="float16")
    out = root / "q_int8_kv"
    summary = quantize_checkpoint(
        hf_dir=hf,
        canonical_dir=root / "canonical-f16",
        out_dir=out,
        method="int8_wo",
        kv_cache="int8",
        calibration=torch.randint(3, 250, (8, 32), generator=torch.Generator().manual_seed(0)),
    )
    assert read_config(out)["quantization"]["kv_cache_quant_algo"] == "INT8"
    assert summary["kv_amax"] and all(k > 0 and v > 0 for k, v in summary["kv_amax"].values())
    vs_float, vs_fake = quantized_logits_check(hf, out, root / "onnx_int8_kv", IDS[:, :20])
    assert 0 < vs_float < 0.05  # the int8_wo tolerance of tests/test_quant_methods.py
    assert vs_fake < 1e-4


def test_variant_is_read_from_the_config_class() -> None:
    """7B's config defines max_position_embeddings (rope), 13B's only model_max_length
    (ALiBi); Baichuan 1's vocabulary (no NormHead) is refused."""
    from tests.tinymodels import _BAICHUAN_7B_CONFIG, _BAICHUAN_13B_CONFIG

    family = family_for(_BAICHUAN_7B_CONFIG)
    rope = family.trtllm_config(_BAICHUAN_7B_CONFIG, dtype="float16")
    alibi = family.trtllm_config(_BAICHUAN_13B_CONFIG, dtype="float16")
    assert (rope["position_embedding_type"], alibi["position_embedding_type"]) == (
        "rope_gpt_neox",
        "alibi",
    )
    assert alibi["max_position_embeddings"] == 128
    with pytest.raises(ForgeError, match="Baichuan 1"):
        family_for({**_BAICHUAN_13B_CONFIG, "vocab_size": 64000})


def test_auto_map_folder_builds_without_running_its_code(tmp_path: Path) -> None:
    """Baichuan2-7B-Base's config.json maps its classes to the repository's .py files;
    forge builds (PP=2) and verifies the folder, and no file of the folder is executed."""
    folder = make_tiny_native(
        "baichuan2_7b", tmp_path / "model", with_tokenizer=True, auto_map=BAICHUAN_AUTO_MAP
    )
    markers = write_trap_files(folder, BAICHUAN_AUTO_MAP)
    recipe = write_recipe(
        tmp_path / "r.yaml",
        source={"path": str(folder)},
        parallel={"pp": 2},
        build={"max_input_len": 64, "max_seq_len": 128},
        verify={"max_new_tokens": 8, "gates": {"min_token_agreement": 1.0, "min_top1": 1.0}},
    )
    run = forge("build", str(recipe), "--json", env={"FORGE_HOME": str(tmp_path / "home")})
    assert run.code == 0, run.err
    doc = run.json()
    assert doc["verify"]["passed"] is True
    assert not [m for m in markers if m.exists()]


def test_native_model_runs_in_bfloat16(model: dict[str, Any]) -> None:
    """Calibration may run the model in bfloat16: rope tables and ALiBi biases are applied
    in the model's dtype and the cache holds keys and values in it."""
    native = load_hf_model(model["hf"])
    assert type(native).__name__ == "BaichuanNative"
    native = native.to(torch.bfloat16)
    with torch.no_grad():
        out = native(input_ids=IDS, use_cache=True)
    assert out.past_key_values.layers[0].keys.dtype == torch.bfloat16
    assert rel_diff(model["logits"].numpy(), out.logits.numpy()) < 0.05
