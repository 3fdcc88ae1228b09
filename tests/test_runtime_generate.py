"""The ORT runtime: batching, caching, chunked scoring, limits (real sessions)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.engine_support import random_prompts, random_texts, rel_diff, tiny_engine
from trtllm_forge.engine.backends import BuildOptions
from trtllm_forge.engine.runtime import OrtEngine, load_engine, score_windows
from trtllm_forge.errors import ExitCode, ForgeError


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> OrtEngine:
    options = BuildOptions(max_batch_size=3, max_input_len=24, max_seq_len=48)
    return load_engine(
        tiny_engine(tmp_path_factory.mktemp("rt"), "llama", tp=2, options=options).engine
    )


def test_a_left_padded_batch_equals_one_prompt_at_a_time(engine: OrtEngine) -> None:
    prompts = random_prompts(5)  # 5 > max_batch_size 3: also split into two batches
    batched = engine.generate(prompts, 12)
    assert batched == [engine.generate([p], 12)[0] for p in prompts]
    assert all(len(tokens) == 12 for tokens in batched)


def test_generation_stops_after_eos(engine: OrtEngine) -> None:
    prompt = random_prompts(1)[0]
    full = engine.generate([prompt], 10)[0]
    eos = full[4]
    cut = engine.generate([prompt], 10, eos_token_id=eos)[0]
    assert cut == full[: full.index(eos) + 1]


def test_kv_cache_steps_equal_one_full_pass(engine: OrtEngine) -> None:
    text = random_texts(1, 20)[0]
    full = engine.score(text, chunk=24)
    stepped = engine.score(text, chunk=3)  # 7 forward passes through the cache
    assert rel_diff(full, stepped) < 1e-5


def test_score_restarts_the_context_every_max_seq_len_tokens(engine: OrtEngine) -> None:
    text = random_texts(1, 100)[0]
    logits = engine.score(text)
    assert logits.shape == (100, 256)
    assert score_windows(100, 48) == [(0, 48), (48, 96), (96, 100)]
    # The second window is scored as if it were a text of its own.
    assert rel_diff(engine.score(text[48:96]), logits[48:96]) < 1e-6
    assert rel_diff(engine.score(text[:48]), logits[:48]) < 1e-6


def test_requests_beyond_the_engine_limits_are_refused(engine: OrtEngine) -> None:
    with pytest.raises(ForgeError, match="max_input_len 24") as err:
        engine.generate([list(range(3, 30))], 4)
    assert err.value.code == ExitCode.RECIPE
    with pytest.raises(ForgeError, match="max_seq_len 48"):
        engine.generate([list(range(3, 20))], 40)
    with pytest.raises(ForgeError, match="empty prompt"):
        engine.generate([[5, 6], []], 4)


def test_threads_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from trtllm_forge.engine.runtime import ort_threads

    monkeypatch.setenv("FORGE_ORT_THREADS", "3")
    assert ort_threads() == 3
    monkeypatch.delenv("FORGE_ORT_THREADS")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert ort_threads() == 1


def test_loading_a_directory_without_engine_metadata_is_a_source_error(tmp_path: Path) -> None:
    with pytest.raises(ForgeError, match="engine.json is missing") as err:
        load_engine(tmp_path)
    assert err.value.code == ExitCode.SOURCE
