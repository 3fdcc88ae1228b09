"""The one-token decode step of a shared-buffer (ort profile) engine as a kept, fixed-address
binding, so that ONNX Runtime's CUDA provider can capture it once as a CUDA graph and replay
it every step.

A decode step of a small model is hundreds of kernels that each take microseconds on an
H200: launching them one by one from the host costs about as much as running them
(docs/engine-performance.md). A CUDA graph replays all of them with one launch, but only
if every input and output sits at the address it had when the graph was captured and has
the same shape. So the step keeps its own device buffers for ``input_ids`` [batch, 1],
``attention_mask`` and the logits, bound once with the cache's KV buffers; each step only
copies the new ids and mask into them (``OrtValue.update_inplace``).

The mask is static: ``max_seq_len`` wide, row b's first ``count_b`` slots set. The graph
reads only its per-row count (``seqlens_k`` = count − 1) and its width (GroupQueryAttention's
``total_sequence_length``, here always the cache's slot count), so a mask padded with zeros
to the cache's width means the same sequence as the growing one (onnxruntime-genai feeds
its captured decode steps the same way). Each cache has its own graph id: a graph holds
the addresses of the KV buffers it was captured with.

On the CPU the same step runs without a graph (the run option is ignored there); the
tests use that to check the static mask gives the tokens of the growing one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from trtllm_forge.engine.onnx.names import (
    ATTENTION_MASK,
    INPUT_IDS,
    LOGITS,
    PAST_PREFIX,
    PRESENT_PREFIX,
)

TOKENS = "tokens"
GRAPH_ID = "gpu_graph_id"  # ONNX Runtime's run-config key for the CUDA graph annotation
NO_GRAPH = -1  # the annotation that runs without capturing or replaying


def bind_shared_cache(binding: Any, cache_values: dict[str, Any]) -> None:
    """Bind each KV buffer as both its ``past_key_values.*`` input and its ``present.*``
    output: the attention writes the new keys in place."""
    for name, value in cache_values.items():
        binding.bind_ortvalue_input(name, value)
        binding.bind_ortvalue_output(name.replace(PAST_PREFIX, PRESENT_PREFIX, 1), value)


def graph_run_options(ort: Any, graph_id: int, enabled: bool) -> Any:
    """Run options naming the CUDA graph of a run (None when the session has no graphs)."""
    if not enabled:
        return None
    options = ort.RunOptions()
    options.add_run_config_entry(GRAPH_ID, str(graph_id))
    return options


@dataclass
class GraphStep:
    """One cache's decode step: fixed buffers, a kept binding, the greedy argmax after it."""

    session: Any
    binding: Any
    run_options: Any
    ids: Any  # OrtValue int64 [batch, 1] on the device
    mask: Any  # OrtValue int64 [batch, max_seq_len] on the device
    argmax: Any  # the ArgMax session and its kept binding
    argmax_binding: Any
    tokens: Any  # OrtValue int64 [batch, 1] on the host
    slots: np.ndarray  # 0 .. max_seq_len - 1

    @classmethod
    def make(
        cls,
        ort: Any,
        session: Any,
        argmax: Any,
        cache_values: dict[str, Any],
        *,
        device: str,
        batch: int,
        max_seq_len: int,
        logits: tuple[int, Any],
        graph_id: int,
    ) -> GraphStep:
        make = ort.OrtValue.ortvalue_from_shape_and_type
        ids = make((batch, 1), np.int64, device, 0)
        mask = make((batch, max_seq_len), np.int64, device, 0)
        vocab, dtype = logits
        out = make((batch, 1, vocab), dtype, device, 0)
        binding = session.io_binding()
        binding.bind_ortvalue_input(INPUT_IDS, ids)
        binding.bind_ortvalue_input(ATTENTION_MASK, mask)
        bind_shared_cache(binding, cache_values)
        binding.bind_ortvalue_output(LOGITS, out)
        argmax_binding = argmax.io_binding()
        argmax_binding.bind_ortvalue_input(LOGITS, out)
        tokens = make((batch, 1), np.int64, "cpu", 0)
        argmax_binding.bind_ortvalue_output(TOKENS, tokens)
        return cls(
            session,
            binding,
            graph_run_options(ort, graph_id, True),
            ids,
            mask,
            argmax,
            argmax_binding,
            tokens,
            np.arange(max_seq_len, dtype=np.int64),
        )

    def step(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """Greedy ids [batch, 1] after one token per row; ``attention_mask`` is the growing
        mask (row b's count of tokens so far is what it says)."""
        counts = attention_mask.sum(axis=1, dtype=np.int64)
        self.ids.update_inplace(np.ascontiguousarray(input_ids, dtype=np.int64))
        self.mask.update_inplace((self.slots[None] < counts[:, None]).astype(np.int64))
        self.session.run_with_iobinding(self.binding, self.run_options)
        self.argmax.run_with_iobinding(self.argmax_binding)
        return np.array(self.tokens.numpy(), dtype=np.int64)
