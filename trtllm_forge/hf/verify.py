"""verify for ``build.backend: hf``: load the folder through a real loader, then the same
metrics and gates as an engine.

* compressed-tensors: transformers with the compressed-tensors library (decompressed
  on the CPU) — exactly what a user's ``from_pretrained`` does;
* ModelOpt format: :mod:`trtllm_forge.hf.modelopt_loader`, forge's reader that shares no
  code with the writer (nothing in transformers reads the format).

The candidate and the reference are both transformers models, so greedy generation and
teacher-forced logits use the reference's own helpers.
"""

from __future__ import annotations

import gc
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from trtllm_forge.context import NullProgress, Progress
from trtllm_forge.engine import metrics
from trtllm_forge.hf.reader import describe

_NO_PROGRESS = NullProgress()


def load_folder_model(folder: Path) -> Any:
    """The folder's model on the CPU (float32; NVFP4 compressed-tensors: bfloat16), through
    the loader its format has."""
    import torch

    info = describe(folder)
    if info.format == "modelopt":
        from trtllm_forge.hf.modelopt_loader import load_modelopt_model

        return load_modelopt_model(folder)
    import transformers

    # compressed-tensors 0.20 unpacks NVFP4 weights to bfloat16 whatever the model's dtype
    # (a float32 model then fails in its first GEMM), so NVFP4 folders run in bfloat16.
    dtype = torch.bfloat16 if info.quant_algo == "NVFP4" else torch.float32
    model = transformers.AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype)
    model.train(False)
    return model


def _run(
    model: Any,
    prompts: Sequence[Sequence[int]],
    texts: Sequence[Sequence[int]],
    max_new: int,
    window: int,
) -> tuple[list[list[int]], list[np.ndarray]]:
    from trtllm_forge.engine.verify import reference_greedy, reference_logits

    tokens = [reference_greedy(model, p, max_new) for p in prompts]
    logits = [reference_logits(model, t, window) for t in texts]
    return tokens, logits


def verify_hf_folder(
    *,
    folder: Path,
    reference_dir: Path,
    prompts: Sequence[str],
    texts: Sequence[str],
    max_new_tokens: int,
    max_text_tokens: int,
    gates: Mapping[str, float | None],
    out_dir: Path,
    progress: Progress = _NO_PROGRESS,
) -> dict[str, Any]:
    """Compare the folder's model with the reference; write the reports; JSON summary."""
    from trtllm_forge.engine.report import write_reports
    from trtllm_forge.engine.verify import (
        VerifyResult,
        check_gates,
        evaluate_gates,
        load_reference,
        tokenize_inputs,
    )

    check_gates(gates)
    if not texts:
        from trtllm_forge.quickeval import builtin_eval_text

        texts = [builtin_eval_text()]
    prompt_ids, text_ids = tokenize_inputs(Path(reference_dir), prompts, texts, max_text_tokens)
    text_ids = [t for t in text_ids if len(t) >= 2]
    info = describe(folder)
    with progress.task("verify: reference", total=1) as task:
        reference = load_reference(Path(reference_dir))
        window = int(getattr(reference.config, "max_position_embeddings", None) or 1 << 30)
        ref_tokens, ref_logits = _run(reference, prompt_ids, text_ids, max_new_tokens, window)
        task.advance()
    del reference
    gc.collect()
    with progress.task(f"verify: {info.format} folder", total=1) as task:
        candidate = load_folder_model(Path(folder))
        got_tokens, got_logits = _run(candidate, prompt_ids, text_ids, max_new_tokens, window)
        task.advance()
    values = _metrics(ref_tokens, got_tokens, ref_logits, got_logits, text_ids)
    rows = [
        {
            "prompt_tokens": len(p),
            "reference": r,
            "engine": g,
            "first_divergence": metrics.first_divergence(r, g),
        }
        for p, r, g in zip(prompt_ids, ref_tokens, got_tokens, strict=True)
    ]
    result = VerifyResult(
        metrics=values,
        gates=evaluate_gates(values, gates),
        prompts=rows,
        engine={"backend": "hf", **info.to_dict()},
    )
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    write_reports(result, Path(out_dir))
    return {
        "passed": result.passed,
        "failed_gates": [g.name for g in result.failed_gates()],
        "metrics": {k: (v if np.isfinite(v) else None) for k, v in result.metrics.items()},
        "gates": {
            g.name: {"value": g.value, "threshold": g.threshold, "passed": g.passed}
            for g in result.gates
        },
        "reports": result.files,
        "folder": info.to_dict(),
    }


def _metrics(
    ref_tokens: Sequence[list[int]],
    got_tokens: Sequence[list[int]],
    ref_logits: Sequence[np.ndarray],
    got_logits: Sequence[np.ndarray],
    texts: Sequence[Sequence[int]],
) -> dict[str, float]:
    exact = sum(
        metrics.first_divergence(r, g) is None for r, g in zip(ref_tokens, got_tokens, strict=True)
    )
    values = {
        "token_agreement": metrics.token_agreement(ref_tokens, got_tokens),
        "prompts_exact_match": exact / len(ref_tokens) if ref_tokens else float("nan"),
    }
    if not texts:
        return values
    kl = np.concatenate(
        [metrics.kl_per_token(r, g) for r, g in zip(ref_logits, got_logits, strict=True)]
    )
    top1 = np.concatenate(
        [metrics.top1_matches(r, g) for r, g in zip(ref_logits, got_logits, strict=True)]
    )
    nll_ref = np.concatenate(
        [metrics.next_token_nll(r, t) for r, t in zip(ref_logits, texts, strict=True)]
    )
    nll_got = np.concatenate(
        [metrics.next_token_nll(g, t) for g, t in zip(got_logits, texts, strict=True)]
    )
    ppl_ref, ppl_got = metrics.perplexity(nll_ref), metrics.perplexity(nll_got)
    values.update(
        kl_mean=float(kl.mean()),
        kl_max=float(kl.max()),
        top1_agreement=float(top1.mean()),
        ppl_reference=ppl_ref,
        ppl_engine=ppl_got,
        ppl_ratio=ppl_got / ppl_ref,
        max_rel_logit_diff=max(
            metrics.max_relative_logit_diff(r, g)
            for r, g in zip(ref_logits, got_logits, strict=True)
        ),
        text_tokens=float(len(kl)),
    )
    return values


def verify_build(*, engine_dir: Path, **kwargs: Any) -> dict[str, Any]:
    """The verify stage's call, as for an engine: the build artifact holds the folder
    (``hf/``) where an engine build holds ``engine/``."""
    from trtllm_forge.hf.stage import HF_DIR

    return verify_hf_folder(folder=Path(engine_dir).parent / HF_DIR, **kwargs)
