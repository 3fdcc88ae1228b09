"""Teacher-forced scoring in bounded memory: logits block by block, metrics accumulated.

A scored sequence is cut into independent context windows of ``max_seq_len`` tokens (the
engine cannot see further back) and each window into blocks of at most ``block`` tokens,
fed through the KV cache; only one block's logits ([block, vocab], float32) exist at a
time. Memory therefore does not grow with the text: the block is sized from the
vocabulary so a 152k-token vocabulary and a 256-token one both stay near
``BLOCK_BYTES`` per logits array.

The reference runs first and writes its blocks to an unnamed spill file (raw float32, in
the order the engine will read them back); it is then freed and the engine runs, so the
two models' float32 weights are never resident together. :class:`SequenceScore`
accumulates every metric per slice of rows from float32 logits (per-row sums in float64)
— never the whole text's full-vocabulary logits, never float64 logit arrays.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Any

import numpy as np

from trtllm_forge.engine.runtime import OrtEngine, score_windows

# One block's float32 logits, and the rows of a block turned into probabilities at once.
# Measured on a 0.5B model (bench/verify_memory.py): with the engine loaded, 64/16 MiB put
# ~0.4 GB of transient buffers on top of its weights, 16/4 MiB cost no measurable speed.
# The reference phase peaks lower (its weights are file-backed, then freed) and runs
# transformers, which is slower in short blocks, so it gets the larger budget.
BLOCK_BYTES = 16 * 2**20
REFERENCE_BLOCK_BYTES = 64 * 2**20
SLICE_BYTES = 4 * 2**20


def block_tokens(vocab_size: int, limit: int, budget: int = BLOCK_BYTES) -> int:
    """Tokens per block: within ``budget`` bytes of logits and ``limit`` (the engine's
    max_input_len; for the reference, the window: a small model is scored in one pass)."""
    return max(1, min(limit, budget // (4 * vocab_size)))


def blocks(length: int, window: int, block: int) -> list[tuple[int, int, int]]:
    """(window start, block start, block stop) for every block, in scoring order."""
    return [
        (start, piece, min(piece + block, stop))
        for start, stop in score_windows(length, window)
        for piece in range(start, stop, block)
    ]


def reference_blocks(
    model: Any, tokens: Sequence[int], window: int, block: int
) -> Iterator[np.ndarray]:
    """The transformers reference's logits, block by block ([rows, vocab] float32)."""
    import torch

    cache = None
    with torch.no_grad():
        for start, piece, stop in blocks(len(tokens), window, block):
            if piece == start:
                cache = None  # a new window sees nothing before it
            ids = torch.tensor([list(tokens[piece:stop])])
            out = model(input_ids=ids, past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            yield out.logits[0].float().numpy()


def engine_blocks(
    engine: OrtEngine, tokens: Sequence[int], window: int, block: int
) -> Iterator[np.ndarray]:
    """The engine's logits for the same blocks, through its KV cache."""
    cache = engine.new_cache(1)
    for start, piece, stop in blocks(len(tokens), window, block):
        if piece == start:
            cache = engine.new_cache(1)
        ids = np.asarray([tokens[piece:stop]], np.int64)
        mask = np.ones((1, stop - start), np.int64)
        positions = np.arange(piece - start, stop - start, dtype=np.int64)[None]
        yield engine.forward(ids, mask, positions, cache)[0].astype(np.float32, copy=False)


def return_freed_memory() -> None:
    """Ask glibc to give freed heap pages back to the system (a no-op elsewhere), so the
    reference's freed buffers do not stay in the process's RSS while the engine runs."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name is None:
        return
    try:
        ctypes.CDLL(name).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        return


def spill(logits: np.ndarray, file: IO[bytes]) -> None:
    file.write(np.ascontiguousarray(logits, dtype=np.float32).tobytes())


class Unspill:
    """Reads spilled rows back in order into one reused buffer (no allocation per block)."""

    def __init__(self, file: IO[bytes], vocab: int) -> None:
        self.file, self.vocab = file, vocab
        self.buffer = np.empty((0, vocab), np.float32)

    def read(self, rows: int) -> np.ndarray:
        if len(self.buffer) < rows:
            self.buffer = np.empty((rows, self.vocab), np.float32)
        view = self.buffer[:rows]
        if self.file.readinto(view.data.cast("B")) != view.nbytes:  # type: ignore[attr-defined]
            raise RuntimeError("verify spill file ended early")  # a bug, not a user error
        return view


def log_normalizers(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row: (softmax probabilities as float32, log-sum-exp as a float64 scalar).

    The [rows, vocab] arrays stay float32; only the per-row sums are accumulated and kept
    in float64, which is what makes a float32 KL of two nearly equal models accurate: the
    normalizers are subtracted as exact scalars instead of being rounded into every entry.
    """
    peak = logits.max(axis=-1, keepdims=True)
    exp = np.exp(logits - peak)
    total = exp.sum(axis=-1, dtype=np.float64)
    exp *= (1.0 / total).astype(np.float32)[:, None]
    return exp, peak[:, 0].astype(np.float64) + np.log(total)


@dataclass
class SequenceScore:
    """Running metrics of one scored sequence (a text or a prompt)."""

    tokens: Sequence[int]
    kl_sum: float = 0.0
    kl_max: float = 0.0
    rows: int = 0
    top1_same: int = 0
    nll_reference: float = 0.0
    nll_engine: float = 0.0
    targets: int = 0
    max_abs_diff: float = 0.0
    max_abs_reference: float = 0.0

    def add(self, start: int, reference: np.ndarray, engine: np.ndarray) -> None:
        """Rows ``start``.. of the sequence: reference and engine logits [rows, vocab]."""
        step = max(1, SLICE_BYTES // (4 * reference.shape[1]))
        for offset in range(0, len(reference), step):
            self._add_slice(
                start + offset,
                reference[offset : offset + step],
                engine[offset : offset + step],
            )

    def _add_slice(self, start: int, reference: np.ndarray, engine: np.ndarray) -> None:
        self.max_abs_diff = max(self.max_abs_diff, float(np.abs(reference - engine).max()))
        self.max_abs_reference = max(self.max_abs_reference, float(np.abs(reference).max()))
        self.top1_same += int((reference.argmax(axis=-1) == engine.argmax(axis=-1)).sum())
        p, lse_p = log_normalizers(reference)
        _, lse_q = log_normalizers(engine)
        # KL(p || q) = sum p * (x - y) - (lse_x - lse_y), since log p = x - lse_x.
        weighted = (p * (reference - engine)).sum(axis=-1, dtype=np.float64)
        kl = np.maximum(weighted - (lse_p - lse_q), 0.0)  # tiny negatives are rounding
        self.kl_sum += float(kl.sum())
        self.kl_max = max(self.kl_max, float(kl.max()))
        self.rows += len(kl)
        # Row i predicts token i + 1; the sequence's last row predicts nothing.
        count = min(len(kl), len(self.tokens) - 1 - start)
        if count > 0:
            targets = np.asarray(self.tokens[start + 1 : start + 1 + count], np.int64)
            picked = np.arange(count)
            self.nll_reference += float((lse_p[:count] - reference[picked, targets]).sum())
            self.nll_engine += float((lse_q[:count] - engine[picked, targets]).sum())
            self.targets += count

    @property
    def max_relative_logit_diff(self) -> float:
        return self.max_abs_diff / (self.max_abs_reference or 1.0)
