"""The reference's greedy tokens checked against a draft (verify's candidate tokens) equal
the step-by-step decode's, on real tiny transformers models: a matching draft, drafts that
diverge anywhere, a differently-rounded ("quantized") model's, short drafts, near-ties;
prompts of different lengths, so batches are left-padded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.engine_support import TinyBuild, random_prompts, tiny_engine
from trtllm_forge.engine import hf_greedy, streaming
from trtllm_forge.engine.verify import load_reference, verify_engine

NEW = 10


@pytest.fixture(scope="module", params=["llama", "bloom", "gpt2"])
def model(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    from tests.tinymodels import make_tiny_hf

    arch = request.param
    return load_reference(make_tiny_hf(arch, tmp_path_factory.mktemp(arch) / arch))


def _decodes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the step-by-step decodes of a whole group (the near-tie fallback)."""
    calls: list[int] = []
    original = hf_greedy.greedy_steps

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(hf_greedy, "greedy_steps", counted)
    return calls


def test_a_matching_draft_is_one_forward(model: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    prompts = random_prompts(7)
    expected = hf_greedy.greedy_batched(model, prompts, NEW, 3)
    steps = []
    original = hf_greedy.step_logits
    monkeypatch.setattr(
        hf_greedy, "step_logits", lambda *a, **k: steps.append(1) or original(*a, **k)
    )
    decodes = _decodes(monkeypatch)
    assert hf_greedy.greedy_checked(model, prompts, expected, NEW, 3) == expected
    assert steps == [] and decodes == []


def test_diverging_drafts_give_the_step_decodes_tokens(
    model: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One wrong token at step 0, 1, mid, last; a draft cut short; an empty draft; a
    draft that is all wrong — each row decoded on from where it diverges."""
    prompts = random_prompts(8, seed=3)
    expected = hf_greedy.greedy_batched(model, prompts, NEW, 4)
    vocab = int(model.config.vocab_size)
    drafts = [list(tokens) for tokens in expected]
    for row, at in enumerate([0, 1, NEW // 2, NEW - 1]):
        drafts[row][at] = (drafts[row][at] + 1) % vocab
    drafts[4] = drafts[4][:3]
    drafts[5] = []
    drafts[6] = [(t + 7) % vocab for t in drafts[6]]
    decodes = _decodes(monkeypatch)
    assert hf_greedy.greedy_checked(model, prompts, drafts, NEW, 4) == expected
    assert decodes == []  # no near-tie on these models: the checked path decided every token


def test_a_perturbed_models_draft(tmp_path: Path) -> None:
    """The draft of the same model with every weight off by ~1 % (a quantized engine's
    kind of error: agrees for a while, diverges at different steps per prompt; the tiny
    Llama is the one of the three that diverges at 1 %)."""
    import copy

    import torch

    from tests.tinymodels import make_tiny_hf
    from trtllm_forge.engine.metrics import first_divergence

    model = load_reference(make_tiny_hf("llama", tmp_path / "llama"))
    noisy = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in noisy.parameters():
            parameter.mul_(1 + 0.01 * torch.randn(parameter.shape, generator=generator))
    prompts = random_prompts(8, seed=5)
    expected = hf_greedy.greedy_batched(model, prompts, 16, 8)
    drafts = hf_greedy.greedy_batched(noisy, prompts, 16, 8)
    divergences = {first_divergence(a, b) for a, b in zip(expected, drafts, strict=True)}
    assert len(divergences - {None, 0}) >= 3  # diverging mid-way, at different steps
    assert hf_greedy.greedy_checked(model, prompts, drafts, 16, 8) == expected


def test_a_near_tie_decodes_the_group_step_by_step(
    model: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a margin no gap meets, every group falls back to greedy_steps: the very
    computation greedy_batched does, so the tokens are its own."""
    prompts = random_prompts(5, seed=7)
    expected = hf_greedy.greedy_batched(model, prompts, NEW, 3)
    decodes = _decodes(monkeypatch)
    assert hf_greedy.greedy_checked(model, prompts, expected, NEW, 3, margin=10.0) == expected
    assert len(decodes) == 2
    assert hf_greedy.greedy_checked(model, [], [], NEW, 3) == []
    assert hf_greedy.greedy_checked(model, prompts, expected, 0, 3) == [[]] * 5


def test_teacher_forced_logits_differ_from_the_steps_far_below_the_margin(model: Any) -> None:
    """What MARGIN rests on: one forward over prompt + tokens and the KV-cache steps give
    logits that differ by float32 summation order only."""
    import torch

    prompts = random_prompts(6, seed=11)
    steps = list(hf_greedy.step_logits(model, prompts, NEW))
    tokens = torch.stack([token for token, _ in steps], 1)
    stepped = torch.stack([logits for _, logits in steps], 1).float()
    forced = hf_greedy._teacher_forced(model, prompts, tokens[:, :-1].tolist(), NEW, "cpu")
    scale = stepped.abs().amax(dim=-1)
    assert float(((forced - stepped).abs().amax(dim=-1) / scale).max()) < hf_greedy.MARGIN / 4


def test_prompts_scored_together_equal_each_scored_alone(model: Any) -> None:
    """verify scores the reference's prompts left-padded in one forward: each prompt's rows
    are its logits scored alone (unpadded, through reference_blocks) up to float32
    summation order — Llama, BLOOM (ALiBi) and GPT-2 (absolute positions from the mask)."""
    prompts = random_prompts(6, seed=5)
    together = hf_greedy.forced_rows(model, prompts, device="cpu")
    for prompt, rows in zip(prompts, together, strict=True):
        (alone,) = streaming.reference_blocks(model, prompt, 1 << 20, 1 << 20)
        assert rows.shape == alone.shape
        scale = float(np.abs(alone).max())
        assert float((rows.numpy() - alone).__abs__().max()) <= 1e-5 * scale


def test_batches_keep_each_padded_forward_within_the_rows() -> None:
    assert streaming.batches([16] * 8, 441) == [range(0, 8)]
    assert streaming.batches([16] * 8, 64) == [range(0, 4), range(4, 8)]
    # padded to the longest: 3 x 20 > 50; a sequence longer than the rows goes alone
    assert streaming.batches([5, 20, 10, 60, 3], 50) == [
        range(0, 2),
        range(2, 3),
        range(3, 4),
        range(4, 5),
    ]
    assert streaming.batches([], 50) == []


def test_cut_splits_blocks_at_both_models_block_ends_into_views() -> None:
    rows = np.arange(23, dtype=np.float32)[:, None]
    blocks = [rows[:10], rows[10:12], rows[12:23]]
    pieces = list(streaming.cut(iter(blocks), [4, 4, 4, 4, 7]))
    # candidate ends 4, 8, 12, 16, 23; reference ends 10, 12, 23
    assert [len(p) for p in pieces] == [4, 4, 2, 2, 4, 7]
    assert np.array_equal(np.concatenate(pieces), rows)
    assert all(np.shares_memory(piece, rows) for piece in pieces)
    with pytest.raises(RuntimeError, match="more reference rows"):
        list(streaming.cut(iter(blocks), [4, 4]))
    with pytest.raises(RuntimeError, match="fewer reference rows"):
        list(streaming.cut(iter(blocks), [20, 4]))


@pytest.fixture(scope="module")
def fp32(tmp_path_factory: pytest.TempPathFactory) -> TinyBuild:
    return tiny_engine(tmp_path_factory.mktemp("checked"), "llama")


def test_verify_reports_the_step_decodes_reference_tokens(fp32: TinyBuild, tmp_path: Path) -> None:
    """Through verify_engine (the engine runs first now): the reference tokens in the
    report are greedy_batched's, in the engine's batches."""
    prompts = random_prompts(5, seed=2)
    result = verify_engine(
        fp32.engine, fp32.hf, prompts_token_ids=prompts, texts_token_ids=[list(range(3, 90))],
        max_new_tokens=NEW, gates={"min_token_agreement": 1.0}, out_dir=tmp_path,
    )  # fmt: skip
    reference = load_reference(fp32.hf)
    batch = 8  # the tiny engine's max_batch_size or more: one group
    expected = hf_greedy.greedy_batched(reference, prompts, NEW, batch)
    assert [row["reference"] for row in result.prompts] == expected
    assert result.passed and result.metrics["top1_agreement"] == 1.0


def test_length_dependent_rope_is_decoded_step_by_step(tmp_path: Path) -> None:
    """LongRoPE switches factor sets by the forward's longest position: a teacher-forced
    forward over prompt + draft crossing the switch rotates the prompt with the long set,
    the step decode with the short one. The check must not stand in for decoding there:
    even a draft equal to the teacher-forced argmax gives the step decode's tokens."""
    from tests.test_family_phi3 import LONGROPE
    from tests.tinymodels import make_tiny_hf

    phi3 = load_reference(make_tiny_hf("phi3", tmp_path / "phi3", **LONGROPE))
    assert not hf_greedy.checkable(phi3)
    prompts, new = [[5, 17, 33, 2, 9, 41, 7, 8, 11, 12, 13, 14, 15, 16]], 24  # crosses 20
    want = hf_greedy.greedy_batched(phi3, prompts, new, 8)
    forced = hf_greedy._teacher_forced(phi3, prompts, [want[0][:-1]], new, "cpu")
    draft = forced.argmax(dim=-1).tolist()  # what checking alone would accept
    assert hf_greedy.greedy_checked(phi3, prompts, draft, new, 8) == want


def test_plain_rope_models_are_checkable(model: Any) -> None:
    assert hf_greedy.checkable(model)
