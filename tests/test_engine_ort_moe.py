"""Mixture of experts, Qwen3's q/k norms and Phi-3 in the ort lowering profile on CPU.

Mixtral (top-2 of 4, weights renormalized), Qwen2-MoE (top-2 of 4 renormalized, plus the
sigmoid-gated shared expert), Qwen3-MoE (top-2 of 4, softmax weights kept, q/k norms),
the dense Qwen3 and Phi-3 (partial rotary, a window on every layer) are built through the real converter and backend with
``build.profile: ort`` and verified against transformers with the gates the portable
profile meets (tests/test_engine_ort_profile.py): either routing, the shared expert or
the q/k norms or partial rotary lowered wrong fails them. Qwen3-MoE's second layer is the case where
onnxruntime 1.31.1's ``normalize_routing_weights=0`` path returns wrong values (its
output buffer was used before); the lowering never takes that path. Quantized experts
(int8_wo, int4_wo, gptq) run as QMoE and equal the portable engine of the same
checkpoint. What the profile still refuses is refused at plan time with its reason.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from tests.engine_support import OPTIONS, random_prompts, random_texts, tiny_checkpoint
from trtllm_forge.engine.backends import build_engine
from trtllm_forge.engine.verify import verify_engine

ORT = replace(OPTIONS, profile="ort")
GATES = {
    "min_token_agreement": 1.0,
    "min_top1": 1.0,
    "max_kl": 1e-6,
    "max_rel_logit_diff": 1e-4,
}


# Phi-3 at hidden 128 (head 32, rope on 16 channels): GroupQueryAttention's CPU kernel
# takes a rotary width that is a multiple of 16, and the conformance model rotates 8.
SIZES: dict[str, dict[str, Any]] = {"phi3": {"hidden_size": 128}}


@pytest.mark.parametrize("arch", ["mixtral", "qwen2_moe", "qwen3_moe", "qwen3", "phi3"])
def test_family_passes_the_portable_gates(tmp_path: Path, arch: str) -> None:
    hf, checkpoint = tiny_checkpoint(tmp_path, arch, **SIZES.get(arch, {}))
    engine = tmp_path / "engine"
    meta = build_engine("onnxruntime", checkpoint, engine, ORT)
    assert meta["onnx"]["profile"] == "ort"
    graph = onnx.load(engine / "rank0" / "model.onnx", load_external_data=False).graph
    ops = [node.op_type for node in graph.node]
    # One MoE node per layer, no portable routing (ScatterElements, every expert's MLP).
    dense = arch in ("qwen3", "phi3")
    assert ops.count("MoE") == (0 if dense else 2) and "ScatterElements" not in ops
    if not dense:  # (a dense MLP's SiLU is a Sigmoid too)
        assert ("Sigmoid" in ops) is (arch == "qwen2_moe")  # the shared expert's gate
    # Qwen3-MoE keeps the softmax weights: their top-k total multiplies the node's output.
    assert ("TopK" in ops) is (arch == "qwen3_moe")
    if arch.startswith("qwen3"):  # q and k normalized per head, before GQA's rope
        assert ops.count("SimplifiedLayerNormalization") == 1 + 2 * 2
    result = verify_engine(
        engine,
        hf,
        prompts_token_ids=random_prompts(8),  # mixed lengths: right padding in one batch
        texts_token_ids=random_texts(2, 96),  # 96 > max_input_len 64: chunked through the cache
        max_new_tokens=24,
        gates=GATES,
    )
    assert result.passed, [g for g in result.gates if not g.passed]


@pytest.fixture(scope="module")
def float16_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The tiny MoE models converted in float16 (the quantizer's input), once."""
    from tests.tinymodels import make_tiny_hf
    from trtllm_forge.checkpoint.convert import convert_hf_checkpoint

    root = tmp_path_factory.mktemp("ort-moe-quant")
    out: dict[str, Any] = {"root": root}
    # Qwen2-MoE's shared expert of 64 (the conformance model's 48): int4 groups of 32.
    sizes = {"qwen2_moe": {"shared_expert_intermediate_size": 64}}
    for arch in ("mixtral", "qwen2_moe", "qwen3_moe"):
        hf = make_tiny_hf(arch, root / arch / "hf", **sizes.get(arch, {}))
        convert_hf_checkpoint(hf, root / arch / "canonical", dtype="float16")
        out[arch] = (hf, root / arch / "canonical")
    return out


@pytest.mark.parametrize(
    ("arch", "method", "group"),
    [
        ("mixtral", "int8_wo", None),
        ("mixtral", "int4_wo", 32),
        ("mixtral", "gptq", 32),
        ("qwen2_moe", "int4_wo", 32),
        ("qwen3_moe", "int4_wo", 32),
    ],
)
def test_quantized_experts_run_as_qmoe(
    float16_checkpoints: dict[str, Any], arch: str, method: str, group: int | None
) -> None:
    """QMoE (accuracy_level 0) computes what the portable Q/DQ graph computes from the same
    checkpoint (the exact fake-quant oracle), every expert of every layer in one node."""
    import torch

    from trtllm_forge.engine.runtime import OrtEngine
    from trtllm_forge.quant.quantize import quantize_checkpoint

    hf, canonical = float16_checkpoints[arch]
    root = float16_checkpoints["root"] / arch
    checkpoint = root / f"q-{method}"
    quantize_checkpoint(
        hf_dir=hf,
        canonical_dir=canonical,
        out_dir=checkpoint,
        method=method,
        params={} if group is None else {"group_size": group},
        calibration=torch.randint(3, 250, (8, 32), generator=torch.Generator().manual_seed(0)),
    )
    options = replace(OPTIONS, max_batch_size=2, max_input_len=32, max_seq_len=64)
    build_engine("onnxruntime", checkpoint, root / f"portable-{method}", options)
    build_engine("onnxruntime", checkpoint, root / f"ort-{method}", replace(options, profile="ort"))
    graph = onnx.load(root / f"ort-{method}" / "rank0" / "model.onnx", load_external_data=False)
    qmoe = [n for n in graph.graph.node if n.op_type == "QMoE"]
    assert len(qmoe) == 2 and not any(n.op_type == "MoE" for n in graph.graph.node)
    bits = {a.i for n in qmoe for a in n.attribute if a.name == "expert_weight_bits"}
    blocks = {a.i for n in qmoe for a in n.attribute if a.name == "block_size"}
    assert (bits, blocks) == (({8}, set()) if group is None else ({4}, {group}))
    ids = random_texts(1, 40, seed=3)[0]
    want = OrtEngine.load(root / f"portable-{method}", threads=1).score(ids, chunk=16)
    got = OrtEngine.load(root / f"ort-{method}", threads=1).score(ids, chunk=16)
    assert np.abs(got - want).max() / np.abs(want).max() < 1e-4


def test_quantized_phi3_runs_as_matmul_nbits(tmp_path: Path) -> None:
    """Phi-3's split gate_up_proj (mlp.fc / mlp.gate) quantized with int4_wo: the ort
    engine (MatMulNBits) equals the portable one of the same checkpoint."""
    import torch

    from tests.tinymodels import make_tiny_hf
    from trtllm_forge.checkpoint.convert import convert_hf_checkpoint
    from trtllm_forge.engine.runtime import OrtEngine
    from trtllm_forge.quant.quantize import quantize_checkpoint

    hf = make_tiny_hf("phi3", tmp_path / "hf", **SIZES["phi3"])
    convert_hf_checkpoint(hf, tmp_path / "canonical", dtype="float16")
    quantize_checkpoint(
        hf_dir=hf,
        canonical_dir=tmp_path / "canonical",
        out_dir=tmp_path / "q",
        method="int4_wo",
        params={"group_size": 32},
        calibration=torch.randint(3, 250, (8, 32), generator=torch.Generator().manual_seed(0)),
    )
    options = replace(OPTIONS, max_batch_size=2, max_input_len=32, max_seq_len=64)
    build_engine("onnxruntime", tmp_path / "q", tmp_path / "portable", options)
    build_engine("onnxruntime", tmp_path / "q", tmp_path / "ort", replace(options, profile="ort"))
    graph = onnx.load(tmp_path / "ort" / "rank0" / "model.onnx", load_external_data=False)
    assert sum(n.op_type == "MatMulNBits" for n in graph.graph.node) == 2 * 5
    ids = random_texts(1, 40, seed=3)[0]
    want = OrtEngine.load(tmp_path / "portable", threads=1).score(ids, chunk=16)
    got = OrtEngine.load(tmp_path / "ort", threads=1).score(ids, chunk=16)
    assert np.abs(got - want).max() / np.abs(want).max() < 1e-4


def test_float16_compute_keeps_the_greedy_tokens(float16_checkpoints: dict[str, Any]) -> None:
    """build.compute_dtype float16 (what CUDA needs): the MoE node runs in float16 and
    the tiny Mixtral's greedy tokens stay those of the float32 ort engine."""
    from trtllm_forge.engine.runtime import OrtEngine

    _, canonical = float16_checkpoints["mixtral"]
    root = float16_checkpoints["root"] / "mixtral"
    options = replace(OPTIONS, profile="ort")
    build_engine("onnxruntime", canonical, root / "ort-f32", options)
    build_engine(
        "onnxruntime", canonical, root / "ort-f16", replace(options, compute_dtype="float16")
    )
    prompts = random_prompts(8)
    want = OrtEngine.load(root / "ort-f32", threads=1).generate(prompts, 16)
    assert OrtEngine.load(root / "ort-f16", threads=1).generate(prompts, 16) == want


def _plan_error(tmp_path: Path, config: dict[str, Any], **sections: Any) -> Any:
    from tests.helpers import write_recipe
    from trtllm_forge.errors import ForgeError
    from trtllm_forge.pipeline.preflight import check_model
    from trtllm_forge.recipe.load import load_recipe

    recipe = write_recipe(tmp_path / "recipe.yaml", source={"path": "m"}, **sections)
    with pytest.raises(ForgeError) as info:
        check_model(load_recipe(recipe), config)
    return info.value


def _moe_config(arch: str, model_type: str, **fields: Any) -> dict[str, Any]:
    from tests.tinymodels import TINY_DEFAULTS

    config = {**TINY_DEFAULTS, "architectures": [arch], "model_type": model_type}
    return {**config, "num_experts_per_tok": 2, **fields}


def test_what_the_profile_refuses_at_plan_time(tmp_path: Path) -> None:
    """AWQ experts (exit 2 at build.profile: per-expert pre-quant scales) and a rotary
    width GroupQueryAttention's CPU kernel does not take; Mixtral unquantized and int4_wo,
    and Qwen3-MoE, plan."""
    from tests.helpers import write_recipe
    from tests.tinymodels import TINY_DEFAULTS
    from trtllm_forge.errors import ExitCode
    from trtllm_forge.pipeline.preflight import check_model
    from trtllm_forge.recipe.load import load_recipe

    ort = {"profile": "ort"}
    mixtral = _moe_config("MixtralForCausalLM", "mixtral", num_local_experts=4)
    awq = {"method": "awq", "group_size": 32}
    error = _plan_error(tmp_path, mixtral, build=ort, quantize=awq)
    assert error.code == ExitCode.RECIPE and "pre-quant scale" in error.message
    assert error.location is not None and error.location.line > 0
    phi3 = {**TINY_DEFAULTS, "architectures": ["Phi3ForCausalLM"], "model_type": "phi3"}
    phi3["partial_rotary_factor"] = 0.5
    error = _plan_error(tmp_path, phi3, build=ort)  # head 16: rope on 8 channels
    assert error.code == ExitCode.RECIPE and "multiple of 16" in error.message
    qwen3_moe = _moe_config(
        "Qwen3MoeForCausalLM", "qwen3_moe", num_experts=4, moe_intermediate_size=32
    )
    for config, quantize in (
        (mixtral, {"method": "none"}),
        (mixtral, {"method": "int4_wo", "group_size": 32}),
        (qwen3_moe, {"method": "gptq", "group_size": 32}),
    ):
        recipe = write_recipe(
            tmp_path / "ok.yaml", source={"path": "m"}, build=ort, quantize=quantize
        )
        check_model(load_recipe(recipe), config)
