"""The ort lowering profile (engine/onnx/ort): ONNX Runtime contrib ops, same gates.

Every family the profile lowers (Llama, Mistral with a window that bites, Qwen2 with its
qkv bias) is built through the real converter and backend and verified against the
transformers reference with the gates the portable profile meets; every weight-only
method runs as MatMulNBits and matches the portable engine (the exact fake-quant
oracle); the graph really uses the fused operators; the portable graph is untouched.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest

from tests.engine_support import OPTIONS, random_prompts, random_texts, tiny_checkpoint
from trtllm_forge.engine.backends import build_engine
from trtllm_forge.engine.runtime import OrtEngine
from trtllm_forge.engine.verify import verify_engine

ORT = replace(OPTIONS, profile="ort")
# The portable profile's tiny engines meet these (float32 compute on both sides).
GATES = {
    "min_token_agreement": 1.0,
    "min_top1": 1.0,
    "max_kl": 1e-6,
    "max_rel_logit_diff": 1e-4,
}
FAMILIES = {
    "llama": {},
    "mistral": {"sliding_window": 8},  # shorter than prompt + generation: the window bites
    "qwen2": {},
}
FUSED = {"GroupQueryAttention", "SkipSimplifiedLayerNormalization", "SimplifiedLayerNormalization"}


@pytest.mark.parametrize("arch", list(FAMILIES))
def test_family_passes_the_portable_gates(tmp_path: Path, arch: str) -> None:
    hf, checkpoint = tiny_checkpoint(tmp_path, arch, **FAMILIES[arch])
    engine = tmp_path / "engine"
    meta = build_engine("onnxruntime", checkpoint, engine, ORT)
    assert meta["onnx"]["profile"] == "ort"
    ops = {
        n.op_type
        for n in onnx.load(engine / "rank0" / "model.onnx", load_external_data=False).graph.node
    }
    assert FUSED <= ops and "Softmax" not in ops
    result = verify_engine(
        engine,
        hf,
        prompts_token_ids=random_prompts(8),  # mixed lengths: right padding in one batch
        texts_token_ids=random_texts(2, 96),  # 96 > max_input_len 64: chunked through the cache
        max_new_tokens=24,
        gates=GATES,
    )
    assert result.passed, [g for g in result.gates if not g.passed]


QUANT = {
    "int8_wo": {},
    "int4_wo": {"group_size": 64},
    "awq": {"group_size": 64},
    "gptq": {"group_size": 64, "act_order": True},
}


@pytest.fixture(scope="module")
def tiny_quant(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from tests.tinymodels import make_tiny_hf
    from trtllm_forge.checkpoint.convert import convert_hf_checkpoint

    root = tmp_path_factory.mktemp("ort-quant")
    hf = make_tiny_hf(
        "llama", root / "hf", hidden_size=128, intermediate_size=256, with_tokenizer=True
    )
    convert_hf_checkpoint(hf, root / "canonical", dtype="float16")
    return {"hf": hf, "canonical": root / "canonical", "root": root}


def _quantized(tiny_quant: dict[str, Path], method: str) -> Path:
    """The tiny model quantized with ``method`` (once per module)."""
    from trtllm_forge.quant.calibration import CalibrationSpec
    from trtllm_forge.quant.quantize import quantize_checkpoint

    checkpoint = tiny_quant["root"] / f"q-{method}"
    if not checkpoint.exists():
        quantize_checkpoint(
            hf_dir=tiny_quant["hf"],
            canonical_dir=tiny_quant["canonical"],
            out_dir=checkpoint,
            method=method,
            params=QUANT[method],
            calibration=CalibrationSpec(samples=4, seq_len=32, seed=0),
        )
    return checkpoint


@pytest.mark.parametrize("method", list(QUANT))
def test_weight_only_methods_run_as_matmul_nbits(tiny_quant: dict[str, Path], method: str) -> None:
    """MatMulNBits (accuracy_level 0) computes what the portable Q/DQ graph computes."""
    root = tiny_quant["root"]
    checkpoint = _quantized(tiny_quant, method)
    options = replace(OPTIONS, max_batch_size=2, max_input_len=32, max_seq_len=64)
    build_engine("onnxruntime", checkpoint, root / f"portable-{method}", options)
    build_engine("onnxruntime", checkpoint, root / f"ort-{method}", replace(options, profile="ort"))
    graph = onnx.load(root / f"ort-{method}" / "rank0" / "model.onnx", load_external_data=False)
    nbits = [n for n in graph.graph.node if n.op_type == "MatMulNBits"]
    assert len(nbits) == 2 * 5  # qkv, dense, fc, gate, proj per layer (lm_head stays float)
    bits = {a.i for n in nbits for a in n.attribute if a.name == "bits"}
    assert bits == {8 if method == "int8_wo" else 4}
    if method == "awq":  # q/k/v share one pre-quant scale: folded into the RMSNorm weight
        assert not any(
            n.name.startswith("transformer.layers.0.attention.qkv.prequant")
            for n in graph.graph.node
        )
    ids = random_texts(1, 40, seed=3)[0]
    want = OrtEngine.load(root / f"portable-{method}", threads=1).score(ids, chunk=16)
    got = OrtEngine.load(root / f"ort-{method}", threads=1).score(ids, chunk=16)
    assert np.abs(got - want).max() / np.abs(want).max() < 1e-4


def test_int8_activations_use_the_cpu_int8_kernel_close_to_float(
    tiny_quant: dict[str, Path],
) -> None:
    """build.int8_activations: accuracy_level 4 on every MatMulNBits; logits move a little."""
    root = tiny_quant["root"]
    checkpoint = _quantized(tiny_quant, "int4_wo")
    options = replace(OPTIONS, max_batch_size=2, max_input_len=32, max_seq_len=64, profile="ort")
    engine = root / "ort-int4-int8act"
    build_engine("onnxruntime", checkpoint, root / "ort-float-act", options)
    build_engine("onnxruntime", checkpoint, engine, replace(options, int8_activations=True))
    graph = onnx.load(engine / "rank0" / "model.onnx", load_external_data=False)
    levels = {
        a.i
        for n in graph.graph.node
        if n.op_type == "MatMulNBits"
        for a in n.attribute
        if a.name == "accuracy_level"
    }
    assert levels == {4}
    ids = random_texts(1, 40, seed=3)[0]
    want = OrtEngine.load(root / "ort-float-act", threads=1).score(ids)
    got = OrtEngine.load(engine, threads=1).score(ids)
    assert 0 < np.abs(got - want).max() / np.abs(want).max() < 0.1


def test_float16_compute_keeps_the_greedy_tokens(tmp_path: Path) -> None:
    """build.compute_dtype float16 (what CUDA's GroupQueryAttention needs) also runs on the
    CPU provider: float16 weights, activations and KV cache, logits within fp16 rounding."""
    _, checkpoint = tiny_checkpoint(tmp_path, "qwen2", dtype="float16")
    build_engine("onnxruntime", checkpoint, tmp_path / "portable", OPTIONS)
    half = replace(ORT, compute_dtype="float16")
    meta = build_engine("onnxruntime", checkpoint, tmp_path / "ort16", half)
    assert meta["onnx"]["compute_dtype"] == "float16"
    graph = onnx.load(tmp_path / "ort16" / "rank0" / "model.onnx", load_external_data=False)
    past = next(i for i in graph.graph.input if i.name.startswith("past_key_values"))
    assert past.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    portable = OrtEngine.load(tmp_path / "portable", threads=1)
    ort16 = OrtEngine.load(tmp_path / "ort16", threads=1)
    ids = random_texts(1, 40)[0]
    want, got = portable.score(ids), ort16.score(ids)
    assert np.abs(got - want).max() / np.abs(want).max() < 5e-3
    prompts = random_prompts(4)
    assert ort16.generate(prompts, 8) == portable.generate(prompts, 8)


@pytest.fixture(scope="module")
def tied_model(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny Llama whose lm_head is its embedding (as SmolLM2's), converted in float32."""
    from tests.tinymodels import make_tiny_hf
    from trtllm_forge.checkpoint.convert import convert_hf_checkpoint

    root = tmp_path_factory.mktemp("ort-head")
    hf = make_tiny_hf(
        "llama",
        root / "hf",
        hidden_size=128,
        intermediate_size=256,
        tie_word_embeddings=True,
        with_tokenizer=True,  # AWQ calibrates on text
    )
    convert_hf_checkpoint(hf, root / "canonical", dtype="float32")
    return {"hf": hf, "canonical": root / "canonical", "root": root}


@pytest.mark.parametrize(("method", "bits"), [("int4_wo", 4), ("awq", 4), ("int8_wo", 8)])
def test_a_quantized_lm_head_runs_as_matmul_nbits_and_passes_the_gates(
    tied_model: dict[str, Path], method: str, bits: int
) -> None:
    """quantize_lm_head: the head is a MatMulNBits record like the decoder linears (an
    eighth (int4) or a quarter (int8) of float32's bytes, plus scales); at int4 the tied
    embedding is that same table (GatherBlockQuantized, no float copy). The logits are the
    portable Q/DQ graph's with the embedding set to the dequantized head, and the engine
    meets quantized-engine gates against transformers."""
    root = tied_model["root"]
    checkpoint = _quantized_head(tied_model, method)
    engine = root / f"ort-{method}"
    options = replace(OPTIONS, max_batch_size=2, max_input_len=32, max_seq_len=64)
    build_engine("onnxruntime", checkpoint, engine, replace(options, profile="ort"))
    graph = onnx.load(engine / "rank0" / "model.onnx", load_external_data=False).graph
    head = next(n for n in graph.node if n.output[0].startswith("lm_head"))
    assert head.op_type == "MatMulNBits"
    assert {a.name: a.i for a in head.attribute}["bits"] == bits
    stored = {
        t.name: int(np.prod(t.dims)) * (1 if t.data_type == onnx.TensorProto.UINT8 else 4)
        for t in graph.initializer
    }
    assert sum(n for name, n in stored.items() if name.startswith("lm_head")) < 4 * 128 * 256 * (
        bits / 32 + 1 / 16
    )  # hidden × vocab float32 bytes, scaled to the packed values plus the scales
    gather = next(n for n in graph.node if n.output[0].startswith("embed.out"))
    assert gather.op_type == ("GatherBlockQuantized" if bits == 4 else "Gather")
    assert ("transformer.vocab_embedding.weight" in stored) == (bits == 8)
    oracle = _float_embedding_checkpoint(checkpoint, root / f"oracle-{method}")
    build_engine("onnxruntime", oracle, root / f"portable-{method}", options)
    ids = random_texts(1, 40, seed=3)[0]
    want = OrtEngine.load(root / f"portable-{method}", threads=1).score(ids, chunk=16)
    got = OrtEngine.load(engine, threads=1).score(ids, chunk=16)
    assert np.abs(got - want).max() / np.abs(want).max() < 1e-4
    result = verify_engine(
        engine,
        tied_model["hf"],
        prompts_token_ids=random_prompts(4),
        texts_token_ids=random_texts(2, 96),
        max_new_tokens=16,
        gates={"max_kl": 0.05, "max_ppl_ratio": 1.05, "min_top1": 0.5},
    )
    assert result.passed, [g for g in result.gates if not g.passed]


def _quantized_head(tied_model: dict[str, Path], method: str) -> Path:
    from trtllm_forge.quant.calibration import CalibrationSpec
    from trtllm_forge.quant.quantize import quantize_checkpoint

    checkpoint = tied_model["root"] / f"q-{method}"
    params = {} if method == "int8_wo" else {"group_size": 64}
    summary = quantize_checkpoint(
        hf_dir=tied_model["hf"],
        canonical_dir=tied_model["canonical"],
        out_dir=checkpoint,
        method=method,
        params={**params, "quantize_lm_head": True},
        calibration=CalibrationSpec(samples=4, seq_len=32, seed=0),
    )
    assert "lm_head" not in summary["quantization"]["exclude_modules"]
    return checkpoint


def _float_embedding_checkpoint(checkpoint: Path, out: Path) -> Path:
    """The checkpoint with its embedding written back as the dequantized int4 head (what a
    tied int4 engine looks up), for the portable graph to compute the same numbers."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    from trtllm_forge.quant import layout

    shutil.copytree(checkpoint, out)
    tensors = load_file(out / "rank0.safetensors")
    if "transformer.vocab_embedding.weight" not in tensors:
        values = layout.unpack_int4_rows(tensors["lm_head.weight"]).float()
        scales = tensors["lm_head.weights_scaling_factor"].float()
        table = values * scales.repeat_interleave(values.shape[1] // scales.shape[1], dim=1)
        tensors["transformer.vocab_embedding.weight"] = table.to(torch.float32).contiguous()
        save_file(tensors, out / "rank0.safetensors")
    return out
