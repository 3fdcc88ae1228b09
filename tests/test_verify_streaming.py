"""Streaming verify: block-by-block float32 metrics equal the whole-text float64 ones, and
the report says which tokens were scored (real tiny engine, real reference)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.engine_support import TinyBuild, random_prompts, random_texts, tiny_engine
from tests.tinymodels import make_tiny_hf
from trtllm_forge.engine import metrics, streaming
from trtllm_forge.engine.runtime import OrtEngine
from trtllm_forge.engine.verify import load_reference, reference_logits, verify_engine

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def fp16(tmp_path_factory: pytest.TempPathFactory) -> TinyBuild:
    return tiny_engine(tmp_path_factory.mktemp("streaming"), "llama", dtype="float16")


def test_blocks_cover_every_token_once_and_restart_at_each_window() -> None:
    spans = streaming.blocks(300, 128, 50)
    assert [b[1:] for b in spans][:4] == [(0, 50), (50, 100), (100, 128), (128, 178)]
    assert sum(stop - start for _, start, stop in spans) == 300
    assert {window for window, _, _ in spans} == {0, 128, 256}
    assert streaming.block_tokens(151_936, 2048) * 151_936 * 4 <= streaming.BLOCK_BYTES


def test_engine_blocks_are_long_enough_not_to_reread_the_weights_every_few_tokens() -> None:
    """Each engine block is one ONNX Runtime run over all its weights: at a 152k vocabulary
    a block must hold ~100 tokens (27 made the 0.5B bench's logits phase memory-bound)."""
    assert streaming.block_tokens(151_936, 2048) >= 100
    assert streaming.block_tokens(151_936, 64) == 64  # never past the engine's max_input_len


def test_importing_the_reference_code_imports_its_model_module(tmp_path: Path) -> None:
    """What verify imports on a thread while an engine runs: the reference's model module
    (in a fresh interpreter, where nothing imported it yet); a folder transformers cannot
    read raises nothing there (load_reference reports it in the main thread)."""
    hf = make_tiny_hf("qwen2", tmp_path / "hf")
    check = (
        "import sys\n"
        "from trtllm_forge.engine.compare import _import_reference_code\n"
        "module = 'transformers.models.qwen2.modeling_qwen2'\n"
        "before = module in sys.modules\n"
        f"_import_reference_code({str(tmp_path)!r})\n"
        f"_import_reference_code({str(hf)!r})\n"
        "print(before, module in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", check], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.split() == ["False", "True"]


def test_verify_and_the_engine_runtime_import_no_torch() -> None:
    """torch (~1.2 s to import) is the reference's: verify imports it on a thread while the
    engine runs, so importing verify and running an engine must not pull it in first."""
    script = "import sys, trtllm_forge.engine.verify; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_spill_each_writes_the_blocks_in_order_behind_the_caller(tmp_path: Path) -> None:
    """The engine's blocks come back to the caller unchanged while a worker writes them, and
    the file holds them in order; the unspill reads them back."""
    rng = np.random.default_rng(0)
    blocks = [rng.standard_normal((rows, 7), dtype=np.float32) for rows in (3, 1, 5)]
    with (tmp_path / "spill").open("w+b") as file:
        given = list(streaming.spill_each(iter(blocks), file))
        assert all(a is b for a, b in zip(given, blocks, strict=True))
        file.seek(0)
        unspill = streaming.Unspill(file, 7)
        for block in blocks:
            assert np.array_equal(unspill.read(len(block)), block)


def test_a_failed_spill_write_raises_in_the_caller(tmp_path: Path) -> None:
    (tmp_path / "spill").write_bytes(b"")
    blocks = [np.zeros((2, 3), np.float32)] * 3
    with (tmp_path / "spill").open("rb") as read_only, pytest.raises(OSError, match="write"):
        list(streaming.spill_each(iter(blocks), read_only))


def test_streamed_metrics_equal_whole_text_metrics(fp16: TinyBuild) -> None:
    """A 300-token text over 128-token windows, in 40-token engine blocks and 50-token
    reference blocks: the accumulated float32 figures match float64 over whole arrays."""
    (text,) = random_texts(1, 300)
    engine = OrtEngine.load(fp16.engine)
    reference = load_reference(fp16.hf)
    ref_blocks = list(streaming.reference_blocks(reference, text, 128, 50))
    eng_blocks = list(streaming.engine_blocks(engine, text, 128, 40))
    assert [len(b) for b in ref_blocks][:3] == [50, 50, 28]
    ref, eng = np.concatenate(ref_blocks), np.concatenate(eng_blocks)
    whole_ref = reference_logits(reference, text, 128)
    assert np.abs(ref - whole_ref).max() <= 1e-4 * np.abs(whole_ref).max()  # KV-cache chunks
    assert np.abs(eng - engine.score(text)).max() == 0.0

    score = streaming.SequenceScore(text)
    row = 0
    for block in eng_blocks:
        score.add(row, ref[row : row + len(block)], block)
        row += len(block)
    kl = metrics.kl_per_token(ref, eng)
    assert score.rows == 300 and score.targets == 299
    # A KL of ~4e-8 (float16 weights) sits at float32's resolution of the logits: a few %.
    assert score.kl_sum / score.rows == pytest.approx(kl.mean(), rel=5e-2)
    assert score.kl_max == pytest.approx(kl.max(), rel=5e-2)
    assert score.top1_same == int(metrics.top1_matches(ref, eng).sum())
    nll = metrics.next_token_nll(eng, text)
    assert score.nll_engine == pytest.approx(nll.sum(), rel=1e-5)
    assert score.max_relative_logit_diff == pytest.approx(
        metrics.max_relative_logit_diff(ref, eng), rel=1e-6
    )


def test_prompts_in_several_padded_forwards_give_the_same_metrics(
    fp16: TinyBuild, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reference scores the prompts left-padded together, as many per forward as its
    block holds: with 24-row blocks the 8 prompts (3-17 tokens) take several forwards, some
    a prompt alone; tokens and metrics are those of one forward for all (float32 order)."""
    kwargs: dict[str, Any] = {
        "prompts_token_ids": random_prompts(8),
        "texts_token_ids": random_texts(1, 20),  # one block either way
        "max_new_tokens": 4,
        "gates": {},
    }
    together = verify_engine(fp16.engine, fp16.hf, out_dir=tmp_path / "one", **kwargs)
    vocab = int(json.loads((fp16.hf / "config.json").read_text())["vocab_size"])
    assert streaming.batches([len(p) for p in kwargs["prompts_token_ids"]], 24) != [range(8)]
    monkeypatch.setattr(streaming, "REFERENCE_BLOCK_BYTES", 24 * 4 * vocab)
    apart = verify_engine(fp16.engine, fp16.hf, out_dir=tmp_path / "several", **kwargs)
    assert apart.prompts == together.prompts
    for name, value in together.metrics.items():
        assert apart.metrics[name] == pytest.approx(value, rel=1e-3, abs=1e-9), name


def test_metrics_split_among_threads_equal_one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows split among threads give the same counts and maxima, and the same sums up to
    float64 summation order (slices of 2 rows, so 30 rows go to 3 threads)."""
    monkeypatch.setattr(streaming, "SLICE_BYTES", 2 * 4 * 3000)
    rng = np.random.default_rng(2)
    tokens = rng.integers(0, 3000, size=40).tolist()
    reference = rng.standard_normal((37, 3000), dtype=np.float32) * 4
    engine = reference + rng.standard_normal((37, 3000), dtype=np.float32) * 0.05
    one, three = streaming.SequenceScore(tokens), streaming.SequenceScore(tokens, threads=3)
    for score in (one, three):
        score.add(0, reference[:30], engine[:30])
        score.add(30, reference[30:], engine[30:])
    assert (three.rows, three.targets, three.top1_same) == (one.rows, one.targets, one.top1_same)
    assert (three.kl_max, three.max_abs_diff) == (one.kl_max, one.max_abs_diff)
    assert three.max_abs_reference == one.max_abs_reference
    for name in ("kl_sum", "nll_reference", "nll_engine"):
        assert getattr(three, name) == pytest.approx(getattr(one, name), rel=1e-12), name


def test_engine_prompts_scored_together_equal_each_scored_alone(fp16: TinyBuild) -> None:
    """The engine's prompts, left-padded several per run (at most max_batch_size, within the
    block's rows): each prompt's rows are its logits scored alone, up to rounding."""
    engine = OrtEngine.load(fp16.engine)
    assert engine.profile == "portable" and engine.bound is None  # it takes left padding
    prompts = random_prompts(8)
    block = 3 * max(len(p) for p in prompts)
    groups = streaming.batches([len(p) for p in prompts], block, engine.max_batch_size)
    assert max(len(g) for g in groups) > 1 and len(groups) > 1
    together = [list(b) for b in streaming.engine_prompts(engine, prompts, 128, block)]
    for prompt, blocks in zip(prompts, together, strict=True):
        (alone,) = streaming.engine_blocks(engine, prompt, 128, block)
        (rows,) = blocks
        assert rows.shape == alone.shape
        assert np.abs(rows - alone).max() <= 1e-2 * np.abs(alone).max()  # float16 engine
    assert streaming.batches([4] * 5, 100, most=2) == [range(0, 2), range(2, 4), range(4, 5)]


def test_report_says_which_tokens_were_scored(fp16: TinyBuild, tmp_path: Path) -> None:
    texts = random_texts(2, 200)
    result = verify_engine(
        fp16.engine, fp16.hf, prompts_token_ids=random_prompts(2), texts_token_ids=texts,
        max_new_tokens=4, gates={"min_top1": 0.9}, out_dir=tmp_path, text_lengths=[500, 200],
    )  # fmt: skip
    assert result.passed and result.metrics["text_tokens"] == 400
    assert result.texts[0] == {"text": 0, "tokens": 500, "scored_tokens": 200,
                               "scored_from": 0, "scored_to": 200, "windows": 2}  # fmt: skip
    assert json.loads((tmp_path / "report.json").read_text())["texts"] == result.texts
    assert "| 0 | 500 | 200 | [0, 200) | 2 |" in (tmp_path / "report.md").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junit.xml", "report.json", "report.md"]


@pytest.mark.parametrize("arch", ["llama", "bloom", "gpt2"])
def test_batched_reference_greedy_equals_one_prompt_at_a_time(arch: str, tmp_path: Path) -> None:
    """Left-padded batches (verify's reference, the transformers bench runner) decode what
    single unpadded prompts do; BLOOM (ALiBi) and GPT-2 take their positions from the mask."""
    from tests.tinymodels import make_tiny_hf
    from trtllm_forge.engine.hf_greedy import greedy_batched
    from trtllm_forge.engine.verify import reference_greedy

    model = load_reference(make_tiny_hf(arch, tmp_path / arch))
    prompts = random_prompts(5)
    expected = [reference_greedy(model, prompt, 6) for prompt in prompts]
    assert greedy_batched(model, prompts, 6, batch_size=3) == expected
