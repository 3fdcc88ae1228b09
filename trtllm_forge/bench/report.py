"""The benchmark report: one documented schema for every runtime (``forge bench --json``).

Times are milliseconds, rates are per second, memory is bytes. Percentiles are numpy's
linear interpolation over the values listed in each field's description. docs/bench.md
explains how to read each figure; ``BenchReport.model_json_schema()`` is the formal schema.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 1


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Stats(_Model):
    """Summary of a list of samples (milliseconds for latencies)."""

    count: int = Field(description="Number of samples.")
    mean: float
    p50: float
    p90: float
    p99: float
    min: float
    max: float

    @classmethod
    def of(cls, samples: Sequence[float]) -> Stats:
        if not samples:
            nan = float("nan")
            return cls(count=0, mean=nan, p50=nan, p90=nan, p99=nan, min=nan, max=nan)
        values = np.asarray(samples, dtype=np.float64)
        p50, p90, p99 = np.percentile(values, [50, 90, 99])
        return cls(
            count=len(values),
            mean=float(values.mean()),
            p50=float(p50),
            p90=float(p90),
            p99=float(p99),
            min=float(values.min()),
            max=float(values.max()),
        )


class RequestTiming(_Model):
    """One request, timed from the start of its batch."""

    task_id: str
    input_tokens: int
    output_tokens: int
    ttft_ms: float = Field(description="Batch start to this request's first token.")
    e2e_ms: float = Field(description="Batch start to this request's last token.")


class ScenarioResult(_Model):
    """One scenario: its requests run as batches of ``batch_size``, after the warm-up."""

    name: str
    batch_size: int
    requests: int
    batches: int
    input_tokens: int = Field(description="Prompt tokens over all timed requests.")
    output_tokens: int = Field(description="Generated tokens over all timed requests.")
    duration_s: float = Field(description="Wall time of the timed batches, back to back.")
    output_tokens_per_s: float = Field(description="output_tokens / duration_s.")
    requests_per_s: float = Field(description="requests / duration_s.")
    ttft_ms: Stats = Field(description="Time to first token, per request.")
    tpot_ms: Stats = Field(
        description="Time per output token after the first, per request: "
        "(e2e - ttft) / (output_tokens - 1); requests of one token are left out."
    )
    itl_ms: Stats = Field(description="Inter-token latency: every gap between two tokens.")
    e2e_ms: Stats = Field(description="End-to-end latency, per request.")
    peak_rss_bytes: int = Field(description="Largest resident set size sampled while timing.")
    peak_device_bytes: int | None = Field(
        None, description="Largest device memory allocated (None without a device)."
    )
    timings: list[RequestTiming] = Field(description="Every timed request.")


class BenchReport(_Model):
    """Everything ``forge bench`` measured, in one document."""

    schema_version: int = Field(SCHEMA_VERSION, description="Bumped when a field changes.")
    runtime: str = Field(description="forge | genai | transformers.")
    target: str = Field(description="The engine, model folder or recipe benchmarked.")
    device: str = Field(description="cpu, or the device the runtime ran on.")
    threads: int | None = Field(None, description="Intra-op threads (None: runtime default).")
    workload: str = Field(description="synthetic | dataset.")
    seed: int | None = Field(None, description="Seed of the synthetic prompts.")
    dataset: str | None = Field(None, description="The JSONL dataset file.")
    warmup_batches: int = Field(description="Untimed batches run before each scenario.")
    load_s: float = Field(description="Time to load the runner (not in any scenario).")
    started_at: str = Field(description="UTC time the benchmark started (ISO 8601).")
    versions: dict[str, str | None] = Field(description="Versions of the runtimes involved.")
    cuda_graph: bool | None = Field(
        None, description="Decode steps replayed as CUDA graphs (None: not run on CUDA)."
    )
    scenarios: list[ScenarioResult]
