"""Greedy decoding of a batch with a transformers model, one step at a time.

Prompts are left-padded to the longest, with an attention mask and (for models that take
them) position ids counted from each prompt's first real token — the same batching the
forge runtime uses, so verify's reference and ``forge bench --runtime transformers`` do
what an engine does. No generate(): its stopping rules and logits processors stay out.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from typing import Any


def greedy_steps(
    model: Any, prompts: Sequence[Sequence[int]], max_new_tokens: int, *, device: str = "cpu"
) -> Iterator[list[int]]:
    """Yield each step's new token per prompt, exactly ``max_new_tokens`` times."""
    import torch

    longest = max(len(p) for p in prompts)
    ids = torch.zeros((len(prompts), longest), dtype=torch.long)
    mask = torch.zeros((len(prompts), longest), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, longest - len(prompt) :] = torch.tensor(list(prompt))
        mask[row, longest - len(prompt) :] = 1
    ids, mask = ids.to(device), mask.to(device)
    # Models with absolute or ALiBi positions (GPT-2, BLOOM, MPT, ...) derive them from the
    # mask themselves; some of them take no position_ids at all.
    parameters = inspect.signature(model.forward).parameters
    takes_positions = "position_ids" in parameters
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    # Only the last position's logits are read: the prompt's other rows of the LM head
    # (vocabulary x hidden each) would be computed for nothing.
    keep = {"logits_to_keep": 1} if "logits_to_keep" in parameters else {}
    with torch.no_grad():
        extra = {"position_ids": positions} if takes_positions else {}
        out = model(input_ids=ids, attention_mask=mask, use_cache=True, **keep, **extra)
        for step in range(max_new_tokens):
            token = out.logits[:, -1].argmax(dim=-1)
            yield token.tolist()  # .tolist() waits for the device: the step is done
            if step == max_new_tokens - 1:
                break
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            positions = positions[:, -1:] + 1
            extra = {"position_ids": positions} if takes_positions else {}
            out = model(
                input_ids=token[:, None],
                attention_mask=mask,
                past_key_values=out.past_key_values,
                use_cache=True,
                **extra,
            )


def greedy_batched(
    model: Any,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    batch_size: int,
    *,
    device: str = "cpu",
) -> list[list[int]]:
    """Greedy tokens per prompt, prompts decoded ``batch_size`` at a time."""
    results: list[list[int]] = []
    for start in range(0, len(prompts), batch_size):
        group = prompts[start : start + batch_size]
        steps = list(greedy_steps(model, group, max_new_tokens, device=device))
        results += [list(column) for column in zip(*steps, strict=True)]
    return results
