"""ORT engines against transformers, and parallel engines against tp=1 (real sessions, real models)."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from tests.engine_support import random_prompts, random_texts, rel_diff, tiny_engine
from trtllm_forge.engine.runtime import load_engine
from trtllm_forge.engine.verify import (
    load_reference,
    reference_greedy,
    reference_logits,
    verify_engine,
)

PROMPTS = random_prompts(8)
TEXTS = random_texts(2)
NEW_TOKENS = 32


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2"])
def test_float32_engine_matches_transformers(tmp_path: Path, arch: str) -> None:
    build = tiny_engine(tmp_path, arch)
    engine, reference = load_engine(build.engine), load_reference(build.hf)

    generated = engine.generate(PROMPTS, NEW_TOKENS)  # one left-padded batch
    expected = [reference_greedy(reference, prompt, NEW_TOKENS) for prompt in PROMPTS]
    assert generated == expected

    for text in TEXTS:
        assert rel_diff(reference_logits(reference, text, 128), engine.score(text)) < 1e-4


# (tp, pp, model overrides): tp > kv heads with an odd vocab, uneven PP split, tp=4 padding.
PARALLEL = [
    (2, 1, {}),
    (1, 2, {"num_hidden_layers": 3}),
    (2, 2, {"num_hidden_layers": 3, "num_key_value_heads": 1, "vocab_size": 251}),
    (4, 1, {"vocab_size": 250}),
]


@pytest.mark.parametrize(("tp", "pp", "overrides"), PARALLEL, ids=lambda v: str(v))
def test_parallel_engine_matches_tp1(
    tmp_path: Path, tp: int, pp: int, overrides: dict[str, int]
) -> None:
    single = load_engine(tiny_engine(tmp_path, "llama", **overrides).engine)
    parallel = load_engine(tiny_engine(tmp_path, "llama", tp=tp, pp=pp, **overrides).engine)
    assert (parallel.tp_size, parallel.pp_size) == (tp, pp)

    assert parallel.generate(PROMPTS, NEW_TOKENS) == single.generate(PROMPTS, NEW_TOKENS)
    logits = parallel.score(TEXTS[0])
    assert logits.shape == (len(TEXTS[0]), overrides.get("vocab_size", 256))
    assert rel_diff(single.score(TEXTS[0]), logits) < 1e-5


def test_tp_with_fewer_kv_heads_than_ranks_matches_transformers(tmp_path: Path) -> None:
    build = tiny_engine(tmp_path, "qwen2", tp=4, num_key_value_heads=1, vocab_size=251)
    engine, reference = load_engine(build.engine), load_reference(build.hf)
    assert engine.generate(PROMPTS[:3], 16) == [
        reference_greedy(reference, p, 16) for p in PROMPTS[:3]
    ]


# bfloat16 keeps 8 mantissa bits (float16: 11), so its top-1 bar is lower on random tiny models.
@pytest.mark.parametrize(("dtype", "min_top1"), [("float16", 0.99), ("bfloat16", 0.98)])
def test_half_precision_weights_pass_the_accuracy_gates(
    tmp_path: Path, dtype: str, min_top1: float
) -> None:
    build = tiny_engine(tmp_path, "llama", dtype=dtype, tp=2)
    result = verify_engine(
        build.engine,
        build.hf,
        prompts_token_ids=PROMPTS,
        texts_token_ids=random_texts(3, 128, seed=5),
        max_new_tokens=NEW_TOKENS,
        gates={"min_top1": min_top1, "max_ppl_ratio": 1.005},
    )
    assert result.passed, result.gates
    assert abs(result.metrics["ppl_ratio"] - 1.0) < 0.005
    # Weights stay in the stored dtype on disk; only compute is float32.
    model = onnx.load(build.engine / "rank0" / "model.onnx", load_external_data=False)
    stored = {
        t.data_type for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL
    }
    assert stored == {
        {"float16": onnx.TensorProto.FLOAT16, "bfloat16": onnx.TensorProto.BFLOAT16}[dtype]
    }


def test_rope_scaling_variants_match_transformers(tmp_path: Path) -> None:
    scalings = {
        "linear": {"rope_type": "linear", "factor": 2.0},
        "llama3": {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 16,
        },
    }
    text = random_texts(1, 120, seed=9)[0]
    for name, scaling in scalings.items():
        build = tiny_engine(tmp_path / name, "llama", rope_scaling=scaling)
        reference = load_reference(build.hf)
        assert (
            rel_diff(reference_logits(reference, text, 128), load_engine(build.engine).score(text))
            < 1e-4
        ), name


def test_mistral_sliding_window_matches_transformers(tmp_path: Path) -> None:
    build = tiny_engine(tmp_path, "mistral", sliding_window=8)
    engine, reference = load_engine(build.engine), load_reference(build.hf)
    text = TEXTS[0][:40]
    assert rel_diff(reference_logits(reference, text, 128), engine.score(text)) < 1e-4
    assert engine.generate(PROMPTS[:4], 20) == [
        reference_greedy(reference, p, 20) for p in PROMPTS[:4]
    ]
