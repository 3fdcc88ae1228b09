"""The bound session's greedy path: the argmax taken by a one-node ArgMax session beside the
engine's (on CUDA, so only token ids leave the device) equals the argmax of the logits the
host path returns. Here on ONNX Runtime's CPU provider, for both lowering profiles and the
float16 compute dtype; tests/test_gpu.py runs the CUDA path."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from tests.engine_support import OPTIONS, tiny_engine
from trtllm_forge.engine.runtime import OrtEngine


@pytest.mark.parametrize(
    "options",
    [
        replace(OPTIONS, profile="ort"),
        replace(OPTIONS, profile="ort", compute_dtype="float16"),
    ],
    ids=["ort-float32", "ort-float16"],
)
def test_device_argmax_equals_host_argmax(tmp_path: Path, options) -> None:  # type: ignore[no-untyped-def]
    built = tiny_engine(tmp_path, "llama", options=options)
    engine = OrtEngine.load(built.engine, threads=1)
    assert engine.bound is not None
    rng = np.random.default_rng(0)
    ids = rng.integers(3, 250, size=(3, 7))
    mask = np.ones_like(ids)
    positions = np.zeros_like(ids)
    host = engine.bound.forward(
        {"input_ids": ids, "attention_mask": mask, "position_ids": positions},
        engine.new_cache(3),  # type: ignore[arg-type]
    )
    tokens = engine.bound.tokens(
        {"input_ids": ids, "attention_mask": mask, "position_ids": positions},
        engine.new_cache(3),  # type: ignore[arg-type]
    )
    assert tokens.shape == (3, 7) and tokens.dtype == np.int64
    np.testing.assert_array_equal(tokens, host.argmax(axis=-1))


def test_chained_cache_steps_take_each_steps_logits(tmp_path: Path) -> None:
    """The portable graph's cache is chained (a new present every step, as on CUDA): each
    step's argmax must read that step's logits, never a binding kept from an earlier one."""
    from trtllm_forge.engine.metadata import read_metadata

    built = tiny_engine(tmp_path, "llama")
    meta = read_metadata(built.engine)
    root = built.engine / meta["onnx"].get("root", ".")
    engine = OrtEngine._load_bound(built.engine, meta, root, 1, "cpu")
    assert engine.bound is not None and not engine.bound.shared
    host_cache, token_cache = engine.new_cache(2), engine.new_cache(2)
    ids = np.asarray([[5, 17, 33], [99, 120, 7]])
    mask, positions = np.ones_like(ids), np.tile(np.arange(3), (2, 1))
    for step in range(4):
        feeds = {"input_ids": ids, "attention_mask": mask, "position_ids": positions}
        want = engine.bound.forward(feeds, host_cache).argmax(axis=-1)  # type: ignore[arg-type]
        got = engine.bound.tokens(feeds, token_cache)  # type: ignore[arg-type]
        np.testing.assert_array_equal(got, want, err_msg=f"step {step}")
        ids = got[:, -1:]
        mask = np.ones((2, mask.shape[1] + 1), np.int64)
        positions = positions[:, -1:] + 1
