"""A single-rank engine graph run through ONNX Runtime's IO binding, so the KV cache stays
where the session computes (GPU memory on CUDA) instead of passing through numpy.

Two cache disciplines, chosen by the graph:

* ``shared`` (the ort profile's GroupQueryAttention): one buffer per layer and kind of
  ``max_seq_len`` slots, bound as both ``past_key_values.*`` and ``present.*``; the
  kernel writes the new keys in place (onnxruntime-genai's past_present_share_buffer).
  Nothing is copied between steps.
* chained (the portable graph): ``present.*`` stays on the device as ORT allocates it
  and becomes the next step's ``past_key_values.*``.

Only ``logits`` comes back to the host each step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from trtllm_forge.engine.onnx.names import LOGITS, PAST_PREFIX, PRESENT_PREFIX

CUDA = "cuda"


@dataclass
class BoundCache:
    """Per-layer past keys/values as OrtValues (on the session's device)."""

    values: dict[str, Any]


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
    ) -> None:
        self._ort, self.session = ort, session
        self.device = device
        self.shared = shared
        self.kv_heads, self.head_size = cache_shape
        self.max_seq_len = max_seq_len
        self.inputs = {i.name for i in session.get_inputs()}
        self.past_names = sorted(n for n in self.inputs if n.startswith(PAST_PREFIX))
        dtype = next(i.type for i in session.get_inputs() if i.name.startswith(PAST_PREFIX))
        self.cache_dtype = np.float16 if "float16" in dtype else np.float32

    def new_cache(self, batch: int) -> BoundCache:
        slots = self.max_seq_len if self.shared else 0
        shape = (batch, self.kv_heads, slots, self.head_size)
        return BoundCache({name: self._zeros(shape) for name in self.past_names})

    def _zeros(self, shape: tuple[int, ...]) -> Any:
        """A zeroed cache buffer on the session's device (a CPU OrtValue keeps its array)."""
        zeros = np.zeros(shape, self.cache_dtype)
        return self._ort.OrtValue.ortvalue_from_numpy(zeros, self.device, 0)

    def forward(self, feeds: dict[str, np.ndarray], cache: BoundCache) -> np.ndarray:
        """Logits [batch, seq, vocab] (host float32); ``cache`` advances in place."""
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
        binding.bind_output(LOGITS, "cpu")
        binding.synchronize_inputs()
        self.session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        names = [o.name for o in self.session.get_outputs()]
        outputs = binding.get_outputs()
        by_name = dict(zip(names, outputs, strict=True))
        if not self.shared:
            for name in self.past_names:
                cache.values[name] = by_name[name.replace(PAST_PREFIX, PRESENT_PREFIX, 1)]
        logits = by_name[LOGITS].numpy()
        return np.asarray(logits, dtype=np.float32)
