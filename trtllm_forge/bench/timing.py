"""The timed loop: one batch, a timestamp per decoding step, per-request figures.

Every runner is timed by this one function, so forge, onnxruntime-genai and transformers
figures mean the same thing. A batch decodes as many steps as its longest request asks
for; a shorter request's tokens end at its own ``output_tokens``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from trtllm_forge.bench.runners.base import Runner
from trtllm_forge.bench.workload import Request


@dataclass(frozen=True)
class BatchTiming:
    """Seconds since the batch started at which each step's tokens were available."""

    requests: tuple[Request, ...]
    step_times: tuple[float, ...]
    duration_s: float

    def ttft(self, index: int) -> float:
        return self.step_times[0]

    def e2e(self, index: int) -> float:
        return self.step_times[self.requests[index].output_tokens - 1]

    def gaps(self, index: int) -> list[float]:
        times = self.step_times[: self.requests[index].output_tokens]
        return [later - earlier for earlier, later in zip(times, times[1:], strict=False)]


def time_batch(runner: Runner, requests: Sequence[Request]) -> BatchTiming:
    steps = max(r.output_tokens for r in requests)
    prompts = [r.input_ids for r in requests]
    times: list[float] = []
    start = time.perf_counter()
    for _ in runner.stream(prompts, steps):
        times.append(time.perf_counter() - start)
    duration = time.perf_counter() - start
    return BatchTiming(tuple(requests), tuple(times), duration)
