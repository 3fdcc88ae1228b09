"""Shared helpers for the engine tests: tiny HF model → checkpoint → shards → ORT engine.

Every step is the real component (make_tiny_hf, the convert helper's converter and
sharder, the onnxruntime backend), so an engine test exercises the whole build path.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tests.tinymodels import make_tiny_hf
from trtllm_forge.checkpoint.convert import convert_hf_checkpoint
from trtllm_forge.checkpoint.shard import shard_checkpoint
from trtllm_forge.engine.backends import BuildOptions, build_engine

OPTIONS = BuildOptions(max_batch_size=8, max_input_len=64, max_seq_len=128)


@dataclass(frozen=True)
class TinyBuild:
    hf: Path
    checkpoint: Path  # the per-rank checkpoint the engine was built from
    engine: Path


def tiny_checkpoint(
    root: Path,
    arch: str = "llama",
    *,
    dtype: str = "float32",
    tp: int = 1,
    pp: int = 1,
    seed: int = 0,
    **overrides: Any,
) -> tuple[Path, Path]:
    """(HF dir, per-rank checkpoint dir) for a tiny model."""
    hf = root / "hf"
    if not hf.exists():
        make_tiny_hf(arch, hf, seed=seed, **overrides)
    canonical = root / f"ckpt-{dtype}"
    if not canonical.exists():
        convert_hf_checkpoint(hf, canonical, dtype=dtype)
    if tp * pp == 1:
        return hf, canonical
    sharded = root / f"ckpt-{dtype}-tp{tp}-pp{pp}"
    if not sharded.exists():
        shard_checkpoint(canonical, sharded, tp=tp, pp=pp)
    return hf, sharded


def tiny_engine(
    root: Path,
    arch: str = "llama",
    *,
    dtype: str = "float32",
    tp: int = 1,
    pp: int = 1,
    options: BuildOptions = OPTIONS,
    **overrides: Any,
) -> TinyBuild:
    hf, checkpoint = tiny_checkpoint(root, arch, dtype=dtype, tp=tp, pp=pp, **overrides)
    engine = root / f"engine-{dtype}-tp{tp}-pp{pp}"
    build_engine("onnxruntime", checkpoint, engine, options)
    return TinyBuild(hf, checkpoint, engine)


def random_prompts(count: int = 8, *, vocab: int = 250, seed: int = 0) -> list[list[int]]:
    """Prompts of different lengths (3..17 tokens) so batching needs left padding."""
    rng = np.random.default_rng(seed)
    return [rng.integers(3, vocab, size=int(n)).tolist() for n in rng.integers(3, 18, size=count)]


def random_texts(
    count: int = 2, length: int = 96, *, vocab: int = 250, seed: int = 1
) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(3, vocab, size=length).tolist() for _ in range(count)]


def rel_diff(reference: np.ndarray, engine: np.ndarray) -> float:
    return float(np.abs(reference - engine).max() / np.abs(reference).max())


def quantized_logits_check(hf: Path, ckpt: Path, onnx_dir: Path, ids: Any) -> tuple[float, float]:
    """How far a quantized checkpoint's fake-quant logits are from the HF float model's,
    and how far the engine built from it is from that fake quant (relative norms)."""
    import torch

    from tests.test_quant_methods import _engine_logits
    from trtllm_forge.quant.fakequant import FakeQuantForward
    from trtllm_forge.quant.quantize import load_hf_model

    with torch.no_grad():
        float_logits = load_hf_model(hf)(input_ids=ids).logits
    fake = FakeQuantForward(ckpt)
    try:
        want = fake.logits(ids)
    finally:
        fake.close()
    vs_float = float((want - float_logits).norm() / float_logits.norm())
    got = _engine_logits(ckpt, onnx_dir, ids)
    vs_fake = float(np.linalg.norm(got - want.numpy()) / np.linalg.norm(want.numpy()))
    return vs_float, vs_fake
