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

from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from trtllm_forge.context import NullProgress, Progress
from trtllm_forge.engine import streaming
from trtllm_forge.engine.compare import Candidate, Inputs, compare, load_reference, texts_scored
from trtllm_forge.engine.metadata import read_metadata
from trtllm_forge.engine.runtime import OrtEngine, score_windows
from trtllm_forge.engine.verify_result import GateResult, VerifyResult
from trtllm_forge.errors import dependency_error, recipe_error

# gate name -> (metric it bounds, comparison)
GATES: dict[str, tuple[str, str]] = {
    "min_token_agreement": ("token_agreement", ">="),
    "min_top1": ("top1_agreement", ">="),
    "max_kl": ("kl_mean", "<="),
    "max_ppl_ratio": ("ppl_ratio", "<="),
    "max_rel_logit_diff": ("max_rel_logit_diff", "<="),
}
_NO_PROGRESS = NullProgress()
__all__ = ["GateResult", "VerifyResult", "load_reference", "verify_build", "verify_engine"]


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


DEVICES = ("cpu", "cuda")
TORCH_CUDA = "run on a machine with an NVIDIA GPU and a CUDA build of torch"
ORT_CUDA = "onnxruntime-gpu (`pip install onnxruntime-gpu` in place of onnxruntime)"


def require_device(device: str, backend: str) -> None:
    """Exit 4 before any work when ``verify.device: cuda`` cannot run here: the reference
    needs torch's CUDA device; an engine (any backend but ``hf``) also needs ONNX Runtime's
    CUDAExecutionProvider (onnxruntime-gpu)."""
    if device not in DEVICES:
        raise recipe_error(
            f"unknown verify device {device!r}", hint=f"use one of: {', '.join(DEVICES)}"
        )
    if device == "cpu":
        return
    import torch

    missing = []
    if not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        missing.append(f"torch {torch.__version__} ({build}) sees no CUDA GPU")
    if backend != "hf":
        import onnxruntime as ort  # type: ignore[import-untyped,unused-ignore]

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            missing.append(
                f"onnxruntime {ort.__version__} has no CUDAExecutionProvider (onnxruntime-gpu)"
            )
    if missing:
        needs = TORCH_CUDA if backend == "hf" else f"{TORCH_CUDA} and {ORT_CUDA}"
        raise dependency_error(
            "verify.device is cuda, but " + "; ".join(missing),
            hint=f"{needs}, or set verify.device: cpu",
        )


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


def engine_candidate(engine_dir: Path, device: str = "cpu") -> Candidate:
    """An ONNX Runtime engine as verify's candidate (CUDAExecutionProvider on cuda)."""

    def blocks(
        engine: OrtEngine, tokens: Sequence[int], window: int, vocab: int
    ) -> Iterator[np.ndarray]:
        block = streaming.block_tokens(vocab, engine.max_input_len)
        return streaming.engine_blocks(engine, tokens, window, block)

    def prompts(
        engine: OrtEngine, prompts: Sequence[Sequence[int]], window: int, vocab: int
    ) -> Iterator[Iterable[np.ndarray]]:
        block = streaming.block_tokens(vocab, engine.max_input_len)
        return streaming.engine_prompts(engine, prompts, window, block)

    return Candidate(
        "engine",
        load=lambda: OrtEngine.load(engine_dir, device=device),
        generate=lambda engine, prompts, new: engine.generate(prompts, new),
        blocks=blocks,
        prompts=prompts,
        overlap_imports=True,
    )


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
    device: str = "cpu",
) -> VerifyResult:
    """Run the comparison, evaluate ``gates`` and (if ``out_dir``) write the three reports.

    The engine runs first, is freed, then the reference (:mod:`trtllm_forge.engine.compare`):
    peak memory is one model plus one block of logits, whatever the length of the texts;
    the engine's logits wait in a temporary file in ``out_dir``.
    ``text_lengths`` (each text's token count before it was cut) goes into the report.
    A failed gate does not raise: the caller turns ``not result.passed`` into exit code 3.
    """
    check_gates(gates)
    require_device(device, "onnxruntime")
    meta = read_metadata(Path(engine_dir))
    limits = meta.get("limits", {})
    inputs = Inputs(
        prompts_token_ids,
        texts_token_ids,
        max_new_tokens,
        window=int(limits.get("max_seq_len", 1 << 30)),
        batch_size=int(limits.get("max_batch_size", 1 << 30)),
        device=device,
    )
    return finish(
        compare(
            Path(reference_dir),
            engine_candidate(Path(engine_dir), device),
            inputs,
            spill_dir=_made(out_dir),
            progress=progress,
        ),
        inputs,
        gates=gates,
        described={k: meta.get(k) for k in ("backend", "mapping", "quantization", "limits")},
        text_lengths=text_lengths,
        out_dir=out_dir,
    )


def _made(out_dir: Path | None) -> Path | None:
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
    return out_dir


def finish(
    comparison: Any,
    inputs: Inputs,
    *,
    gates: Mapping[str, float | None],
    described: dict[str, Any],
    text_lengths: Sequence[int] | None,
    out_dir: Path | None,
) -> VerifyResult:
    """The result of a comparison: gates evaluated, reports written when ``out_dir``."""
    result = VerifyResult(
        metrics=comparison.metrics,
        gates=evaluate_gates(comparison.metrics, gates),
        prompts=comparison.prompts,
        engine=described,
        texts=texts_scored(inputs.texts, text_lengths, inputs.window),
    )
    if out_dir is not None:
        from trtllm_forge.engine.report import write_reports

        write_reports(result, Path(out_dir))  # also records the file names in result.files
    return result


def summary(result: VerifyResult) -> dict[str, Any]:
    """What the verify stage records: ``passed``, failed gate names, metrics, reports."""
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


def tokenized(
    reference_dir: Path, prompts: Sequence[str], texts: Sequence[str], max_text_tokens: int
) -> tuple[list[list[int]], list[list[int]], list[int]]:
    """(prompt ids, text ids cut to ``max_text_tokens``, each text's full length); no
    texts means forge's built-in held-out text (trtllm_forge/data/eval.txt)."""
    if not texts:
        from trtllm_forge.quickeval import builtin_eval_text

        texts = [builtin_eval_text()]
    prompt_ids, full_texts = _tokenize(Path(reference_dir), prompts, texts)
    text_ids = [ids[:max_text_tokens] for ids in full_texts]
    return prompt_ids, text_ids, [len(ids) for ids in full_texts]


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
    device: str = "cpu",
) -> dict[str, Any]:
    """The verify stage's call: tokenize, compare, write the reports; returns
    :func:`summary` (``passed``, ``failed_gates``, ``metrics``, ``reports``, ``texts``)."""
    prompt_ids, text_ids, lengths = tokenized(reference_dir, prompts, texts, max_text_tokens)
    result = verify_engine(
        Path(engine_dir),
        Path(reference_dir),
        prompts_token_ids=prompt_ids,
        texts_token_ids=text_ids,
        max_new_tokens=max_new_tokens,
        gates=gates,
        out_dir=Path(out_dir),
        progress=progress,
        text_lengths=lengths,
        device=device,
    )
    return summary(result)
