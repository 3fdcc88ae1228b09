"""ChatGLM 2/3: what only ChatGLM has.

The conformance suite (tests/test_family_conformance.py) proves it like every family,
against forge's own reference model (models/chatglm_model.py; transformers has no class
for it). Here: its top-level tensors and config, ``rope_ratio`` (ChatGLM3's meaning, and
ChatGLM2's refused), TP=4 (more ranks than multi-query groups), an int8 KV cache
calibrated from the native model's cache, the native model in bfloat16, the Hugging Face
folder target and a repository tokenizer refused, and ``forge build`` of a folder whose
config.json has chatglm3-6b's ``auto_map`` building and verifying without running any
file of the folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open

from tests.engine_support import (
    quantized_logits_check,
    random_prompts,
    random_texts,
    rel_diff,
    tiny_checkpoint,
    tiny_engine,
)
from tests.helpers import forge, write_recipe
from tests.tinymodels import CHATGLM_AUTO_MAP, make_tiny_native
from trtllm_forge.checkpoint.convert import convert_hf_checkpoint
from trtllm_forge.checkpoint.forward import CheckpointForward
from trtllm_forge.checkpoint.io import CheckpointReader, read_config
from trtllm_forge.engine.runtime import load_engine
from trtllm_forge.engine.verify import load_reference, reference_greedy, reference_logits
from trtllm_forge.quant.quantize import load_hf_model

PROMPTS = random_prompts(8)
TEXT = random_texts(1)[0]
IDS = torch.randint(3, 250, (2, 40), generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module")
def glm(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The tiny folder and its float32 checkpoint (no engine: the suite builds those)."""
    root = tmp_path_factory.mktemp("chatglm")
    make_tiny_native("chatglm", root / "hf")
    hf, canonical = tiny_checkpoint(root, "chatglm")
    with torch.no_grad():
        logits = load_reference(hf)(input_ids=IDS).logits
    return {"root": root, "hf": hf, "canonical": canonical, "logits": logits}


def _forward_rel_diff(ckpt: Path, want: torch.Tensor) -> float:
    forward = CheckpointForward(ckpt)
    try:
        got = forward.logits(IDS)
    finally:
        forward.close()
    return float((got - want).abs().max() / want.abs().max())


def test_top_level_tensors_and_config(glm: dict[str, Any]) -> None:
    """The final norm and output layer keep their values under TRT-LLM names; no dense
    bias; 2 multi-query groups of 16 channels, GPT-J pairs on the first 8."""
    with safe_open(str(glm["hf"] / "model.safetensors"), "pt") as f:
        hf = {k: f.get_tensor(k) for k in f.keys()}
    with CheckpointReader(glm["canonical"]) as reader:
        assert torch.equal(
            reader.get("transformer.ln_f.weight"), hf["transformer.encoder.final_layernorm.weight"]
        )
        assert torch.equal(reader.get("lm_head.weight"), hf["transformer.output_layer.weight"])
        assert not reader.has("transformer.layers.1.attention.dense.bias")
    config = read_config(glm["canonical"])
    assert (config["num_key_value_heads"], config["head_size"]) == (2, 16)
    assert (config["rotary_embedding_dim"], config["position_embedding_type"]) == (8, "rope_gptj")


def test_native_reference_reads_rope_ratio(glm: dict[str, Any], tmp_path: Path) -> None:
    """rope_ratio scales the rope base (chatglm3-6b-32k: 50); the reference follows it
    (a small ratio, so that 40 positions turn far enough to tell)."""
    folder = make_tiny_native("chatglm", tmp_path / "hf", rope_ratio=0.001)
    with torch.no_grad():
        scaled = load_reference(folder)(input_ids=IDS).logits
    assert float((scaled - glm["logits"]).abs().max() / glm["logits"].abs().max()) > 0.05
    convert_hf_checkpoint(folder, tmp_path / "ckpt", dtype="float32")
    assert read_config(tmp_path / "ckpt")["rotary_base"] == pytest.approx(10.0)
    assert _forward_rel_diff(tmp_path / "ckpt", scaled) < 1e-5


def test_chatglm2_rope_ratio_is_refused() -> None:
    """ChatGLM2-6B-32k's rope_ratio divides positions (ChatGLM3's multiplies the base);
    a config saved from a ChatGLM2 model with a ratio is refused by name (exit 5)."""
    from tests.tinymodels import _CHATGLM_CONFIG
    from trtllm_forge.errors import ExitCode, ForgeError
    from trtllm_forge.models.registry import family_for

    config = {**_CHATGLM_CONFIG, "_name_or_path": "THUDM/chatglm2-6b-32k", "rope_ratio": 16}
    with pytest.raises(ForgeError) as info:
        family_for(config)
    assert info.value.code == ExitCode.SOURCE and "rope_ratio 16" in info.value.message
    family_for({**config, "rope_ratio": 1})
    family_for({**config, "_name_or_path": "THUDM/chatglm3-6b-32k"})


def test_tp4_engine_matches_the_reference(glm: dict[str, Any]) -> None:
    """TP=4 is more ranks than the 2 multi-query groups: each group's K/V is duplicated."""
    engine = load_engine(tiny_engine(glm["root"], "chatglm", tp=4).engine)
    reference = load_reference(glm["hf"])
    assert engine.tp_size == 4
    assert engine.generate(PROMPTS, 32) == [reference_greedy(reference, p, 32) for p in PROMPTS]
    assert rel_diff(reference_logits(reference, TEXT, 128), engine.score(TEXT)) < 1e-4


def test_int8_kv_cache_verifies(glm: dict[str, Any]) -> None:
    """The int8 KV cache reads its ranges from the native model's cache (keys after rope)."""
    from trtllm_forge.quant.quantize import quantize_checkpoint

    root, hf = glm["root"], glm["hf"]
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


# Would leave a file next to itself if anything imported it (transformers with
# trust_remote_code, or forge by mistake).
_TRAP = """from pathlib import Path
Path(__file__).with_name("EXECUTED-" + Path(__file__).stem).write_text("ran")
raise SystemExit("repository code was executed")
"""


def write_trap_files(folder: Path, auto_map: dict[str, str]) -> list[Path]:
    """The .py files ``auto_map`` names, each one a trap."""
    modules = sorted({target.split(".")[0] for target in auto_map.values()})
    for module in modules:
        (folder / f"{module}.py").write_text(_TRAP)
    return [folder / f"EXECUTED-{module}" for module in modules]


def test_auto_map_folder_builds_without_running_its_code(tmp_path: Path) -> None:
    """chatglm3-6b's config.json maps its classes to the repository's .py files; forge
    builds (TP=2) and verifies the folder, and no file of the folder is executed."""
    folder = make_tiny_native(
        "chatglm", tmp_path / "model", with_tokenizer=True, auto_map=CHATGLM_AUTO_MAP
    )
    markers = write_trap_files(folder, CHATGLM_AUTO_MAP)
    recipe = write_recipe(
        tmp_path / "r.yaml",
        source={"path": str(folder)},
        parallel={"tp": 2},
        build={"max_input_len": 64, "max_seq_len": 128},
        verify={"max_new_tokens": 8, "gates": {"min_token_agreement": 1.0, "min_top1": 1.0}},
    )
    run = forge("build", str(recipe), "--json", env={"FORGE_HOME": str(tmp_path / "home")})
    assert run.code == 0, run.err
    doc = run.json()
    assert doc["verify"]["passed"] is True
    assert doc["verify"]["metrics"]["token_agreement"] == 1.0
    assert not [m for m in markers if m.exists()]


def test_hugging_face_folder_target_is_refused_at_plan_time(tmp_path: Path) -> None:
    """A Hugging Face folder of ChatGLM would need the repository's code to load (its own
    verify included): refused at plan time, exit 2 at build.backend."""
    from tests.tinymodels import _CHATGLM_CONFIG
    from trtllm_forge.errors import ExitCode, ForgeError
    from trtllm_forge.pipeline.preflight import check_model
    from trtllm_forge.recipe.load import load_recipe

    recipe = write_recipe(
        tmp_path / "r.yaml", source={"path": "m"}, build={"backend": "hf", "format": "modelopt"}
    )
    with pytest.raises(ForgeError) as info:
        check_model(load_recipe(recipe), dict(_CHATGLM_CONFIG))
    assert info.value.code == ExitCode.RECIPE and "ChatGLMModel" in info.value.message
    assert info.value.location is not None and info.value.location.line > 0


def test_repository_tokenizer_is_still_refused(tmp_path: Path) -> None:
    """chatglm3-6b's tokenizer_config.json maps AutoTokenizer to the repository's
    tokenization_chatglm.py: still refused at fetch (exit 2), with a hint that fits a
    model forge implements itself; nothing of the folder runs."""
    folder = make_tiny_native(
        "chatglm", tmp_path / "model", with_tokenizer=True, auto_map=CHATGLM_AUTO_MAP
    )
    tokenizer_map = {"AutoTokenizer": ["tokenization_chatglm.ChatGLMTokenizer", None]}
    doc = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**doc, "auto_map": tokenizer_map}))
    markers = write_trap_files(folder, {"AutoTokenizer": "tokenization_chatglm.ChatGLMTokenizer"})
    recipe = write_recipe(tmp_path / "r.yaml", source={"path": str(folder)})
    run = forge("build", str(recipe), env={"FORGE_HOME": str(tmp_path / "home")})
    assert run.code == 2, run.err
    assert "tokenizer_config.json has an `auto_map`" in run.err
    assert "forge implements this model itself" in run.err
    assert not [m for m in markers if m.exists()]


def test_native_model_runs_in_bfloat16(glm: dict[str, Any]) -> None:
    """Calibration may run the model in bfloat16: rope tables are applied in the model's
    dtype and the cache holds keys and values in it."""
    model = load_hf_model(glm["hf"])
    assert type(model).__name__ == "ChatGLMNative"
    model = model.to(torch.bfloat16)
    with torch.no_grad():
        out = model(input_ids=IDS, use_cache=True)
    assert out.past_key_values.layers[0].keys.dtype == torch.bfloat16
    assert rel_diff(glm["logits"].numpy(), out.logits.numpy()) < 0.05
