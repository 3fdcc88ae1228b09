"""What a benchmark sends: requests grouped into scenarios of fixed-size batches.

Two sources build the same :class:`Workload`:

* :func:`synthetic_workload` — every combination of batch size × prompt length × output
  length, prompts of random token ids from a seeded generator (the same seed gives the same
  ids on every machine, so two runtimes see identical requests);
* :func:`load_dataset` — a trtllm-bench JSONL file, one request per line:
  ``{"task_id": ..., "prompt": "..." | "input_ids": [...], "output_tokens": N}``, checked
  strictly (the error names the line); requests are batched in file order.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trtllm_forge.errors import recipe_error

# Low ids are special tokens in most vocabularies (pad, bos, eos, unk); random prompts avoid
# them so a model never sees an end-of-text marker in the middle of a prompt.
FIRST_ORDINARY_ID = 3
DATASET_KEYS = frozenset({"task_id", "prompt", "input_ids", "output_tokens"})


@dataclass(frozen=True)
class Request:
    """One generation request: a prompt's token ids and how many tokens to generate."""

    task_id: str
    input_ids: tuple[int, ...]
    output_tokens: int


@dataclass(frozen=True)
class Scenario:
    """Requests run as consecutive batches of ``batch_size`` (the last may be smaller)."""

    name: str
    batch_size: int
    requests: tuple[Request, ...]

    def batches(self) -> list[tuple[Request, ...]]:
        size = self.batch_size
        return [self.requests[i : i + size] for i in range(0, len(self.requests), size)]


@dataclass(frozen=True)
class Workload:
    """Every scenario a benchmark runs, and how they were made (recorded in the report)."""

    kind: str  # "synthetic" | "dataset"
    scenarios: tuple[Scenario, ...]
    seed: int | None = None
    source: str | None = None  # the dataset file


def synthetic_workload(
    *,
    batch_sizes: Sequence[int],
    input_lens: Sequence[int],
    output_lens: Sequence[int],
    vocab_size: int,
    batches_per_scenario: int = 2,
    seed: int = 0,
) -> Workload:
    """One scenario per (batch size, prompt length, output length); each holds
    ``batches_per_scenario`` full batches of random prompts."""
    for label, values in (
        ("batch size", batch_sizes),
        ("input length", input_lens),
        ("output length", output_lens),
    ):
        if not values or any(v < 1 for v in values):
            raise recipe_error(f"every {label} must be at least 1 (got {list(values)})")
    if batches_per_scenario < 1:
        raise recipe_error(f"batches per scenario must be at least 1 (got {batches_per_scenario})")
    if vocab_size <= FIRST_ORDINARY_ID:
        raise recipe_error(f"a vocabulary of {vocab_size} ids is too small for random prompts")
    rng = np.random.default_rng(seed)
    scenarios = []
    for batch in batch_sizes:
        for isl in input_lens:
            for osl in output_lens:
                count = batch * batches_per_scenario
                ids = rng.integers(FIRST_ORDINARY_ID, vocab_size, size=(count, isl))
                requests = tuple(
                    Request(f"bs{batch}-isl{isl}-osl{osl}-{n}", tuple(ids[n].tolist()), osl)
                    for n in range(count)
                )
                scenarios.append(Scenario(f"bs{batch} isl{isl} osl{osl}", batch, requests))
    return Workload("synthetic", tuple(scenarios), seed=seed)


def load_dataset(
    path: Path,
    *,
    batch_sizes: Sequence[int],
    tokenize: Callable[[str], list[int]] | None = None,
) -> Workload:
    """Read a trtllm-bench JSONL dataset; one scenario per batch size over all its requests.

    ``tokenize`` turns a ``prompt`` string into ids; without it a prompt line is an error
    (the caller knows no tokenizer). Any malformed line is a recipe error naming the line.
    """
    if not batch_sizes or any(b < 1 for b in batch_sizes):
        raise recipe_error(f"every batch size must be at least 1 (got {list(batch_sizes)})")
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise recipe_error(
            f"dataset {path} cannot be read: {exc}",
            hint="--dataset names a UTF-8 JSONL file, one request per line",
        ) from None
    requests = [
        _request(line, f"{path}:{number}", tokenize)
        for number, line in enumerate(text.splitlines(), start=1)
        if line.strip()
    ]
    if not requests:
        raise recipe_error(f"dataset {path} holds no requests")
    seen: set[str] = set()
    for request in requests:
        if request.task_id in seen:
            raise recipe_error(f"dataset {path}: task_id {request.task_id!r} appears twice")
        seen.add(request.task_id)
    scenarios = tuple(Scenario(f"bs{b} dataset", b, tuple(requests)) for b in batch_sizes)
    return Workload("dataset", scenarios, source=str(path))


def _request(line: str, where: str, tokenize: Callable[[str], list[int]] | None) -> Request:
    hint = 'each line: {"task_id": 1, "prompt": "..." or "input_ids": [..], "output_tokens": 64}'

    def bad(message: str) -> Exception:
        return recipe_error(f"dataset line {where}: {message}", hint=hint)

    try:
        doc: Any = json.loads(line)
    except json.JSONDecodeError as exc:
        raise bad(f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(doc, dict):
        raise bad("a request must be a JSON object")
    unknown = sorted(set(doc) - DATASET_KEYS)
    if unknown:
        raise bad(f"unknown key(s) {', '.join(unknown)}")
    task_id = doc.get("task_id")
    if isinstance(task_id, bool) or not isinstance(task_id, int | str):
        raise bad("task_id must be an integer or a string")
    output = doc.get("output_tokens")
    if isinstance(output, bool) or not isinstance(output, int) or output < 1:
        raise bad("output_tokens must be an integer of at least 1")
    if ("prompt" in doc) == ("input_ids" in doc):
        raise bad("give exactly one of prompt and input_ids")
    return Request(str(task_id), tuple(_input_ids(doc, bad, tokenize)), output)


def _input_ids(
    doc: dict[str, Any],
    bad: Callable[[str], Exception],
    tokenize: Callable[[str], list[int]] | None,
) -> list[int]:
    if "input_ids" in doc:
        ids = doc["input_ids"]
        if (
            not isinstance(ids, list)
            or not ids
            or any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in ids)
        ):
            raise bad("input_ids must be a non-empty list of non-negative integers")
        return ids
    prompt = doc["prompt"]
    if not isinstance(prompt, str) or not prompt:
        raise bad("prompt must be a non-empty string")
    if tokenize is None:
        raise bad("a prompt needs a tokenizer; give input_ids or name a tokenizer (--tokenizer)")
    ids = tokenize(prompt)
    if not ids:
        raise bad("the prompt tokenizes to no tokens")
    return ids
