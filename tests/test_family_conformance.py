"""Conformance suite: every family but the Llama one, one parametrized set of tests.

Per case of tests/family_cases.py (a tiny random model of tests/tinymodels.py): the
converted tensors are the HF tensors (transposed, re-ordered, split or ``1 + w`` where the
layout says so), the float32 reference forward equals the family's reference, dropping
any one of the family's features from the converted config breaks that equality (so the
engine tests below can fail), the ORT engine's greedy tokens equal the reference's (8
left-padded prompts × 32 tokens) with logits within 1e-4, TP=2 and PP=2 engines equal
TP=1, and int8_wo / fp8 checkpoints verify with the Llama tolerances of
tests/test_quant_methods.py (the MoE families' experts each calibrated from their routed
tokens: tests/test_moe_quant.py). The Llama family (Llama, Mistral, Qwen2) has its own
tests: tests/test_convert_models.py, test_engine_parity.py, test_quant_methods.py.

The reference is transformers, except for Baichuan 2 and ChatGLM 2/3 (NATIVE_ARCHES):
transformers has no class for them, their tiny folders are written directly, and the
reference is forge's own model (docs/models.md). What only one family has is tested in
its own file (tests/test_families_a.py, test_families_b.py, test_family_gemma2.py,
test_family_phi3.py, test_family_baichuan.py, test_family_chatglm.py).
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
    tiny_checkpoint,
    tiny_engine,
)
from tests.family_cases import CASES, ENGINE_CASES, EXPECTED, FEATURES
from tests.tinymodels import NATIVE_ARCHES, make_tiny_native
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
def family(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """The case's tiny model converted (and its TP=1 engine built when it has one);
    tests pick the cases with ``indirect`` parametrization."""
    name = str(request.param)
    case = CASES[name]
    root = tmp_path_factory.mktemp(name)
    if case.arch in NATIVE_ARCHES:
        make_tiny_native(case.arch, root / "hf")  # tiny_checkpoint converts what it finds
    if case.engine:
        hf = tiny_engine(root, case.arch, **case.overrides).hf
    else:
        hf, _ = tiny_checkpoint(root, case.arch, **case.overrides)
    with torch.no_grad():
        hf_logits = load_hf_model(hf)(input_ids=IDS).logits
    return {
        "name": name,
        "case": case,
        "root": root,
        "hf": hf,
        "engine": root / "engine-float32-tp1-pp1",
        "canonical": root / "ckpt-float32",
        "hf_logits": hf_logits,
    }


EVERY = pytest.mark.parametrize("family", list(CASES), indirect=True)
WITH_ENGINE = pytest.mark.parametrize("family", ENGINE_CASES, indirect=True)


def _reference_rel_diff(ckpt: Path, want: torch.Tensor) -> float:
    forward = CheckpointForward(ckpt)
    try:
        got = forward.logits(IDS)
    except (RuntimeError, ValueError):  # a dropped size no longer fits the weights
        return float("inf")
    finally:
        forward.close()
    return float((got - want).abs().max() / want.abs().max())


def _hf_tensors(hf: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(hf / "model.safetensors"), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


@EVERY
def test_converted_tensors_are_the_hf_tensors(family: dict[str, Any]) -> None:
    hf = _hf_tensors(family["hf"])
    config = read_config(family["canonical"])
    with CheckpointReader(family["canonical"]) as reader:
        for name, expected in EXPECTED[family["name"]].items():
            assert torch.equal(reader.get(name), expected(hf.__getitem__, config)), name


@EVERY
def test_reference_forward_matches_transformers(family: dict[str, Any]) -> None:
    assert _reference_rel_diff(family["canonical"], family["hf_logits"]) < 1e-5


@EVERY
def test_each_feature_bites(family: dict[str, Any], tmp_path: Path) -> None:
    broken = tmp_path / "ckpt"
    shutil.copytree(family["canonical"], broken)
    config = read_config(family["canonical"])
    assert FEATURES[family["name"]]
    for name, drop in FEATURES[family["name"]].items():
        mutated = copy.deepcopy(config)
        drop(mutated)
        assert mutated != config, name
        (broken / "config.json").write_text(json.dumps(mutated))
        assert _reference_rel_diff(broken, family["hf_logits"]) > family["case"].bite, name


@WITH_ENGINE
def test_engine_greedy_matches_transformers(family: dict[str, Any]) -> None:
    engine, reference = load_engine(family["engine"]), load_reference(family["hf"])
    assert engine.generate(PROMPTS, NEW_TOKENS) == [
        reference_greedy(reference, p, NEW_TOKENS) for p in PROMPTS
    ]
    assert rel_diff(reference_logits(reference, TEXT, 128), engine.score(TEXT)) < 1e-4


@WITH_ENGINE
@pytest.mark.parametrize(("tp", "pp"), [(2, 1), (1, 2)])
def test_parallel_engine_matches_tp1(family: dict[str, Any], tp: int, pp: int) -> None:
    single = load_engine(family["engine"])
    case = family["case"]
    build = tiny_engine(family["root"], case.arch, tp=tp, pp=pp, **case.overrides)
    parallel = load_engine(build.engine)
    assert (parallel.tp_size, parallel.pp_size) == (tp, pp)
    assert parallel.generate(PROMPTS, NEW_TOKENS) == single.generate(PROMPTS, NEW_TOKENS)
    assert rel_diff(single.score(TEXT), parallel.score(TEXT)) < 1e-5


# The Llama tolerances of tests/test_quant_methods.py (weights, fake-quant logits, ORT).
QUANT = {"int8_wo": (0.01, 0.05), "fp8": (0.05, 0.2)}


@WITH_ENGINE
@pytest.mark.parametrize("method", list(QUANT))
def test_quantized_family_verifies(family: dict[str, Any], method: str) -> None:
    """fp8 also quantizes the KV cache to fp8 where the case says so (Falcon, BLOOM,
    MPT, Gemma 2)."""
    from trtllm_forge.quant.quantize import quantize_checkpoint

    root, hf, case = family["root"], family["hf"], family["case"]
    if not (root / "canonical-f16").exists():
        convert_hf_checkpoint(hf, root / "canonical-f16", dtype="float16")
    out = root / f"q_{method}"
    quantize_checkpoint(
        hf_dir=hf,
        canonical_dir=root / "canonical-f16",
        out_dir=out,
        method=method,
        kv_cache="fp8" if method == "fp8" and case.fp8_kv else None,
        calibration=torch.randint(3, 250, (8, 32), generator=torch.Generator().manual_seed(0)),
    )
    algo = read_config(out)["quantization"]["quant_algo"]
    assert algo == {"int8_wo": "W8A16", "fp8": "FP8"}[method]
    weight_tol, logit_tol = QUANT[method]
    if case.weight_check:
        _check_dequantized_weights(hf, root / "canonical-f16", out, weight_tol)
    vs_float, vs_fake = quantized_logits_check(hf, out, root / f"onnx_{method}", IDS[:, :20])
    assert 0 < vs_float < logit_tol
    assert vs_fake < 1e-4


def _check_dequantized_weights(hf: Path, base: Path, out: Path, tol: float) -> None:
    """Each quantized linear, dequantized, within ``tol`` of the float16 one."""
    from trtllm_forge.quant.fakequant import dequantized_weight
    from trtllm_forge.quant.targets import linear_targets

    targets = linear_targets(json.loads((hf / "config.json").read_text()))
    with CheckpointReader(out) as reader, CheckpointReader(base) as original:
        for target in targets:
            want = original.get(f"{target.module}.weight").float()
            got = dequantized_weight(reader, target.module)
            assert got is not None, target.module
            rel = float((got - want).norm() / want.norm())
            assert rel < tol, (target.module, rel)


def test_ort_profile_refuses_the_families_it_cannot_lower() -> None:
    """build.profile ort lowers the Llama graph (and Qwen3, Phi-3, Mixtral, Qwen2-MoE and
    Qwen3-MoE: tests/test_engine_ort_moe.py): these families stop at plan time."""
    from trtllm_forge.engine.onnx.ort.support import model_refusal

    for arch in (
        "Gemma3ForCausalLM",
        "ChatGLMModel",
        "BaichuanForCausalLM",
        "GPT2LMHeadModel",
        "FalconForCausalLM",
    ):
        refusal = model_refusal({"architectures": [arch], "hidden_act": "silu"})
        assert refusal is not None and arch in refusal


def test_mistral_nemo_head_dim_matches_transformers(tmp_path: Path) -> None:
    """Mistral-Nemo style: head_dim 32 with hidden 64 and 4 heads (q is 128 wide)."""
    single = tiny_engine(tmp_path, "mistral", head_dim=32)
    assert read_config(single.checkpoint)["head_size"] == 32
    reference = load_reference(single.hf)
    engine = load_engine(single.engine)
    assert engine.generate(PROMPTS[:4], 16) == [
        reference_greedy(reference, p, 16) for p in PROMPTS[:4]
    ]
    parallel = load_engine(tiny_engine(tmp_path, "mistral", tp=2).engine)
    assert rel_diff(engine.score(TEXT), parallel.score(TEXT)) < 1e-5


def test_gemma3_rope_settings_from_either_config_form() -> None:
    """transformers 5's per-layer-type rope_parameters and the older flat keys say the
    same; missing keys take Gemma3TextConfig's defaults (local 10 000, global 1e6)."""
    from trtllm_forge.models.gemma3 import gemma3_ropes, gemma3_sliding_layers

    nested = {
        "rope_parameters": {
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
        }
    }
    flat = {
        "rope_theta": 1e6,
        "rope_local_base_freq": 10000.0,
        "rope_scaling": {"rope_type": "linear", "factor": 8.0},
    }
    assert gemma3_ropes(nested) == gemma3_ropes(flat)
    theta, scaling, local = gemma3_ropes(flat)
    assert (theta, local, scaling and scaling["factor"]) == (1e6, 10000.0, 8.0)
    assert gemma3_ropes({})[::2] == (1e6, 10000.0)
    twelve = {"num_hidden_layers": 12, "num_attention_heads": 4, "hidden_size": 64}
    twelve |= {"vocab_size": 256}
    assert [i for i in range(12) if i not in gemma3_sliding_layers(twelve)] == [5, 11]


@pytest.mark.parametrize("adds_bos", [True, False])
def test_verify_prompts_get_the_tokenizers_bos(tmp_path: Path, adds_bos: bool) -> None:
    """Gemma's tokenizer adds BOS: verify's prompts carry it exactly when the tokenizer
    says so; the scored texts never do (engine and reference score the same ids)."""
    from tokenizers import processors

    from tests.tinymodels import make_tiny_tokenizer
    from trtllm_forge.engine.verify import tokenize_inputs

    tokenizer = make_tiny_tokenizer(tmp_path)
    if adds_bos:
        tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
            single="<s> $A", special_tokens=[("<s>", 1)]
        )
        tokenizer.save_pretrained(tmp_path)
    prompts, texts = tokenize_inputs(tmp_path, ["Hello world"], ["Hello world"], 64)
    assert (prompts[0][0] == 1) is adds_bos
    assert prompts[0][adds_bos:] == texts[0] and texts[0][0] != 1


def test_gemma3_wrapper_text_model_matches_transformers(tmp_path: Path) -> None:
    """Gemma3ForConditionalGeneration: the text decoder under language_model.model.* is
    built (vision tower ignored) and equals transformers' multimodal model on text, at
    TP=1 and TP=2; quantizing it is refused at plan time (exit 2, at quantize.method)."""
    from tests.helpers import write_recipe
    from trtllm_forge.errors import ExitCode, ForgeError
    from trtllm_forge.pipeline.preflight import check_model
    from trtllm_forge.recipe.load import load_recipe

    build = tiny_engine(tmp_path, "gemma3_mm")
    config = json.loads((build.hf / "config.json").read_text())
    assert config["architectures"] == ["Gemma3ForConditionalGeneration"]
    assert read_config(build.checkpoint)["forge"]["sliding_window_layers"] == [0]
    engine, reference = load_engine(build.engine), load_reference(build.hf)
    assert type(reference).__name__ == "Gemma3ForConditionalGeneration"
    assert engine.generate(PROMPTS[:4], 16) == [
        reference_greedy(reference, p, 16) for p in PROMPTS[:4]
    ]
    assert rel_diff(reference_logits(reference, TEXT, 128), engine.score(TEXT)) < 1e-4
    parallel = load_engine(tiny_engine(tmp_path, "gemma3_mm", tp=2).engine)
    assert rel_diff(engine.score(TEXT), parallel.score(TEXT)) < 1e-5
    recipe = write_recipe(
        tmp_path / "recipe.yaml", source={"path": "m"}, quantize={"method": "int8_wo"}
    )
    with pytest.raises(ForgeError) as info:
        check_model(load_recipe(recipe), config)
    assert info.value.code == ExitCode.RECIPE and "language_model" in info.value.message
    assert info.value.location is not None


def _plan_refusal(tmp_path: Path, config: dict[str, Any], **sections: Any) -> Any:
    from tests.helpers import write_recipe
    from trtllm_forge.errors import ForgeError
    from trtllm_forge.pipeline.preflight import check_model
    from trtllm_forge.recipe.load import load_recipe

    recipe = write_recipe(tmp_path / "recipe.yaml", source={"path": "m"}, **sections)
    with pytest.raises(ForgeError) as info:
        check_model(load_recipe(recipe), config)
    return info.value


def test_mixtral_config_refusals_at_plan_time(tmp_path: Path) -> None:
    """More experts per token than experts, and per-token SmoothQuant (its smoothing
    folds into a norm, and one norm feeds the router and every expert): exit 2, located."""
    from tests.tinymodels import TINY_DEFAULTS
    from trtllm_forge.errors import ExitCode

    config = {**TINY_DEFAULTS, "architectures": ["MixtralForCausalLM"], "model_type": "mixtral"}
    config |= {"num_local_experts": 4, "num_experts_per_tok": 5}
    error = _plan_refusal(tmp_path, config)
    assert error.code == ExitCode.RECIPE and "num_experts_per_tok 5" in error.message
    assert error.location is not None
    config["num_experts_per_tok"] = 2
    sq = {"method": "smoothquant", "activations": "per_token"}
    error = _plan_refusal(tmp_path, config, quantize=sq)
    assert error.code == ExitCode.RECIPE and "experts.0.w1) has no norm" in error.message
    assert error.location is not None


def test_qwen3_moe_refusals_at_plan_time(tmp_path: Path) -> None:
    """Per-token SmoothQuant (exit 2 at quantize.activations) and dense-MLP layers (exit
    5, named)."""
    from tests.tinymodels import TINY_DEFAULTS
    from trtllm_forge.errors import ExitCode

    config = {**TINY_DEFAULTS, "architectures": ["Qwen3MoeForCausalLM"]}
    config |= {"model_type": "qwen3_moe", "num_experts": 4, "num_experts_per_tok": 2}
    config |= {"moe_intermediate_size": 32}
    sq = {"method": "smoothquant", "activations": "per_token"}
    error = _plan_refusal(tmp_path, config, quantize=sq)
    assert error.code == ExitCode.RECIPE and "experts.0.gate_proj" in error.message
    assert error.location is not None and error.location.line > 0
    error = _plan_refusal(tmp_path, {**config, "mlp_only_layers": [1]})
    assert error.code == ExitCode.SOURCE and "mlp_only_layers" in error.message


def test_phi3_quantized_hf_folder_is_refused_at_plan_time(tmp_path: Path) -> None:
    """A Hugging Face folder quantizes one linear per HF module; Phi-3's gate_up_proj
    is two forge linears (it used to fail as an internal error while writing)."""
    from tests.tinymodels import TINY_DEFAULTS
    from trtllm_forge.errors import ExitCode

    config = {**TINY_DEFAULTS, "architectures": ["Phi3ForCausalLM"], "model_type": "phi3"}
    error = _plan_refusal(
        tmp_path,
        config,
        quantize={"method": "fp8"},
        build={"backend": "hf", "format": "modelopt"},
    )
    assert error.code == ExitCode.RECIPE and "gate_up_proj" in error.message
    assert error.location is not None
