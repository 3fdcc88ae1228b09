"""A single-rank engine graph run through ONNX Runtime's IO binding, so the KV cache stays
where the session computes (GPU memory on CUDA) instead of passing through numpy.

Two cache disciplines, chosen by the graph:

* ``shared`` (the ort profile's GroupQueryAttention): one buffer per layer and kind of
  ``max_seq_len`` slots, bound as both ``past_key_values.*`` and ``present.*``; the
  kernel writes the new keys in place (onnxruntime-genai's past_present_share_buffer).
  Nothing is copied between steps.
* chained (the portable graph): ``present.*`` stays on the device as ORT allocates it
  and becomes the next step's ``past_key_values.*``.

Only ``logits`` comes back to the host each step, or on CUDA only the greedy token ids:
:meth:`BoundSession.tokens` takes the argmax where the logits are (a one-node ArgMax
session on the same device), since copying a prefill's logits to the host and converting
them there cost more than the forward itself (SmolLM2 float16, batch 8, 64-token prompts:
100 MB of logits a prefill; docs/engine-performance.md).

Shared caches are pooled by batch size (:meth:`BoundSession.new_cache` /
:meth:`BoundSession.release`): a decode reuses the buffers of the last one of its batch
size instead of uploading zeros inside its time to first token. Stale slots are never
read: the attention reads row b's first ``seqlens_k[b] + 1`` slots, all written by the
current sequence. With ``graphs`` (CUDA, the shared discipline) each cache's one-token
steps replay a CUDA graph (engine/graph_step.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from trtllm_forge.engine.graph_step import (
    NO_GRAPH,
    TOKENS,
    GraphStep,
    bind_shared_cache,
    graph_run_options,
)
from trtllm_forge.engine.onnx.names import (
    ATTENTION_MASK,
    INPUT_IDS,
    LOGITS,
    PAST_PREFIX,
    PRESENT_PREFIX,
)

CUDA = "cuda"


@dataclass
class BoundCache:
    """Per-layer past keys/values as OrtValues (on the session's device).

    With shared buffers the binding is made once per cache and kept: the buffers never
    move, so each step rebinds only its inputs and its logits buffer. Binding every
    buffer anew each step cost more host time than a decode step of a 1B model takes on
    an H200 (docs/engine-performance.md, first GPU session)."""

    values: dict[str, Any]
    binding: Any = None  # the session's IO binding with the buffers bound (shared only)
    buffers: dict[tuple[Any, ...], Any] = field(default_factory=dict)  # outputs by shape
    graph: GraphStep | None = None  # the one-token step's CUDA graph (graphs only)


class BoundSession:
    """One InferenceSession of a single-segment rank graph, run with IO binding."""

    def __init__(
        self,
        ort: Any,
        session: Any,
        *,
        device: str,
        shared: bool,
        cache_shape: tuple[int, int],
        max_seq_len: int,
        graphs: bool = False,
    ) -> None:
        self._ort, self.session = ort, session
        self.device = device
        self.shared = shared
        self._pool: dict[int, list[BoundCache]] = {}
        self._graph_ids = iter(range(1, 1 << 30))  # ORT's graph annotation ids; -1 = none
        self.kv_heads, self.head_size = cache_shape
        self.max_seq_len = max_seq_len
        self.inputs = {i.name for i in session.get_inputs()}
        self.past_names = sorted(n for n in self.inputs if n.startswith(PAST_PREFIX))
        dtype = next(i.type for i in session.get_inputs() if i.name.startswith(PAST_PREFIX))
        self.cache_dtype = np.float16 if "float16" in dtype else np.float32
        (logits,) = [o for o in session.get_outputs() if o.name == LOGITS]
        self.logits_dtype = np.float16 if "float16" in logits.type else np.float32
        self.vocab = logits.shape[-1]
        self._argmax: Any = None  # the ArgMax session, made on first use
        # ``graphs``: the session was made with enable_cuda_graph, so every run must name
        # its graph (uncaptured ones too); steps replay one only with fixed logits shapes.
        self._annotated = graphs
        self.graphs = graphs and shared and isinstance(self.vocab, int)

    def new_cache(self, batch: int) -> BoundCache:
        """A cache for ``batch`` rows: a released one of that size if the pool has one."""
        if self._pool.get(batch):
            return self._pool[batch].pop()
        slots = self.max_seq_len if self.shared else 0
        shape = (batch, self.kv_heads, slots, self.head_size)
        return BoundCache({name: self._zeros(shape) for name in self.past_names})

    def release(self, cache: BoundCache) -> None:
        """Give a finished sequence's shared buffers back for the next of its batch size."""
        if self.shared:
            batch = next(iter(cache.values.values())).shape()[0]
            self._pool.setdefault(batch, []).append(cache)

    def _zeros(self, shape: tuple[int, ...]) -> Any:
        """A zeroed cache buffer on the session's device (a CPU OrtValue keeps its array)."""
        zeros = np.zeros(shape, self.cache_dtype)
        return self._ort.OrtValue.ortvalue_from_numpy(zeros, self.device, 0)

    def forward(self, feeds: dict[str, np.ndarray], cache: BoundCache) -> np.ndarray:
        """Logits [batch, seq, vocab] (host float32); ``cache`` advances in place."""
        logits = self._run(feeds, cache, logits_on="cpu").numpy()
        return np.array(logits, dtype=np.float32)  # a copy: the buffer is reused next step

    def tokens(self, feeds: dict[str, np.ndarray], cache: BoundCache) -> np.ndarray:
        """Greedy token ids [batch, seq] (host int64): the argmax of each position's logits,
        taken on the session's device; ``cache`` advances in place."""
        if self._argmax is None:
            self._argmax = _argmax_session(self._ort, self.session, self.device)
        if self.graphs and feeds[INPUT_IDS].shape[1] == 1:
            if cache.graph is None:
                cache.graph = self._graph_step(cache, feeds[INPUT_IDS].shape[0])
            return cache.graph.step(feeds[INPUT_IDS], feeds[ATTENTION_MASK])
        logits = self._run(feeds, cache, logits_on=self.device)
        # A kept logits buffer (shared path) keeps its argmax binding too; the chained path's
        # logits are a new OrtValue every step, so its binding is made each time.
        kept = next((k for k, v in cache.buffers.items() if v is logits), None)
        key = (TOKENS, *kept) if kept is not None else None
        if key is None or key not in cache.buffers:
            binding = self._argmax.io_binding()
            binding.bind_ortvalue_input(LOGITS, logits)
            shape = tuple(logits.shape()[:2])
            tokens = self._ort.OrtValue.ortvalue_from_shape_and_type(shape, np.int64, "cpu", 0)
            binding.bind_ortvalue_output(TOKENS, tokens)
            if key is None:
                self._argmax.run_with_iobinding(binding)
                return np.array(tokens.numpy(), dtype=np.int64)
            cache.buffers[key] = (binding, tokens)
        binding, tokens = cache.buffers[key]
        self._argmax.run_with_iobinding(binding)
        return np.array(tokens.numpy(), dtype=np.int64)

    def _run(self, feeds: dict[str, np.ndarray], cache: BoundCache, *, logits_on: str) -> Any:
        """One forward with the cache bound; the logits OrtValue, on ``logits_on``."""
        if self.shared and isinstance(self.vocab, int):
            return self._run_shared(feeds, cache, logits_on)
        binding = self.session.io_binding()
        for name, array in feeds.items():
            if name in self.inputs:
                binding.bind_cpu_input(name, np.ascontiguousarray(array))
        for name in self.past_names:
            binding.bind_ortvalue_input(name, cache.values[name])
            present = name.replace(PAST_PREFIX, PRESENT_PREFIX, 1)
            if self.shared:
                binding.bind_ortvalue_output(present, cache.values[name])
            else:
                binding.bind_output(present, self.device, 0)
        binding.bind_output(LOGITS, logits_on, 0)
        binding.synchronize_inputs()
        self.session.run_with_iobinding(
            binding, graph_run_options(self._ort, NO_GRAPH, self._annotated)
        )
        binding.synchronize_outputs()
        names = [o.name for o in self.session.get_outputs()]
        outputs = binding.get_outputs()
        by_name = dict(zip(names, outputs, strict=True))
        if not self.shared:
            for name in self.past_names:
                cache.values[name] = by_name[name.replace(PAST_PREFIX, PRESENT_PREFIX, 1)]
        return by_name[LOGITS]

    def _run_shared(self, feeds: dict[str, np.ndarray], cache: BoundCache, logits_on: str) -> Any:
        """The shared-buffer step: the cache's kept binding, logits into a kept buffer."""
        if cache.binding is None:
            cache.binding = self.session.io_binding()
            bind_shared_cache(cache.binding, cache.values)
        binding = cache.binding
        for name, array in feeds.items():
            if name in self.inputs:
                binding.bind_cpu_input(name, np.ascontiguousarray(array))
        shape = (*feeds[INPUT_IDS].shape, self.vocab)
        key = (LOGITS, logits_on, *shape)
        if key not in cache.buffers:
            make = self._ort.OrtValue.ortvalue_from_shape_and_type
            cache.buffers[key] = make(shape, self.logits_dtype, logits_on, 0)
        binding.bind_ortvalue_output(LOGITS, cache.buffers[key])
        binding.synchronize_inputs()
        # A graph-enabled session must be told when a run is not to be captured.
        self.session.run_with_iobinding(
            binding, graph_run_options(self._ort, NO_GRAPH, self._annotated)
        )
        binding.synchronize_outputs()
        return cache.buffers[key]

    def _graph_step(self, cache: BoundCache, batch: int) -> GraphStep:
        """The kept one-token step of ``cache``: its own binding and graph id."""
        return GraphStep.make(
            self._ort,
            self.session,
            self._argmax,
            cache.values,
            device=self.device,
            batch=batch,
            max_seq_len=self.max_seq_len,
            logits=(self.vocab, self.logits_dtype),
            graph_id=next(self._graph_ids),
        )


def _argmax_session(ort: Any, session: Any, device: str) -> Any:
    """A one-node graph: ``tokens = ArgMax(logits, axis=-1)``, in the logits' dtype, on the
    session's providers."""
    from onnx import TensorProto, helper

    (logits,) = [o for o in session.get_outputs() if o.name == LOGITS]
    dtype = TensorProto.FLOAT16 if "float16" in logits.type else TensorProto.FLOAT
    node = helper.make_node("ArgMax", [LOGITS], [TOKENS], axis=-1, keepdims=0)
    graph = helper.make_graph(
        [node],
        "greedy",
        [helper.make_tensor_value_info(LOGITS, dtype, ["batch", "seq", "vocab"])],
        [helper.make_tensor_value_info(TOKENS, TensorProto.INT64, ["batch", "seq"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(
        model.SerializeToString(),
        options,
        providers=session.get_providers(),
    )
