"""The two passes of verify, in bounded memory: the candidate, then the reference.

The candidate (an ONNX Runtime engine, or a Hugging Face folder through its format's
loader) runs first: its greedy tokens, then its logits for every scored sequence, block by
block, written to an unnamed spill file. It is freed; only then is the reference (the
original Hugging Face directory, float32) loaded, so two models' weights are never
resident together. The reference's greedy tokens come from checking the candidate's
(:func:`~trtllm_forge.engine.hf_greedy.greedy_checked`: one teacher-forced forward per
batch instead of a decode step per token, the same tokens as decoding step by step); then
it computes the same rows block by block, each compared with the spilled candidate rows
(in pieces that never cross a candidate block's end) and accumulated in a
:class:`~trtllm_forge.engine.streaming.SequenceScore`. Peak memory is one model plus one
block of logits, whatever the length of the texts.
"""

from __future__ import annotations

import gc
import math
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from trtllm_forge.context import Progress
from trtllm_forge.engine import metrics, streaming


@dataclass(frozen=True)
class Candidate:
    """What verify compares with the reference, as the three things verify does with it."""

    name: str  # for progress lines: "engine", "compressed-tensors folder", ...
    load: Callable[[], Any]
    generate: Callable[[Any, Sequence[Sequence[int]], int], list[list[int]]]
    # (model, tokens, window, vocabulary) -> the sequence's logits, block by block
    blocks: Callable[[Any, Sequence[int], int, int], Iterator[np.ndarray]]
    # (model, prompts, window, vocabulary) -> per prompt its logits block by block, several
    # prompts per forward; None: each prompt through ``blocks``
    prompts: (
        Callable[[Any, Sequence[Sequence[int]], int, int], Iterator[Iterable[np.ndarray]]] | None
    ) = None
    # Import the reference's code on a thread while this candidate runs: for a candidate
    # that runs outside Python (an ONNX Runtime engine), not for a transformers model
    # (it imports the same code itself, in the main thread).
    overlap_imports: bool = False


@dataclass(frozen=True)
class Inputs:
    """Token ids verify scores, and how the reference batches and windows them."""

    prompts: Sequence[Sequence[int]]
    texts: Sequence[Sequence[int]]
    max_new_tokens: int
    window: int  # independent context windows of this many tokens (the engine's max_seq_len)
    batch_size: int  # prompts decoded together (the engine's max_batch_size)
    device: str = "cpu"  # where the reference runs

    def scored(self) -> list[tuple[str, Sequence[int]]]:
        """(kind, tokens): every text of two tokens or more, then every prompt."""
        texts = [("text", t) for t in self.texts if len(t) >= 2]
        return texts + [("prompt", p) for p in self.prompts]


@dataclass
class Comparison:
    metrics: dict[str, float]
    prompts: list[dict[str, Any]]  # per prompt: both models' tokens, first divergence


def compare(
    reference_dir: Path,
    candidate: Candidate,
    inputs: Inputs,
    *,
    spill_dir: Path | None,
    progress: Progress,
) -> Comparison:
    """Both passes; the metrics of :mod:`trtllm_forge.engine.verify`'s docstring."""
    scored = inputs.scored()
    with tempfile.TemporaryFile(dir=spill_dir) as spill_file:
        with _importing_reference_code(reference_dir, candidate.overlap_imports):
            candidate_tokens, spilled = _candidate_pass(
                candidate, inputs, scored, spill_file, progress
            )
        spill_file.seek(0)
        reference_tokens, scores = _reference_pass(
            reference_dir, inputs, scored, candidate_tokens, spilled, spill_file, progress
        )
    values, rows = _generation_metrics(inputs.prompts, reference_tokens, candidate_tokens)
    values.update(_scoring_metrics([kind for kind, _ in scored], scores))
    return Comparison(values, rows)


@contextmanager
def _importing_reference_code(reference_dir: Path, enabled: bool) -> Iterator[None]:
    """Import the reference's code on a thread while the block runs, if ``enabled``.

    Importing torch, transformers' auto classes and the model's module is ~3.6 s of Python
    on the 0.5B bench, most of loading the reference, and needs no weights; an engine's
    session load and decode leave a core idle and run outside the GIL (running an engine
    imports no torch: tests/test_verify_streaming.py).
    """
    if not enabled:
        yield
        return
    thread = threading.Thread(
        target=_import_reference_code, args=(reference_dir,), name="verify-imports", daemon=True
    )
    thread.start()
    try:
        yield
    finally:
        thread.join()


def _import_reference_code(reference_dir: Path) -> None:
    """What :func:`load_reference` imports before it reads weights (never remote code)."""
    try:
        from transformers import AutoConfig
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

        config = AutoConfig.from_pretrained(reference_dir, trust_remote_code=False)
        MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]  # the lookup imports the model's module
    except Exception:  # noqa: BLE001 - load_reference reports what is wrong, in the main thread
        return


def load_reference(reference_dir: Path, *, device: str = "cpu") -> Any:
    """The HF model in float32 on ``device``, remote code refused; for an architecture
    transformers does not ship (Baichuan 2, ChatGLM), forge's own model of it
    (checkpoint/native.py)."""
    import torch
    from transformers import AutoModelForCausalLM

    from trtllm_forge.checkpoint.native import native_model

    native = native_model(Path(reference_dir))
    if native is not None:
        return native.to(device)
    model = AutoModelForCausalLM.from_pretrained(
        reference_dir, dtype=torch.float32, trust_remote_code=False
    )
    if device != "cpu":  # (transformers' stubs type .to() as a wrapped method)
        model.to(torch.device(device))  # type: ignore[arg-type,unused-ignore]
    return model.eval()  # type: ignore[no-untyped-call,unused-ignore]


@dataclass
class Spilled:
    """What the candidate's pass wrote: each sequence's block lengths, the vocabulary."""

    blocks: list[list[int]]
    vocab: int = 1


def _candidate_pass(
    candidate: Candidate,
    inputs: Inputs,
    scored: Sequence[tuple[str, Sequence[int]]],
    spill_file: IO[bytes],
    progress: Progress,
) -> tuple[list[list[int]], Spilled]:
    """The candidate's greedy tokens, and every scored sequence's logits to ``spill_file``
    block by block; the model is gone when this returns."""
    with progress.task(f"verify: {candidate.name} greedy generation", total=1) as task:
        model = candidate.load()
        tokens = candidate.generate(model, inputs.prompts, inputs.max_new_tokens)
        task.advance()
    spilled = Spilled([])
    with progress.task(f"verify: {candidate.name} logits", total=len(scored)) as task:
        for blocks in _candidate_logits(candidate, model, scored, inputs.window, _vocab(model)):
            lengths = []
            for logits in streaming.spill_each(blocks, spill_file):
                spilled.vocab = logits.shape[1]
                lengths.append(len(logits))
            spilled.blocks.append(lengths)
            task.advance()
        del model
        gc.collect()  # the reference loads next: the candidate's weights must be gone by then
        streaming.release_device_memory(inputs.device)
    return tokens, spilled


def _candidate_logits(
    candidate: Candidate,
    model: Any,
    scored: Sequence[tuple[str, Sequence[int]]],
    window: int,
    vocab: int,
) -> Iterator[Iterable[np.ndarray]]:
    """Per scored sequence, in order, the candidate's logits block by block (the texts come
    first: Inputs.scored); the prompts several per forward where the candidate can."""
    prompts = [sequence for kind, sequence in scored if kind == "prompt"]
    for kind, sequence in scored:
        if kind == "text":
            yield candidate.blocks(model, sequence, window, vocab)
    if candidate.prompts is not None:
        yield from candidate.prompts(model, prompts, window, vocab)
        return
    for prompt in prompts:
        yield candidate.blocks(model, prompt, window, vocab)


def _vocab(model: Any) -> int:
    """The candidate's vocabulary width, for sizing its blocks (an engine's, or a
    transformers model's config)."""
    size = getattr(model, "vocab_size", None)
    if size is None:
        size = model.config.vocab_size
    return int(size)


def _reference_pass(
    reference_dir: Path,
    inputs: Inputs,
    scored: Sequence[tuple[str, Sequence[int]]],
    candidate_tokens: Sequence[Sequence[int]],
    spilled: Spilled,
    spill_file: IO[bytes],
    progress: Progress,
) -> tuple[list[list[int]], list[streaming.SequenceScore]]:
    """The reference's greedy tokens per prompt (the candidate's checked, see
    :func:`~trtllm_forge.engine.hf_greedy.greedy_checked`), and its logits block by block
    against the spilled candidate rows, cut at both models' block ends (views, no copies;
    at most one candidate block of rows is read back at a time)."""
    import torch

    from trtllm_forge.engine.hf_greedy import greedy_checked

    unspill, scores = streaming.Unspill(spill_file, spilled.vocab), []
    with progress.task("verify: reference", total=len(inputs.prompts) + len(scored)) as task:
        reference = load_reference(reference_dir, device=inputs.device)
        vocab = int(reference.config.vocab_size)
        # Batched like the engine's generate (left padding, engine's max_batch_size).
        tokens = greedy_checked(
            reference,
            inputs.prompts,
            candidate_tokens,
            inputs.max_new_tokens,
            inputs.batch_size,
            device=inputs.device,
        )
        task.advance(len(inputs.prompts))
        block = streaming.block_tokens(vocab, inputs.window, streaming.REFERENCE_BLOCK_BYTES)
        every = _reference_logits(reference, scored, inputs.window, block, inputs.device)
        threads = torch.get_num_threads()  # the metrics run between its forwards, on its cores
        for (_, sequence), lengths, blocks in zip(scored, spilled.blocks, every, strict=True):
            score = streaming.SequenceScore(sequence, threads=threads)
            row = 0
            for logits in streaming.cut(blocks, lengths):
                score.add(row, logits, unspill.read(len(logits)))
                row += len(logits)
            scores.append(score)
            task.advance()
        del reference
        gc.collect()
        streaming.release_device_memory(inputs.device)
    return tokens, scores


def _reference_logits(
    reference: Any,
    scored: Sequence[tuple[str, Sequence[int]]],
    window: int,
    block: int,
    device: str,
) -> Iterator[Iterable[np.ndarray]]:
    """Per scored sequence, in order, the reference's logits block by block: a text through
    its KV cache in blocks of ``block`` rows; the prompts (short, and several) left-padded
    together, up to ``block`` padded rows per forward: one pass over the weights for a
    batch of prompts instead of one each (on the 0.5B bench, 8 prompts of 16 tokens took
    2.15 s one by one and 0.6 s together)."""
    from trtllm_forge.engine.hf_greedy import forced_rows

    prompts = [sequence for kind, sequence in scored if kind == "prompt"]
    for kind, sequence in scored:
        if kind == "text":  # the texts come first (Inputs.scored)
            yield streaming.reference_blocks(reference, sequence, window, block)
    for group in streaming.batches([len(p) for p in prompts], block):
        if len(group) == 1:
            yield streaming.reference_blocks(reference, prompts[group[0]], window, block)
            continue
        for rows in forced_rows(reference, [prompts[i] for i in group], device=device):
            yield [rows.cpu().numpy()]


def _generation_metrics(
    prompts: Sequence[Sequence[int]],
    reference_tokens: Sequence[list[int]],
    candidate_tokens: Sequence[list[int]],
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    rows = [
        {
            "prompt_tokens": len(prompt),
            "reference": ref,
            "engine": got,
            "first_divergence": metrics.first_divergence(ref, got),
        }
        for prompt, ref, got in zip(prompts, reference_tokens, candidate_tokens, strict=True)
    ]
    exact = sum(row["first_divergence"] is None for row in rows)
    values = {
        "token_agreement": metrics.token_agreement(reference_tokens, candidate_tokens),
        "prompts_exact_match": exact / len(rows) if rows else float("nan"),
    }
    return values, rows


def _scoring_metrics(
    kinds: Sequence[str], scores: Sequence[streaming.SequenceScore]
) -> dict[str, float]:
    """KL, top-1 and perplexities over the texts; the logit difference over everything."""
    values = {
        "max_rel_logit_diff": max((s.max_relative_logit_diff for s in scores), default=float("nan"))
    }
    texts = [s for kind, s in zip(kinds, scores, strict=True) if kind == "text"]
    rows = sum(s.rows for s in texts)
    if rows:
        targets = sum(s.targets for s in texts)
        ppl_ref = math.exp(sum(s.nll_reference for s in texts) / targets) if targets else math.nan
        ppl_got = math.exp(sum(s.nll_engine for s in texts) / targets) if targets else math.nan
        values.update(
            kl_mean=sum(s.kl_sum for s in texts) / rows,
            kl_max=max(s.kl_max for s in texts),
            top1_agreement=sum(s.top1_same for s in texts) / rows,
            ppl_reference=ppl_ref,
            ppl_engine=ppl_got,
            ppl_ratio=ppl_got / ppl_ref,
            text_tokens=float(rows),
        )
    return values


def texts_scored(
    texts: Sequence[Sequence[int]], lengths: Sequence[int] | None, window: int
) -> list[dict[str, Any]]:
    """Per text: how many of its tokens were scored, which ones, in how many windows."""
    rows = []
    for index, tokens in enumerate(texts):
        scored = len(tokens) if len(tokens) >= 2 else 0
        rows.append(
            {
                "text": index,
                "tokens": lengths[index] if lengths is not None else len(tokens),
                "scored_tokens": scored,
                "scored_from": 0,
                "scored_to": scored,  # exclusive: tokens [0, scored_to) of the tokenized text
                "windows": len(streaming.blocks(scored, window, window)) if scored else 0,
            }
        )
    return rows
