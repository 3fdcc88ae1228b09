"""``forge run``: a prompt through the tokenizer, greedy tokens streamed back as text."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from trtllm_forge.bench.runners.base import Runner
from trtllm_forge.errors import recipe_error


def stream_text(runner: Runner, tokenizer: Any, prompt: str, max_new_tokens: int) -> Iterator[str]:
    """Yield the text of each new token as it is decoded; stop after the end-of-sequence
    token. Pieces come from decoding everything so far and cutting what was already shown,
    so characters split across tokens (UTF-8, SentencePiece spaces) come out whole."""
    ids = list(tokenizer(prompt)["input_ids"])
    if not ids:
        raise recipe_error("the prompt tokenizes to no tokens")
    limits = runner.limits
    if limits.max_input_len is not None and len(ids) > limits.max_input_len:
        raise recipe_error(
            f"the prompt is {len(ids)} tokens, longer than max_input_len {limits.max_input_len}",
            hint="shorten the prompt or rebuild with a larger build.max_input_len",
        )
    if limits.max_seq_len is not None:
        max_new_tokens = min(max_new_tokens, limits.max_seq_len - len(ids))
    if max_new_tokens < 1:
        raise recipe_error(
            f"no room to generate: the prompt fills max_seq_len {limits.max_seq_len}"
        )
    eos = tokenizer.eos_token_id
    generated: list[int] = []
    shown = ""
    for step in runner.stream([ids], max_new_tokens):
        generated.append(step[0])
        if step[0] == eos:
            break
        text = tokenizer.decode(generated, skip_special_tokens=True)
        if text.endswith("\ufffd"):  # half a character: wait for the next token
            continue
        yield text[len(shown) :]
        shown = text
