"""ChatGLM 2/3: a tiny folder written directly (transformers has no class for it).

Its reference is forge's own model (models/chatglm_model.py), computed from the HF
tensors; the converted checkpoint's forward and the ORT engine must agree with it, each
ChatGLM feature must matter to that agreement, TP=2 and PP=2 engines equal TP=1,
int8_wo / fp8 checkpoints pass the Llama tolerances, and ``forge build`` of a folder
whose config.json has chatglm3-6b's ``auto_map`` builds and verifies without running
any file of the folder.
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

from tests.engine_support import (
    quantized_logits_check,
    random_prompts,
    random_texts,
    rel_diff,
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
NEW_TOKENS = 32
IDS = torch.randint(3, 250, (2, 40), generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module")
def glm(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("chatglm")
    make_tiny_native("chatglm", root / "hf")
    build = tiny_engine(root, "chatglm")
    with torch.no_grad():
        logits = load_reference(build.hf)(input_ids=IDS).logits
    return {"root": root, "hf": build.hf, "engine": build.engine, "logits": logits}


def _forward_rel_diff(ckpt: Path, want: torch.Tensor) -> float:
    forward = CheckpointForward(ckpt)
    try:
        got = forward.logits(IDS)
    except (RuntimeError, ValueError):  # a changed size no longer fits the weights
        return float("inf")
    finally:
        forward.close()
    return float((got - want).abs().max() / want.abs().max())


def test_converted_tensors_are_the_hf_tensors(glm: dict[str, Any]) -> None:
    with safe_open(str(glm["hf"] / "model.safetensors"), "pt") as f:
        hf = {k: f.get_tensor(k) for k in f.keys()}
    layer = "transformer.encoder.layers.1."
    expected = {
        "transformer.layers.1.attention.qkv.weight": hf[
            f"{layer}self_attention.query_key_value.weight"
        ],
        "transformer.layers.1.attention.qkv.bias": hf[
            f"{layer}self_attention.query_key_value.bias"
        ],
        "transformer.layers.1.mlp.fc.weight": hf[f"{layer}mlp.dense_h_to_4h.weight"][:128],
        "transformer.layers.1.mlp.gate.weight": hf[f"{layer}mlp.dense_h_to_4h.weight"][128:],
        "transformer.layers.1.mlp.proj.weight": hf[f"{layer}mlp.dense_4h_to_h.weight"],
        "transformer.ln_f.weight": hf["transformer.encoder.final_layernorm.weight"],
        "lm_head.weight": hf["transformer.output_layer.weight"],
    }
    canonical = glm["root"] / "ckpt-float32"
    with CheckpointReader(canonical) as reader:
        for name, want in expected.items():
            assert torch.equal(reader.get(name), want), name
        assert not reader.has("transformer.layers.1.attention.dense.bias")
    config = read_config(canonical)
    assert (config["num_key_value_heads"], config["head_size"]) == (2, 16)
    assert (config["rotary_embedding_dim"], config["position_embedding_type"]) == (8, "rope_gptj")


def test_checkpoint_forward_matches_the_native_reference(glm: dict[str, Any]) -> None:
    assert _forward_rel_diff(glm["root"] / "ckpt-float32", glm["logits"]) < 1e-5


# feature -> how to remove it from the converted config.json
FEATURES = {
    "half_rotary": lambda c: c.pop("rotary_embedding_dim"),
    "pair_rotation": lambda c: c.update(position_embedding_type="rope_gpt_neox"),
    "multi_query_groups": lambda c: c.update(num_key_value_heads=4),
    "rope_base": lambda c: c.update(rotary_base=10.0),
}


def test_each_feature_bites(glm: dict[str, Any], tmp_path: Path) -> None:
    canonical = glm["root"] / "ckpt-float32"
    broken = tmp_path / "ckpt"
    shutil.copytree(canonical, broken)
    config = read_config(canonical)
    for name, drop in FEATURES.items():
        mutated = copy.deepcopy(config)
        drop(mutated)
        (broken / "config.json").write_text(json.dumps(mutated))
        assert _forward_rel_diff(broken, glm["logits"]) > 0.05, name


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


def test_engine_greedy_and_logits_match_the_reference(glm: dict[str, Any]) -> None:
    engine, reference = load_engine(glm["engine"]), load_reference(glm["hf"])
    assert engine.generate(PROMPTS, NEW_TOKENS) == [
        reference_greedy(reference, p, NEW_TOKENS) for p in PROMPTS
    ]
    assert rel_diff(reference_logits(reference, TEXT, 128), engine.score(TEXT)) < 1e-4


@pytest.mark.parametrize(("tp", "pp"), [(2, 1), (1, 2), (4, 1)])
def test_parallel_engine_matches_tp1(glm: dict[str, Any], tp: int, pp: int) -> None:
    """TP=4 is more ranks than the 2 multi-query groups: each group's K/V is duplicated."""
    single = load_engine(glm["engine"])
    parallel = load_engine(tiny_engine(glm["root"], "chatglm", tp=tp, pp=pp).engine)
    assert (parallel.tp_size, parallel.pp_size) == (tp, pp)
    assert parallel.generate(PROMPTS, NEW_TOKENS) == single.generate(PROMPTS, NEW_TOKENS)
    assert rel_diff(single.score(TEXT), parallel.score(TEXT)) < 1e-5


# The Llama tolerances of tests/test_quant_methods.py (fake-quant logits vs float; ORT).
QUANT = {"int8_wo": 0.05, "fp8": 0.2}


@pytest.mark.parametrize(
    ("method", "kv_cache"), [("int8_wo", None), ("fp8", None), ("int8_wo", "int8")]
)
def test_quantized_checkpoint_verifies(
    glm: dict[str, Any], method: str, kv_cache: str | None
) -> None:
    """The int8 KV cache reads its ranges from the native model's cache (keys after rope)."""
    from trtllm_forge.quant.quantize import quantize_checkpoint

    root, hf = glm["root"], glm["hf"]
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
    assert (
        read_config(out)["quantization"]["quant_algo"] == {"int8_wo": "W8A16", "fp8": "FP8"}[method]
    )
    assert type(load_hf_model(hf)).__name__ == "ChatGLMNative"
    vs_float, vs_fake = quantized_logits_check(
        hf, out, root / f"onnx_{method}_{kv_cache}", IDS[:, :20]
    )
    assert 0 < vs_float < QUANT[method]
    assert vs_fake < 1e-4
    if kv_cache:
        assert read_config(out)["quantization"]["kv_cache_quant_algo"] == "INT8"
        assert summary["kv_amax"] and all(k > 0 and v > 0 for k, v in summary["kv_amax"].values())


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
    model = load_hf_model(glm["hf"]).to(torch.bfloat16)
    with torch.no_grad():
        out = model(input_ids=IDS, use_cache=True)
    assert out.past_key_values.layers[0].keys.dtype == torch.bfloat16
    assert rel_diff(glm["logits"].numpy(), out.logits.numpy()) < 0.05
