"""The perplexity change `forge quantize` reports: quantized vs unquantized checkpoint,
both evaluated in float32 torch on the built-in held-out text (or any text)."""

from __future__ import annotations

import math
from importlib import resources
from pathlib import Path
from typing import Any

WINDOW = 256


def builtin_eval_text() -> str:
    return (resources.files("trtllm_forge") / "data" / "eval.txt").read_text(encoding="utf-8")


def perplexity_delta(
    *, reference_ckpt: Path, quantized_ckpt: Path, tokenizer_dir: Path, text: str | None = None
) -> dict[str, Any]:
    """Perplexity of both checkpoints over ``text`` in windows of WINDOW tokens."""
    import torch

    from trtllm_forge.checkpoint.forward import CheckpointForward
    from trtllm_forge.quant.fakequant import FakeQuantForward
    from trtllm_forge.sources.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_dir, needed_for="the perplexity summary tokenizes text")
    ids = tokenizer(text or builtin_eval_text(), add_special_tokens=False)["input_ids"]
    windows = [torch.tensor([ids[i : i + WINDOW]]) for i in range(0, max(len(ids) - 1, 1), WINDOW)]
    windows = [w for w in windows if w.shape[1] > 1]
    reference = CheckpointForward(reference_ckpt)
    quantized = FakeQuantForward(quantized_ckpt)
    try:
        ref = _perplexity(reference.logits, windows)
        quant = _perplexity(quantized.logits, windows)
    finally:
        reference.close()
        quantized.close()
    return {
        "tokens": len(ids),
        "reference_ppl": ref,
        "quantized_ppl": quant,
        "delta_pct": 100.0 * (quant / ref - 1.0),
    }


def _perplexity(logits_fn: Any, windows: list[Any]) -> float:
    import torch

    total, count = 0.0, 0
    with torch.no_grad():
        for ids in windows:
            logits = logits_fn(ids)[0, :-1].float()
            nll = torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum")
            total += float(nll)
            count += ids.shape[1] - 1
    return math.exp(total / max(count, 1))
