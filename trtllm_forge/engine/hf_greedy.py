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


def _padded(sequences: Sequence[Sequence[int]], device: str) -> tuple[Any, Any, Any]:
    """(ids, mask, positions) of left-padded ``sequences``; positions count from each
    sequence's first real token."""
    import torch

    longest = max(len(s) for s in sequences)
    ids = torch.zeros((len(sequences), longest), dtype=torch.long)
    mask = torch.zeros((len(sequences), longest), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        ids[row, longest - len(sequence) :] = torch.tensor(list(sequence))
        mask[row, longest - len(sequence) :] = 1
    ids, mask = ids.to(device), mask.to(device)
    return ids, mask, (mask.cumsum(dim=1) - 1).clamp(min=0)


def _accepts(model: Any) -> tuple[bool, bool]:
    """(takes position_ids, takes logits_to_keep). Models with absolute or ALiBi positions
    (GPT-2, BLOOM, MPT, ...) derive them from the mask themselves; some take no
    position_ids at all."""
    parameters = inspect.signature(model.forward).parameters
    return "position_ids" in parameters, "logits_to_keep" in parameters


def step_logits(
    model: Any, prompts: Sequence[Sequence[int]], max_new_tokens: int, *, device: str = "cpu"
) -> Iterator[tuple[Any, Any]]:
    """Yield (tokens [batch], last-position logits [batch, vocab]) of each greedy step,
    exactly ``max_new_tokens`` times; the tokens are the logits' argmax."""
    import torch

    ids, mask, positions = _padded(prompts, device)
    takes_positions, takes_keep = _accepts(model)
    # Only the last position's logits are read: the prompt's other rows of the LM head
    # (vocabulary x hidden each) would be computed for nothing.
    keep = {"logits_to_keep": 1} if takes_keep else {}
    with torch.no_grad():
        extra = {"position_ids": positions} if takes_positions else {}
        out = model(input_ids=ids, attention_mask=mask, use_cache=True, **keep, **extra)
        for step in range(max_new_tokens):
            logits = out.logits[:, -1]
            token = logits.argmax(dim=-1)
            yield token, logits
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


def greedy_steps(
    model: Any, prompts: Sequence[Sequence[int]], max_new_tokens: int, *, device: str = "cpu"
) -> Iterator[list[int]]:
    """Yield each step's new token per prompt, exactly ``max_new_tokens`` times."""
    for token, _ in step_logits(model, prompts, max_new_tokens, device=device):
        yield token.tolist()  # .tolist() waits for the device: the step is done


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


# A teacher-forced (or re-prefilled) position's argmax is taken as the step decode's only
# when its top-2 logit gap is at least this fraction of the row's largest |logit|: the two
# computations differ only in float32 summation order (batch shape, padding, one forward
# instead of steps through the KV cache), by far less than this (tests/test_greedy_check.py
# and bench/verify_memory.py measure it), so such an argmax cannot differ between them.
MARGIN = 5e-5

# Rope types whose frequencies transformers recomputes per forward call from the longest
# position it sees (dynamic NTK; LongRoPE and its older Phi-3 names switch factor sets):
# a teacher-forced forward over prompt + draft then rotates early positions unlike the step
# decode did, so checking a draft cannot stand in for decoding (docs/models.md, Phi-3).
LENGTH_DEPENDENT_ROPE = frozenset({"dynamic", "longrope", "su", "yarn"})


def checkable(model: Any) -> bool:
    """Whether a teacher-forced forward computes each position as the step decode does:
    not for the rope types above (checked in ``rope_parameters`` and ``rope_scaling``)."""
    config = getattr(model, "config", None)
    for key in ("rope_parameters", "rope_scaling"):
        params = getattr(config, key, None)
        if not isinstance(params, dict):
            continue
        nested = [v for v in params.values() if isinstance(v, dict)]  # per-layer-type sets
        for entry in [params, *nested]:
            kind = entry.get("rope_type") or entry.get("type")
            if kind in LENGTH_DEPENDENT_ROPE:
                return False
    return True


def greedy_checked(
    model: Any,
    prompts: Sequence[Sequence[int]],
    drafts: Sequence[Sequence[int]],
    max_new_tokens: int,
    batch_size: int,
    *,
    device: str = "cpu",
    margin: float = MARGIN,
) -> list[list[int]]:
    """:func:`greedy_batched`'s tokens, found by checking ``drafts`` (another model's greedy
    tokens for the same prompts) instead of decoding step by step.

    Per group of ``batch_size`` prompts: one teacher-forced forward over prompt + draft
    gives the model's greedy token at every step up to the first one where it differs from
    the draft (that one included); only rows that diverge are decoded on, from their own
    tokens. Every token taken this way has a top-2 gap of at least ``margin`` × the row's
    largest |logit|; if any does not (a near-tie, where float32 summation order could
    decide), the group is decoded by :func:`greedy_steps` exactly as greedy_batched does.
    Models whose rotary frequencies depend on the forward's length (:func:`checkable`) are
    decoded step by step.
    """
    if not checkable(model):
        return greedy_batched(model, prompts, max_new_tokens, batch_size, device=device)
    results: list[list[int]] = []
    for start in range(0, len(prompts), batch_size):
        group = prompts[start : start + batch_size]
        tokens = _checked_group(
            model, group, drafts[start : start + batch_size], max_new_tokens, device, margin
        )
        if tokens is None:
            steps = list(greedy_steps(model, group, max_new_tokens, device=device))
            tokens = [list(column) for column in zip(*steps, strict=True)]
        results += tokens
    return results


def _clear(logits: Any, margin: float) -> Any:
    """Per row of ``logits`` [..., vocab]: whether its argmax wins by the margin."""
    top = logits.topk(2, dim=-1).values
    scale = logits.abs().amax(dim=-1).clamp(min=1e-30)
    return (top[..., 0] - top[..., 1]) >= margin * scale


def _checked_group(
    model: Any,
    prompts: Sequence[Sequence[int]],
    drafts: Sequence[Sequence[int]],
    count: int,
    device: str,
    margin: float,
) -> list[list[int]] | None:
    """One group's greedy tokens from its drafts, or None at a near-tie."""
    if count <= 0:
        return [[] for _ in prompts]
    drafts = [[int(t) for t in d] for d in drafts]  # the same vocabulary: verify's premise
    known = min(min(len(d) for d in drafts), count - 1)  # draft tokens fed to every row
    logits = _teacher_forced(model, prompts, [d[:known] for d in drafts], known + 1, device)
    tokens, clear = logits.argmax(dim=-1).tolist(), _clear(logits, margin).tolist()
    taken: list[list[int]] = []
    for row, draft in enumerate(drafts):
        accepted: list[int] = []
        for step in range(known + 1):
            if not clear[row][step]:
                return None
            accepted.append(tokens[row][step])
            if step == known or tokens[row][step] != draft[step]:
                break
        taken.append(accepted)
    return _decode_rest(model, prompts, taken, count, device, margin)


def forced_rows(model: Any, sequences: Sequence[Sequence[int]], *, device: str) -> list[Any]:
    """Each sequence's teacher-forced logits [len, vocab] (float32), all the sequences in one
    forward, left-padded and positioned as :func:`greedy_steps` does."""
    longest = max(len(s) for s in sequences)
    logits = _teacher_forced(model, sequences, [[] for _ in sequences], longest, device)
    return [logits[row, longest - len(s) :] for row, s in enumerate(sequences)]


def _teacher_forced(
    model: Any,
    prompts: Sequence[Sequence[int]],
    drafts: Sequence[Sequence[int]],
    last: int,
    device: str,
) -> Any:
    """Logits [batch, last, vocab] of the last ``last`` positions of prompt + draft, the
    sequences left-padded and positioned as :func:`greedy_steps` does."""
    import torch

    ids, mask, positions = _padded(
        [list(p) + list(d) for p, d in zip(prompts, drafts, strict=True)], device
    )
    takes_positions, takes_keep = _accepts(model)
    extra = {"position_ids": positions} if takes_positions else {}
    keep = {"logits_to_keep": last} if takes_keep else {}
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, use_cache=False, **keep, **extra)
    return out.logits[:, -last:].float()


def _decode_rest(
    model: Any,
    prompts: Sequence[Sequence[int]],
    taken: list[list[int]],
    count: int,
    device: str,
    margin: float,
) -> list[list[int]] | None:
    """Rows with fewer than ``count`` tokens decoded on from prompt + their own tokens,
    together; None at a near-tie."""
    rows = [row for row, tokens in enumerate(taken) if len(tokens) < count]
    if not rows:
        return taken
    prefixes = [list(prompts[row]) + taken[row] for row in rows]
    steps = count - min(len(taken[row]) for row in rows)
    for token, logits in step_logits(model, prefixes, steps, device=device):
        clear, new = _clear(logits.float(), margin).tolist(), token.tolist()
        for index, row in enumerate(rows):
            if len(taken[row]) < count:
                if not clear[index]:
                    return None
                taken[row].append(new[index])
    return taken
