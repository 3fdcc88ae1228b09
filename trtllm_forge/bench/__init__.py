"""Benchmark any runnable model the way serving people do: TTFT, TPOT, ITL, end-to-end
latency (mean, p50/p90/p99), output tokens/s, requests/s and peak memory.

The library API (``forge bench`` is a thin layer over it)::

    from trtllm_forge.bench import open_runner, synthetic_workload, run_bench

    runner = open_runner("forge", engine_dir)          # or "genai", "transformers"
    workload = synthetic_workload(batch_sizes=[1, 4], input_lens=[32], output_lens=[32],
                                  vocab_size=runner.vocab_size)
    report = run_bench(runner, workload, warmup=1)     # a BenchReport (pydantic)
    print(report.model_dump_json(indent=2))

Heavy libraries (onnxruntime, torch, onnxruntime-genai, matplotlib) load only when a runner
or a plot needs them. docs/bench.md explains every figure.
"""

from trtllm_forge.bench.measure import check_workload, run_bench
from trtllm_forge.bench.report import SCHEMA_VERSION, BenchReport, ScenarioResult, Stats
from trtllm_forge.bench.runners import RUNTIMES, Limits, Runner, open_runner
from trtllm_forge.bench.workload import (
    Request,
    Scenario,
    Workload,
    load_dataset,
    synthetic_workload,
)

__all__ = [
    "RUNTIMES",
    "SCHEMA_VERSION",
    "BenchReport",
    "Limits",
    "Request",
    "Runner",
    "Scenario",
    "ScenarioResult",
    "Stats",
    "Workload",
    "check_workload",
    "load_dataset",
    "open_runner",
    "run_bench",
    "synthetic_workload",
]
