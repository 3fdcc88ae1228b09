"""Compare an engine with the transformers reference model, and apply the recipe's gates.

The reference is the ORIGINAL Hugging Face directory loaded in float32 (never with
remote code). Inputs are token ids: the caller tokenizes prompts and texts with
the snapshot's tokenizer, so engine and reference see identical ids.

Two entry points: :func:`verify_engine` takes token ids; :func:`verify_build` (what the
verify stage calls) takes strings and tokenizes them with the reference directory's
tokenizer (the HF snapshot's), using the built-in held-out text when none is given.

Metrics:
  token_agreement     greedy generation, fraction of positions with the same token
  kl_mean / kl_max    KL(reference ‖ engine) per teacher-forced position over texts
  top1_agreement      same argmax per teacher-forced position over texts
  ppl_engine / ppl_reference / ppl_ratio   perplexity on the texts, and engine / reference
  max_rel_logit_diff  max |Δlogit| / max |reference logit| over texts and prompts
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

from trtllm_forge.context import NullProgress, Progress
from trtllm_forge.engine import metrics, streaming
from trtllm_forge.engine.metadata import read_metadata
from trtllm_forge.engine.runtime import OrtEngine, score_windows
from trtllm_forge.engine.verify_result import GateResult, VerifyResult
from trtllm_forge.errors import recipe_error

# gate name -> (metric it bounds, comparison)
GATES: dict[str, tuple[str, str]] = {
    "min_token_agreement": ("token_agreement", ">="),
    "min_top1": ("top1_agreement", ">="),
    "max_kl": ("kl_mean", "<="),
    "max_ppl_ratio": ("ppl_ratio", "<="),
    "max_rel_logit_diff": ("max_rel_logit_diff", "<="),
}
_NO_PROGRESS = NullProgress()


def check_gates(gates: Mapping[str, float | None]) -> dict[str, float]:
    """The gates that have thresholds; unknown names are a recipe error."""
    unknown = sorted(set(gates) - set(GATES))
    if unknown:
        raise recipe_error(
            f"unknown verify gate(s): {', '.join(unknown)}", hint=f"known: {', '.join(GATES)}"
        )
    return {name: float(value) for name, value in gates.items() if value is not None}


def evaluate_gates(
    values: Mapping[str, float], gates: Mapping[str, float | None]
) -> list[GateResult]:
    results = []
    for name, threshold in check_gates(gates).items():
        metric, comparison = GATES[name]
        value = values.get(metric)
        if value is None or np.isnan(value):
            results.append(
                GateResult(
                    name, metric, comparison, threshold, None, False, f"{metric} was not measured"
                )
            )
            continue
        passed = value >= threshold if comparison == ">=" else value <= threshold
        results.append(GateResult(name, metric, comparison, threshold, value, bool(passed)))
    return results


def load_reference(reference_dir: Path) -> Any:
    """The HF model in float32, remote code refused; for an architecture transformers does
    not ship (Baichuan 2, ChatGLM), forge's own model of it (checkpoint/native.py)."""
    import torch
    from transformers import AutoModelForCausalLM

    from trtllm_forge.checkpoint.native import native_model

    native = native_model(Path(reference_dir))
    if native is not None:
        return native
    model = AutoModelForCausalLM.from_pretrained(
        reference_dir, dtype=torch.float32, trust_remote_code=False
    )
    return model.eval()  # type: ignore[no-untyped-call,unused-ignore]


def reference_greedy(model: Any, prompt: Sequence[int], max_new_tokens: int) -> list[int]:
    """Greedy continuation with the reference's own KV cache (no generate() stopping rules)."""
    import torch

    with torch.no_grad():
        out = model(input_ids=torch.tensor([list(prompt)]), use_cache=True)
        tokens = [int(out.logits[0, -1].argmax())]
        for _ in range(max_new_tokens - 1):
            out = model(
                input_ids=torch.tensor([[tokens[-1]]]),
                past_key_values=out.past_key_values,
                use_cache=True,
            )
            tokens.append(int(out.logits[0, -1].argmax()))
    return tokens


def reference_logits(model: Any, tokens: Sequence[int], window: int) -> np.ndarray:
    """Teacher-forced logits in the same independent windows the engine's score() uses."""
    import torch

    parts = []
    with torch.no_grad():
        for start, stop in score_windows(len(tokens), window):
            logits = model(input_ids=torch.tensor([list(tokens[start:stop])])).logits[0]
            parts.append(logits.float().numpy())
    return np.concatenate(parts, axis=0)


def verify_engine(
    engine_dir: Path,
    reference_dir: Path,
    *,
    prompts_token_ids: Sequence[Sequence[int]],
    texts_token_ids: Sequence[Sequence[int]],
    max_new_tokens: int,
    gates: Mapping[str, float | None],
    out_dir: Path | None = None,
    progress: Progress = _NO_PROGRESS,
    text_lengths: Sequence[int] | None = None,
) -> VerifyResult:
    """Run the comparison, evaluate ``gates`` and (if ``out_dir``) write the three reports.

    The reference runs first (greedy generation, teacher-forced logits spilled to a
    temporary file in ``out_dir``), is freed, then the engine runs and the metrics are
    accumulated block by block (see :mod:`trtllm_forge.engine.streaming`): peak memory is
    one model plus one block of logits, whatever the length of the texts.
    ``text_lengths`` (each text's token count before it was cut) goes into the report.
    A failed gate does not raise: the caller turns ``not result.passed`` into exit code 3.
    """
    check_gates(gates)
    meta = read_metadata(Path(engine_dir))
    limits = meta.get("limits", {})
    window = int(limits.get("max_seq_len", 1 << 30))
    scored = [("text", t) for t in texts_token_ids if len(t) >= 2]
    scored += [("prompt", p) for p in prompts_token_ids]
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=out_dir) as spill_file:
        reference_tokens, vocab = _reference_pass(
            reference_dir,
            prompts_token_ids,
            max_new_tokens,
            scored,
            (window, int(limits.get("max_batch_size", 1 << 30))),
            spill_file,
            progress,
        )
        spill_file.seek(0)
        engine = OrtEngine.load(engine_dir)
        with progress.task("verify: engine greedy generation", total=1) as task:
            engine_tokens = engine.generate(prompts_token_ids, max_new_tokens)
            task.advance()
        scores = _engine_pass(engine, scored, window, vocab, spill_file, progress)
    values, prompt_rows = _generation_metrics(prompts_token_ids, reference_tokens, engine_tokens)
    values.update(_scoring_metrics([kind for kind, _ in scored], scores))
    result = VerifyResult(
        metrics=values,
        gates=evaluate_gates(values, gates),
        prompts=prompt_rows,
        engine={k: engine.meta.get(k) for k in ("backend", "mapping", "quantization", "limits")},
        texts=_texts_scored(texts_token_ids, text_lengths, window),
    )
    if out_dir is not None:
        from trtllm_forge.engine.report import write_reports

        write_reports(result, Path(out_dir))  # also records the file names in result.files
    return result


def _reference_pass(
    reference_dir: Path,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    scored: Sequence[tuple[str, Sequence[int]]],
    limits: tuple[int, int],
    spill_file: IO[bytes],
    progress: Progress,
) -> tuple[list[list[int]], int]:
    """Reference greedy tokens per prompt; every scored sequence's logits to ``spill_file``.
    Returns (tokens, vocabulary width); the model is gone when this returns."""
    import gc

    from trtllm_forge.engine.hf_greedy import greedy_batched

    window, batch_size = limits
    reference = load_reference(reference_dir)
    vocab = int(reference.config.vocab_size)
    with progress.task("verify: reference", total=len(prompts) + len(scored)) as task:
        # Batched like the engine's generate (left padding, engine's max_batch_size): one
        # pass over the weights per step for the whole batch, not per prompt.
        tokens = greedy_batched(reference, prompts, max_new_tokens, batch_size)
        task.advance(len(prompts))
        block = streaming.block_tokens(vocab, window, streaming.REFERENCE_BLOCK_BYTES)
        for _, sequence in scored:
            for logits in streaming.reference_blocks(reference, sequence, window, block):
                vocab = logits.shape[1]
                streaming.spill(logits, spill_file)
            task.advance()
    del reference
    gc.collect()  # the engine loads next: the reference's weights must be gone by then
    streaming.return_freed_memory()
    return tokens, vocab


def _engine_pass(
    engine: OrtEngine,
    scored: Sequence[tuple[str, Sequence[int]]],
    window: int,
    vocab: int,
    spill_file: IO[bytes],
    progress: Progress,
) -> list[streaming.SequenceScore]:
    """The engine's logits block by block against the spilled reference rows."""
    block = streaming.block_tokens(vocab, engine.max_input_len)
    spilled = streaming.Unspill(spill_file, vocab)
    scores = []
    with progress.task("verify: teacher-forced logits", total=len(scored)) as task:
        for _, sequence in scored:
            score = streaming.SequenceScore(sequence)
            row = 0
            for logits in streaming.engine_blocks(engine, sequence, window, block):
                reference = spilled.read(len(logits))
                score.add(row, reference, logits)
                row += len(logits)
            scores.append(score)
            task.advance()
    return scores


def _generation_metrics(
    prompts: Sequence[Sequence[int]],
    reference_tokens: Sequence[list[int]],
    engine_tokens: Sequence[list[int]],
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    rows = [
        {
            "prompt_tokens": len(prompt),
            "reference": ref,
            "engine": eng,
            "first_divergence": metrics.first_divergence(ref, eng),
        }
        for prompt, ref, eng in zip(prompts, reference_tokens, engine_tokens, strict=True)
    ]
    exact = sum(row["first_divergence"] is None for row in rows)
    values = {
        "token_agreement": metrics.token_agreement(reference_tokens, engine_tokens),
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
        ppl_eng = math.exp(sum(s.nll_engine for s in texts) / targets) if targets else math.nan
        values.update(
            kl_mean=sum(s.kl_sum for s in texts) / rows,
            kl_max=max(s.kl_max for s in texts),
            top1_agreement=sum(s.top1_same for s in texts) / rows,
            ppl_reference=ppl_ref,
            ppl_engine=ppl_eng,
            ppl_ratio=ppl_eng / ppl_ref,
            text_tokens=float(rows),
        )
    return values


def _texts_scored(
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


def tokenize_inputs(
    reference_dir: Path, prompts: Sequence[str], texts: Sequence[str], max_text_tokens: int
) -> tuple[list[list[int]], list[list[int]]]:
    """Token ids of prompts (with the tokenizer's special tokens, as a user's request would
    have) and of texts (plain, each cut to ``max_text_tokens``)."""
    prompt_ids, text_ids = _tokenize(reference_dir, prompts, texts)
    return prompt_ids, [ids[:max_text_tokens] for ids in text_ids]


def _tokenize(
    reference_dir: Path, prompts: Sequence[str], texts: Sequence[str]
) -> tuple[list[list[int]], list[list[int]]]:
    from trtllm_forge.sources.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(reference_dir, needed_for="verify tokenizes the prompts")
    prompt_ids = [list(tokenizer(p)["input_ids"]) for p in prompts]
    text_ids = [list(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    return prompt_ids, text_ids


def verify_build(
    *,
    engine_dir: Path,
    reference_dir: Path,
    prompts: Sequence[str],
    texts: Sequence[str],
    max_new_tokens: int,
    max_text_tokens: int,
    gates: Mapping[str, float | None],
    out_dir: Path,
    progress: Progress = _NO_PROGRESS,
) -> dict[str, Any]:
    """The verify stage's call: tokenize, compare, write the reports; returns a JSON summary.

    ``texts`` empty means forge's built-in held-out text (trtllm_forge/data/eval.txt).
    The summary has ``passed``, ``failed_gates`` (names), ``metrics`` and ``reports``.
    """
    if not texts:
        from trtllm_forge.quickeval import builtin_eval_text

        texts = [builtin_eval_text()]
    prompt_ids, full_texts = _tokenize(Path(reference_dir), prompts, texts)
    text_ids = [ids[:max_text_tokens] for ids in full_texts]
    result = verify_engine(
        Path(engine_dir),
        Path(reference_dir),
        prompts_token_ids=prompt_ids,
        texts_token_ids=text_ids,
        max_new_tokens=max_new_tokens,
        gates=gates,
        out_dir=Path(out_dir),
        progress=progress,
        text_lengths=[len(ids) for ids in full_texts],
    )
    return {
        "passed": result.passed,
        "failed_gates": [g.name for g in result.failed_gates()],
        "metrics": {k: (v if np.isfinite(v) else None) for k, v in result.metrics.items()},
        "gates": {
            g.name: {"value": g.value, "threshold": g.threshold, "passed": g.passed}
            for g in result.gates
        },
        "reports": result.files,
        "texts": result.texts,
    }
