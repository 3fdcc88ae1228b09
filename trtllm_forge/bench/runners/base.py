"""The runner protocol: what the benchmark loop needs from a runtime.

A runner decodes one batch greedily and yields after every step, so the same loop
(:func:`trtllm_forge.bench.timing.time_batch`) times forge engines, onnxruntime-genai
model folders and the transformers reference alike.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Limits:
    """What a runner accepts; None means no limit of its own."""

    max_batch_size: int | None = None
    max_input_len: int | None = None
    max_seq_len: int | None = None


class Runner(Protocol):
    """A loaded model that decodes batches greedily, one step at a time."""

    name: str  # "forge" | "genai" | "transformers"
    target: str  # the directory it was loaded from
    device: str  # "cpu", "cuda", ...
    vocab_size: int
    limits: Limits
    threads: int | None  # intra-op threads; None: the runtime's default
    cuda_graph: bool | None  # decode steps replayed as CUDA graphs (None: not on CUDA)

    def stream(self, prompts: Sequence[Sequence[int]], max_new_tokens: int) -> Iterator[list[int]]:
        """Yield each step's new token per prompt, exactly ``max_new_tokens`` times (end of
        sequence tokens do not stop it: a benchmark times the lengths it asked for)."""
        ...

    def reset_device_peak(self) -> None:
        """Start a new device-memory peak (no-op without a device)."""
        ...

    def device_peak_bytes(self) -> int | None:
        """Device memory peak since the last reset, or None without a device."""
        ...

    def versions(self) -> dict[str, str | None]:
        """Versions of the libraries that did the work."""
        ...

    def close(self) -> None:
        """Release the model and stop any sampler, before the process exits: native runtimes
        torn down by the interpreter's exit with work still attached can abort it."""
        ...


class HostOnly:
    """Device-memory methods for runners that run on the host."""

    def reset_device_peak(self) -> None:
        pass

    def device_peak_bytes(self) -> int | None:
        return None

    def close(self) -> None:
        pass
