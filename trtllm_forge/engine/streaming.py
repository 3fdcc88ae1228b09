"""Teacher-forced scoring in bounded memory: logits block by block, metrics accumulated.

A scored sequence is cut into independent context windows of ``max_seq_len`` tokens (the
engine cannot see further back) and each window into blocks of at most ``block`` tokens,
fed through the KV cache; only one block's logits ([block, vocab], float32) exist at a
time. Memory therefore does not grow with the text: the block is sized from the
vocabulary so a 152k-token vocabulary and a 256-token one both stay near
``BLOCK_BYTES`` per logits array.

The engine (the candidate) runs first and writes its blocks to an unnamed spill file (raw
float32, in the order the reference will read them back); it is then freed and the
reference runs, so the two models' float32 weights are never resident together. :class:`SequenceScore`
accumulates every metric per slice of rows from float32 logits (per-row sums in float64)
— never the whole text's full-vocabulary logits, never float64 logit arrays.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import IO, Any

import numpy as np

from trtllm_forge.engine.runtime import OrtEngine, score_windows

# One block's float32 logits (the engine's; the reference's), and the rows of a slice
# turned into probabilities at once. Every engine block is one ONNX Runtime run, and every
# run reads all the engine's weights again: at a 152k vocabulary 16 MiB was 27 rows, a
# memory-bound run per 27 tokens. 64 MiB (110 rows) took the engine's logits phase of the
# 0.5B bench (bench/verify_memory.py, 2,048 tokens, 2 cores, quiet) from 20.7 to 16.9 s at a
# verify peak of 3.30 GB (3.17 before; 1.67x the checkpoint); 128 MiB was no faster and
# peaked at 3.51 GB. The reference runs transformers, also slower in short blocks (on the
# 4-layer profiling shape, `--layers 4`, 256 MiB blocks took about a fifth less reference
# CPU time than 64 MiB at 1,024 tokens), and has no engine beside it: ~440 tokens at 152k.
BLOCK_BYTES = 64 * 2**20
REFERENCE_BLOCK_BYTES = 256 * 2**20
SLICE_BYTES = 4 * 2**20


def block_tokens(vocab_size: int, limit: int, budget: int = BLOCK_BYTES) -> int:
    """Tokens per block: within ``budget`` bytes of logits and ``limit`` (the engine's
    max_input_len; for the reference, the window: a small model is scored in one pass)."""
    return max(1, min(limit, budget // (4 * vocab_size)))


def batches(lengths: Sequence[int], rows: int, most: int = 1 << 30) -> list[range]:
    """Consecutive sequences to score in one left-padded forward: as many as keep the padded
    batch (count x longest) within ``rows``, at most ``most``; one longer than ``rows`` alone."""
    groups: list[range] = []
    start = longest = 0
    for index, length in enumerate(lengths):
        count = index - start + 1
        if index > start and (count > most or count * max(longest, length) > rows):
            groups.append(range(start, index))
            start, longest = index, 0
        longest = max(longest, length)
    if lengths:
        groups.append(range(start, len(lengths)))
    return groups


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

    device = next(model.parameters()).device  # forge's native models have no .device
    cache = None
    with torch.no_grad():
        for start, piece, stop in blocks(len(tokens), window, block):
            if piece == start:
                cache = None  # a new window sees nothing before it
            ids = torch.tensor([list(tokens[piece:stop])], device=device)
            out = model(input_ids=ids, past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            yield out.logits[0].float().cpu().numpy()


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


def engine_prompts(
    engine: OrtEngine, prompts: Sequence[Sequence[int]], window: int, block: int
) -> Iterator[Iterable[np.ndarray]]:
    """Per prompt, its logits block by block: prompts that fit scored several per run,
    left-padded as the engine's generate() pads them (one pass over the weights for a batch
    instead of one each: 8 prompts of 16 tokens took 1.05 s one by one on the 0.5B bench,
    0.6 s in two runs); one at a time where the engine does not take left padding (the ort
    profile decodes right-padded) or keeps its cache on a device."""
    if engine.profile == "ort" or engine.bound is not None:
        for prompt in prompts:
            yield engine_blocks(engine, prompt, window, block)
        return
    for group in batches([len(p) for p in prompts], block, engine.max_batch_size):
        if len(group) == 1:
            yield engine_blocks(engine, prompts[group[0]], window, block)
            continue
        together = [prompts[index] for index in group]
        longest = max(len(p) for p in together)
        ids = np.zeros((len(together), longest), np.int64)
        mask = np.zeros((len(together), longest), np.int64)
        for row, prompt in enumerate(together):
            ids[row, longest - len(prompt) :] = prompt
            mask[row, longest - len(prompt) :] = 1
        positions = np.maximum(mask.cumsum(axis=1) - 1, 0)
        logits = engine.forward(ids, mask, positions, engine.new_cache(len(together)))
        for row, prompt in enumerate(together):
            yield [logits[row, longest - len(prompt) :].astype(np.float32, copy=False)]


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


def release_device_memory(device: str) -> None:
    """After a model is deleted: its freed memory back to the system (and, on CUDA, torch's
    cached blocks back to the driver, for ONNX Runtime's allocator to use)."""
    return_freed_memory()
    if device == "cuda":
        import torch

        torch.cuda.empty_cache()


def spill(logits: np.ndarray, file: IO[bytes]) -> None:
    # The array's own buffer, not a tobytes() copy of it (~1 s per GB of logits).
    file.write(np.ascontiguousarray(logits, dtype=np.float32).data)


def spill_each(blocks: Iterable[np.ndarray], file: IO[bytes]) -> Iterator[np.ndarray]:
    """``blocks``, each also spilled to ``file`` in order, on a worker thread while the next
    block is computed (the caller must not modify a block it was given).

    Writing a GB of logits is kernel time: new page-cache pages, filled by copying (3.5 s
    for the 0.5B bench's 1.3 GB on the development machine's VM). Both the write and the
    model's run release the GIL, so the write overlaps the next block's run; at most one
    write is pending, so one more block's logits are alive than when writing in line.
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="verify-spill") as worker:
        pending: Future[None] | None = None
        for block in blocks:
            if pending is not None:
                pending.result()  # in order, and a failed write raises here
            pending = worker.submit(spill, block, file)
            yield block
        if pending is not None:
            pending.result()


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


def _exp_sums(logits: np.ndarray, peak: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Per row: sum(exp(logits - peak)) accumulated in float64; ``out`` (float32, the
    shape of ``logits``) is left holding the unnormalized exponentials."""
    np.subtract(logits, peak[:, None], out=out)
    np.exp(out, out=out)
    return out.sum(axis=-1, dtype=np.float64)


@dataclass
class SequenceScore:
    """Running metrics of one scored sequence (a text or a prompt).

    Every [rows, vocab] array stays float32; only per-row sums are accumulated and kept in
    float64, which is what makes a float32 KL of two nearly equal models accurate: the
    normalizers are subtracted as exact scalars instead of being rounded into every entry.
    Two float32 scratch arrays of one slice are reused, so a slice costs about a dozen
    passes over its logits and no allocation of logits' size. The rows given to
    :meth:`add` are split among ``threads`` threads (numpy's loops release the GIL; verify
    gives the reference's thread count: the metrics run between its forwards, on its cores).
    """

    tokens: Sequence[int]
    threads: int = 1
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
        share = max(step, -(-len(reference) // max(1, self.threads)))  # rows per thread
        offsets = range(0, len(reference), share)
        if len(offsets) <= 1:
            self._add_rows(start, reference, engine, step)
            return
        parts = [SequenceScore(self.tokens) for _ in offsets]
        with ThreadPoolExecutor(max_workers=len(parts)) as pool:
            futures = [
                pool.submit(
                    part._add_rows, start + at, reference[at:][:share], engine[at:][:share], step
                )
                for part, at in zip(parts, offsets, strict=True)
            ]
            for future in futures:
                future.result()
        for part in parts:
            self._merge(part)

    def _merge(self, other: SequenceScore) -> None:
        self.kl_sum += other.kl_sum
        self.kl_max = max(self.kl_max, other.kl_max)
        self.rows += other.rows
        self.top1_same += other.top1_same
        self.nll_reference += other.nll_reference
        self.nll_engine += other.nll_engine
        self.targets += other.targets
        self.max_abs_diff = max(self.max_abs_diff, other.max_abs_diff)
        self.max_abs_reference = max(self.max_abs_reference, other.max_abs_reference)

    def _add_rows(self, start: int, reference: np.ndarray, engine: np.ndarray, step: int) -> None:
        scratch = np.empty((2, min(step, len(reference)), reference.shape[1]), np.float32)
        for offset in range(0, len(reference), step):
            ref = reference[offset : offset + step]
            rows = len(ref)
            self._add_slice(start + offset, ref, engine[offset : offset + step], scratch[:, :rows])

    def _add_slice(
        self, start: int, reference: np.ndarray, engine: np.ndarray, scratch: np.ndarray
    ) -> None:
        diff, work = scratch
        picked = np.arange(len(reference))
        top_p, top_q = reference.argmax(axis=-1), engine.argmax(axis=-1)
        peak_p, peak_q = reference[picked, top_p], engine[picked, top_q]
        self.top1_same += int((top_p == top_q).sum())
        self.max_abs_reference = max(
            self.max_abs_reference, float(peak_p.max()), -float(reference.min())
        )
        np.subtract(reference, engine, out=diff)
        self.max_abs_diff = max(self.max_abs_diff, float(diff.max()), -float(diff.min()))
        total_q = _exp_sums(engine, peak_q, work)
        total_p = _exp_sums(reference, peak_p, work)  # work: the reference's exp, unnormalized
        work *= diff
        # KL(p || q) = sum p * (x - y) - (lse_x - lse_y), since log p = x - lse_x.
        weighted = work.sum(axis=-1, dtype=np.float64) / total_p
        lse_p = peak_p.astype(np.float64) + np.log(total_p)
        lse_q = peak_q.astype(np.float64) + np.log(total_q)
        kl = np.maximum(weighted - (lse_p - lse_q), 0.0)  # tiny negatives are rounding
        self.kl_sum += float(kl.sum())
        self.kl_max = max(self.kl_max, float(kl.max()))
        self.rows += len(kl)
        # Row i predicts token i + 1; the sequence's last row predicts nothing.
        count = min(len(kl), len(self.tokens) - 1 - start)
        if count > 0:
            targets = np.asarray(self.tokens[start + 1 : start + 1 + count], np.int64)
            rows = picked[:count]
            self.nll_reference += float((lse_p[:count] - reference[rows, targets]).sum())
            self.nll_engine += float((lse_q[:count] - engine[rows, targets]).sum())
            self.targets += count

    @property
    def max_relative_logit_diff(self) -> float:
        return self.max_abs_diff / (self.max_abs_reference or 1.0)


def cut(blocks: Iterable[np.ndarray], lengths: Sequence[int]) -> Iterator[np.ndarray]:
    """The rows of ``blocks`` cut at their own ends and at the ends of consecutive pieces of
    ``lengths`` rows (the candidate's blocks): views, never copies, none across a candidate
    block's end (a candidate block that straddles two of ``blocks`` comes as two pieces)."""
    ends = itertools.accumulate(lengths)
    end = next(ends, None)
    row = 0  # rows before ``block``
    for block in blocks:
        offset = 0
        while offset < len(block):
            if end is None:
                raise RuntimeError("verify: more reference rows than candidate rows")  # a bug
            stop = min(len(block), end - row)
            yield block[offset:stop]
            offset = stop
            if row + stop == end:
                end = next(ends, None)
        row += len(block)
    if end is not None:
        raise RuntimeError("verify: fewer reference rows than candidate rows")  # a bug
