"""Agreement metrics between reference and engine logits / tokens (numpy, float64 math)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    result: np.ndarray = x - np.log(np.exp(x).sum(axis=-1, keepdims=True))
    return result


def kl_per_token(reference: np.ndarray, engine: np.ndarray) -> np.ndarray:
    """KL(reference ‖ engine) for every row of two [tokens, vocab] logit arrays."""
    log_p, log_q = log_softmax(reference), log_softmax(engine)
    kl: np.ndarray = np.maximum((np.exp(log_p) * (log_p - log_q)).sum(axis=-1), 0.0)
    return kl  # (clipped: tiny negatives are rounding)


def top1_matches(reference: np.ndarray, engine: np.ndarray) -> np.ndarray:
    """bool per row: the engine's argmax equals the reference's."""
    matches: np.ndarray = reference.argmax(axis=-1) == engine.argmax(axis=-1)
    return matches


def next_token_nll(logits: np.ndarray, tokens: Sequence[int]) -> np.ndarray:
    """Negative log-likelihood of tokens[1:] given logits[:-1] (teacher forcing)."""
    log_probs = log_softmax(logits[:-1])
    targets = np.asarray(tokens[1:], dtype=np.int64)
    nll: np.ndarray = -log_probs[np.arange(len(targets)), targets]
    return nll


def perplexity(nll: np.ndarray) -> float:
    return float(np.exp(nll.mean())) if nll.size else float("nan")


def max_relative_logit_diff(reference: np.ndarray, engine: np.ndarray) -> float:
    """max |reference - engine| / max |reference| (one number for the whole comparison)."""
    scale = float(np.abs(reference).max())
    return float(np.abs(reference.astype(np.float64) - engine).max()) / (scale or 1.0)


def token_agreement(reference: Sequence[Sequence[int]], engine: Sequence[Sequence[int]]) -> float:
    """Fraction of generated positions where the engine's token equals the reference's."""
    total = sum(len(r) for r in reference)
    same = sum(
        sum(a == b for a, b in zip(r, e, strict=False))
        for r, e in zip(reference, engine, strict=True)
    )
    return same / total if total else float("nan")


def first_divergence(reference: Sequence[int], engine: Sequence[int]) -> int | None:
    """Index of the first differing token, or None when the sequences agree."""
    for index, (a, b) in enumerate(zip(reference, engine, strict=False)):
        if a != b:
            return index
    return None if len(reference) == len(engine) else min(len(reference), len(engine))
