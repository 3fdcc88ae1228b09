"""A forge engine runs in onnxruntime-genai as it is and generates what transformers does.

The real onnxruntime-genai CPU wheel loads the engine folder (genai_config.json +
tokenizer files written beside the rank graph) for both lowering profiles, and its
greedy tokens equal transformers' greedy tokens on the same tiny model.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.engine_support import OPTIONS, tiny_checkpoint
from trtllm_forge.engine.backends import build_engine
from trtllm_forge.engine.genai import GENAI_CONFIG, write_genai_folder

og = pytest.importorskip("onnxruntime_genai")
NEW_TOKENS = 16
PROMPTS = ([5, 17, 33, 99, 120, 7], [200, 3, 41])


def _transformers_tokens(hf: Path, prompt: list[int]) -> list[int]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32).eval()
    with torch.no_grad():
        out = model.generate(
            torch.tensor([prompt]),
            max_new_tokens=NEW_TOKENS,
            min_new_tokens=NEW_TOKENS,
            do_sample=False,
        )
    return out[0, len(prompt) :].tolist()


def _genai_tokens(folder: Path, prompt: list[int]) -> list[int]:
    model = og.Model(str(folder))
    params = og.GeneratorParams(model)
    total = len(prompt) + NEW_TOKENS
    params.set_search_options(max_length=total, min_length=total, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(np.asarray([prompt], np.int32))
    tokens = []
    while not generator.is_done():
        generator.generate_next_token()
        tokens.append(int(generator.get_next_tokens()[0]))
    return tokens


@pytest.mark.parametrize("profile", ["portable", "ort"])
def test_onnxruntime_genai_generates_transformers_tokens(tmp_path: Path, profile: str) -> None:
    hf, checkpoint = tiny_checkpoint(tmp_path, "qwen2", with_tokenizer=True, seed=3)
    engine = tmp_path / "engine"
    meta = build_engine("onnxruntime", checkpoint, engine, replace(OPTIONS, profile=profile))
    written = write_genai_folder(engine, meta, hf)
    assert {GENAI_CONFIG, "tokenizer.json"} <= set(written)
    config = json.loads((engine / GENAI_CONFIG).read_text())
    assert config["search"]["past_present_share_buffer"] is (profile == "ort")
    assert og.Tokenizer(og.Model(str(engine))).encode("Hello world").size > 0
    for prompt in PROMPTS:
        assert _genai_tokens(engine, prompt) == _transformers_tokens(hf, prompt)
