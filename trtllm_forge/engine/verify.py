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

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from trtllm_forge.context import NullProgress, Progress
from trtllm_forge.engine import metrics
from trtllm_forge.engine.runtime import OrtEngine, score_windows
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


@dataclass(frozen=True)
class GateResult:
    name: str
    metric: str
    comparison: str
    threshold: float
    value: float | None
    passed: bool
    reason: str = ""


@dataclass
class VerifyResult:
    metrics: dict[str, float]
    gates: list[GateResult]
    prompts: list[dict[str, Any]]  # per prompt: reference/engine tokens, first divergence
    engine: dict[str, Any]  # backend, mapping, quantization of the engine verified
    files: dict[str, str] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(g.passed for g in self.gates)

    def failed_gates(self) -> list[GateResult]:
        return [g for g in self.gates if not g.passed]

    def to_json(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "metrics": self.metrics,
            "gates": [asdict(g) for g in self.gates],
            "prompts": self.prompts,
            "engine": self.engine,
            "files": self.files,
        }


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
    """The HF model in float32, remote code refused."""
    import torch
    from transformers import AutoModelForCausalLM

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
) -> VerifyResult:
    """Run the comparison, evaluate ``gates`` and (if ``out_dir``) write the three reports.

    A failed gate does not raise: the caller turns ``not result.passed`` into exit code 3.
    """
    check_gates(gates)
    engine = OrtEngine.load(engine_dir)
    reference = load_reference(reference_dir)
    values, prompt_rows = _compare_generation(
        engine, reference, prompts_token_ids, max_new_tokens, progress
    )
    values.update(_compare_scoring(engine, reference, prompts_token_ids, texts_token_ids, progress))
    result = VerifyResult(
        metrics=values,
        gates=evaluate_gates(values, gates),
        prompts=prompt_rows,
        engine={k: engine.meta.get(k) for k in ("backend", "mapping", "quantization", "limits")},
    )
    if out_dir is not None:
        from trtllm_forge.engine.report import write_reports

        write_reports(result, Path(out_dir))  # also records the file names in result.files
    return result


def _compare_generation(
    engine: OrtEngine,
    reference: Any,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    progress: Progress,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    with progress.task("verify: greedy generation", total=len(prompts) + 1) as task:
        engine_tokens = engine.generate(prompts, max_new_tokens)
        task.advance()
        reference_tokens = []
        for prompt in prompts:
            reference_tokens.append(reference_greedy(reference, prompt, max_new_tokens))
            task.advance()
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


def _compare_scoring(
    engine: OrtEngine,
    reference: Any,
    prompts: Sequence[Sequence[int]],
    texts: Sequence[Sequence[int]],
    progress: Progress,
) -> dict[str, float]:
    kl, top1, nll_ref, nll_eng = [], [], [], []
    max_diff = 0.0
    scored = [("text", t) for t in texts if len(t) >= 2] + [("prompt", p) for p in prompts]
    with progress.task("verify: teacher-forced logits", total=len(scored)) as task:
        for kind, tokens in scored:
            eng = engine.score(tokens)
            ref = reference_logits(reference, tokens, engine.max_seq_len)
            max_diff = max(max_diff, metrics.max_relative_logit_diff(ref, eng))
            if kind == "text":
                kl.append(metrics.kl_per_token(ref, eng))
                top1.append(metrics.top1_matches(ref, eng))
                nll_ref.append(metrics.next_token_nll(ref, tokens))
                nll_eng.append(metrics.next_token_nll(eng, tokens))
            task.advance()
    values = {"max_rel_logit_diff": max_diff if scored else float("nan")}
    if kl:
        all_kl = np.concatenate(kl)
        ppl_ref = metrics.perplexity(np.concatenate(nll_ref))
        ppl_eng = metrics.perplexity(np.concatenate(nll_eng))
        values.update(
            kl_mean=float(all_kl.mean()),
            kl_max=float(all_kl.max()),
            top1_agreement=float(np.concatenate(top1).mean()),
            ppl_reference=ppl_ref,
            ppl_engine=ppl_eng,
            ppl_ratio=ppl_eng / ppl_ref,
            text_tokens=float(all_kl.size),
        )
    return values


def tokenize_inputs(
    reference_dir: Path, prompts: Sequence[str], texts: Sequence[str], max_text_tokens: int
) -> tuple[list[list[int]], list[list[int]]]:
    """Token ids of prompts (with the tokenizer's special tokens, as a user's request would
    have) and of texts (plain, each cut to ``max_text_tokens``)."""
    from trtllm_forge.sources.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(reference_dir, needed_for="verify tokenizes the prompts")
    prompt_ids = [list(tokenizer(p)["input_ids"]) for p in prompts]
    text_ids = [
        list(tokenizer(t, add_special_tokens=False)["input_ids"])[:max_text_tokens] for t in texts
    ]
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
    prompt_ids, text_ids = tokenize_inputs(Path(reference_dir), prompts, texts, max_text_tokens)
    result = verify_engine(
        Path(engine_dir),
        Path(reference_dir),
        prompts_token_ids=prompt_ids,
        texts_token_ids=text_ids,
        max_new_tokens=max_new_tokens,
        gates=gates,
        out_dir=Path(out_dir),
        progress=progress,
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
    }
