"""Baichuan 2, 7B (rope) and 13B (ALiBi): tiny folders written directly (transformers
has no class for them).

Their reference is forge's own model (models/baichuan_model.py), computed from the HF
tensors; the converted checkpoint's forward and the ORT engine must agree with it, the
NormHead and the position encoding must matter to that agreement, TP=2 and PP=2
engines equal TP=1, int8_wo / fp8 checkpoints pass the Llama tolerances, and ``forge
build`` of a folder whose config.json has Baichuan2-7B-Base's ``auto_map`` builds and
verifies without running any file of the folder.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from tests.engine_support import (
    quantized_logits_check,
    random_prompts,
    random_texts,
    rel_diff,
    tiny_engine,
)
from tests.helpers import forge, write_recipe
from tests.test_family_chatglm import write_trap_files
from tests.tinymodels import BAICHUAN_AUTO_MAP, make_tiny_native
from trtllm_forge.checkpoint.convert import convert_hf_checkpoint
from trtllm_forge.checkpoint.forward import CheckpointForward
from trtllm_forge.checkpoint.io import CheckpointReader, read_config
from trtllm_forge.engine.runtime import load_engine
from trtllm_forge.engine.verify import load_reference, reference_greedy, reference_logits
from trtllm_forge.errors import ForgeError
from trtllm_forge.models.registry import family_for
from trtllm_forge.quant.quantize import load_hf_model

PROMPTS = random_prompts(8)
TEXT = random_texts(1)[0]
NEW_TOKENS = 32
IDS = torch.randint(3, 250, (2, 40), generator=torch.Generator().manual_seed(3))
POSITIONS = {"baichuan2_7b": "rope_gpt_neox", "baichuan2_13b": "alibi"}


@pytest.fixture(scope="module", params=list(POSITIONS))
def model(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    arch = str(request.param)
    root = tmp_path_factory.mktemp(arch)
    make_tiny_native(arch, root / "hf")
    build = tiny_engine(root, arch)
    with torch.no_grad():
        logits = load_reference(build.hf)(input_ids=IDS).logits
    return {"arch": arch, "root": root, "hf": build.hf, "engine": build.engine, "logits": logits}


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


def test_converted_tensors_and_config(model: dict[str, Any]) -> None:
    hf = _hf_tensors(model["hf"])
    canonical = model["root"] / "ckpt-float32"
    with CheckpointReader(canonical) as reader:
        qkv = reader.get("transformer.layers.1.attention.qkv.weight")
        assert torch.equal(qkv, hf["model.layers.1.self_attn.W_pack.weight"])
        head = reader.get("lm_head.weight")
    raw = hf["lm_head.weight"]
    assert torch.allclose(head.norm(dim=-1), torch.ones(raw.shape[0]), atol=1e-6)
    assert torch.allclose(head * raw.norm(dim=-1, keepdim=True), raw, atol=1e-6)
    assert read_config(canonical)["position_embedding_type"] == POSITIONS[model["arch"]]


def test_checkpoint_forward_matches_the_native_reference(model: dict[str, Any]) -> None:
    assert _forward_rel_diff(model["root"] / "ckpt-float32", model["logits"]) < 1e-5


def test_norm_head_and_positions_bite(model: dict[str, Any], tmp_path: Path) -> None:
    """The raw (unnormalized) head, or the other size's position encoding, breaks it."""
    canonical = model["root"] / "ckpt-float32"
    broken = tmp_path / "ckpt"
    shutil.copytree(canonical, broken)
    config = read_config(canonical)
    other = copy.deepcopy(config)
    other["position_embedding_type"] = (
        "alibi" if "rope" in config["position_embedding_type"] else "rope_gpt_neox"
    )
    (broken / "config.json").write_text(json.dumps(other))
    assert _forward_rel_diff(broken, model["logits"]) > 0.05
    (broken / "config.json").write_text(json.dumps(config))
    with CheckpointReader(canonical) as reader:
        tensors = {name: reader.get(name) for name in reader.names()}
    tensors["lm_head.weight"] = _hf_tensors(model["hf"])["lm_head.weight"]
    save_file(tensors, str(broken / "rank0.safetensors"))
    assert _forward_rel_diff(broken, model["logits"]) > 0.05


def test_engine_greedy_and_logits_match_the_reference(model: dict[str, Any]) -> None:
    engine, reference = load_engine(model["engine"]), load_reference(model["hf"])
    assert engine.generate(PROMPTS, NEW_TOKENS) == [
        reference_greedy(reference, p, NEW_TOKENS) for p in PROMPTS
    ]
    assert rel_diff(reference_logits(reference, TEXT, 128), engine.score(TEXT)) < 1e-4


@pytest.mark.parametrize(("tp", "pp"), [(2, 1), (1, 2)])
def test_parallel_engine_matches_tp1(model: dict[str, Any], tp: int, pp: int) -> None:
    single = load_engine(model["engine"])
    parallel = load_engine(tiny_engine(model["root"], model["arch"], tp=tp, pp=pp).engine)
    assert (parallel.tp_size, parallel.pp_size) == (tp, pp)
    assert parallel.generate(PROMPTS, NEW_TOKENS) == single.generate(PROMPTS, NEW_TOKENS)
    assert rel_diff(single.score(TEXT), parallel.score(TEXT)) < 1e-5


# The Llama tolerances of tests/test_quant_methods.py (fake-quant logits vs float; ORT).
QUANT = {"int8_wo": 0.05, "fp8": 0.2}


@pytest.mark.parametrize(
    ("method", "kv_cache"), [("int8_wo", None), ("fp8", None), ("int8_wo", "int8")]
)
def test_quantized_checkpoint_verifies(
    model: dict[str, Any], method: str, kv_cache: str | None
) -> None:
    """The int8 KV cache reads its ranges from the native model's cache (keys after rope)."""
    from trtllm_forge.quant.quantize import quantize_checkpoint

    root, hf = model["root"], model["hf"]
    if not (root / "canonical-f16").exists():
        convert_hf_checkpoint(hf, root / "canonical-f16", dtype="float16")
    out = root / f"q_{method}_{kv_cache}"
    summary = quantize_checkpoint(
        hf_dir=hf,
        canonical_dir=root / "canonical-f16",
        out_dir=out,
        method=method,
        kv_cache=kv_cache,
        calibration=torch.randint(3, 250, (8, 32), generator=torch.Generator().manual_seed(0)),
    )
    algo = read_config(out)["quantization"]["quant_algo"]
    assert algo == {"int8_wo": "W8A16", "fp8": "FP8"}[method]
    assert type(load_hf_model(hf)).__name__ == "BaichuanNative"
    vs_float, vs_fake = quantized_logits_check(
        hf, out, root / f"onnx_{method}_{kv_cache}", IDS[:, :20]
    )
    assert 0 < vs_float < QUANT[method]
    assert vs_fake < 1e-4
    if kv_cache:
        assert read_config(out)["quantization"]["kv_cache_quant_algo"] == "INT8"
        assert summary["kv_amax"] and all(k > 0 and v > 0 for k, v in summary["kv_amax"].values())


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
    native = load_hf_model(model["hf"]).to(torch.bfloat16)
    with torch.no_grad():
        out = native(input_ids=IDS, use_cache=True)
    assert out.past_key_values.layers[0].keys.dtype == torch.bfloat16
    assert rel_diff(model["logits"].numpy(), out.logits.numpy()) < 0.05
