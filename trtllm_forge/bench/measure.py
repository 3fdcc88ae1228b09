"""``run_bench``: check a workload against a runner, warm up, time every scenario."""

from __future__ import annotations

import datetime as dt

from trtllm_forge.bench.memory import RssPeak
from trtllm_forge.bench.report import (
    SCHEMA_VERSION,
    BenchReport,
    RequestTiming,
    ScenarioResult,
    Stats,
)
from trtllm_forge.bench.runners.base import Runner
from trtllm_forge.bench.timing import BatchTiming, time_batch
from trtllm_forge.bench.workload import Scenario, Workload
from trtllm_forge.context import NullProgress, Progress
from trtllm_forge.errors import recipe_error


def run_bench(
    runner: Runner,
    workload: Workload,
    *,
    warmup: int = 1,
    load_s: float = 0.0,
    progress: Progress | None = None,
) -> BenchReport:
    """Time every scenario of ``workload`` on ``runner``.

    Before each scenario, ``warmup`` untimed batches (its first batch, repeated) let the
    runtime allocate and pick kernels. The whole workload is checked against the runner's
    limits first, so a bad request fails before anything runs (a recipe error, exit 2).
    ``load_s`` (the caller's time to load the runner) is recorded as given.
    """
    if warmup < 0:
        raise recipe_error(f"warm-up batches cannot be negative (got {warmup})")
    check_workload(runner, workload)
    progress = progress or NullProgress()
    started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    results = [_scenario(runner, s, warmup, progress) for s in workload.scenarios]
    return BenchReport(
        schema_version=SCHEMA_VERSION,
        runtime=runner.name,
        target=runner.target,
        device=runner.device,
        threads=runner.threads,
        workload=workload.kind,
        seed=workload.seed,
        dataset=workload.source,
        warmup_batches=warmup,
        load_s=round(load_s, 6),
        started_at=started,
        versions=runner.versions(),
        cuda_graph=runner.cuda_graph,
        scenarios=results,
    )


def check_workload(runner: Runner, workload: Workload) -> None:
    """Every batch fits the runner's limits; the first misfit is a recipe error."""
    limits = runner.limits
    hint = "shrink the workload or use an engine built with larger limits (build.max_*)"
    for scenario in workload.scenarios:
        if limits.max_batch_size is not None and scenario.batch_size > limits.max_batch_size:
            raise recipe_error(
                f"batch size {scenario.batch_size} is larger than the engine's max_batch_size "
                f"{limits.max_batch_size}",
                hint=hint,
            )
        for request in scenario.requests:
            prompt, total = len(request.input_ids), len(request.input_ids) + request.output_tokens
            if limits.max_input_len is not None and prompt > limits.max_input_len:
                raise recipe_error(
                    f"request {request.task_id}: a prompt of {prompt} tokens is longer than "
                    f"max_input_len {limits.max_input_len}",
                    hint=hint,
                )
            if limits.max_seq_len is not None and total > limits.max_seq_len:
                raise recipe_error(
                    f"request {request.task_id}: {prompt} prompt + {request.output_tokens} "
                    f"output tokens exceed max_seq_len {limits.max_seq_len}",
                    hint=hint,
                )
            if any(i >= runner.vocab_size for i in request.input_ids):
                raise recipe_error(
                    f"request {request.task_id}: a token id is outside the vocabulary "
                    f"({runner.vocab_size} ids)"
                )


def _scenario(
    runner: Runner, scenario: Scenario, warmup: int, progress: Progress
) -> ScenarioResult:
    batches = scenario.batches()
    with progress.task(f"bench {scenario.name}", total=warmup + len(batches)) as task:
        for _ in range(warmup):
            time_batch(runner, batches[0])
            task.advance()
        runner.reset_device_peak()
        timings = []
        with RssPeak() as rss:
            for batch in batches:
                timings.append(time_batch(runner, batch))
                task.advance()
    return summarize(scenario, timings, rss.bytes, runner.device_peak_bytes())


def summarize(
    scenario: Scenario,
    timings: list[BatchTiming],
    peak_rss_bytes: int,
    peak_device_bytes: int | None,
) -> ScenarioResult:
    """The scenario's figures from its batch timings (milliseconds, per second)."""
    ms = 1000.0
    rows, ttft, tpot, itl, e2e = [], [], [], [], []
    for timing in timings:
        for index, request in enumerate(timing.requests):
            first, last = timing.ttft(index) * ms, timing.e2e(index) * ms
            rows.append(
                RequestTiming(
                    task_id=request.task_id,
                    input_tokens=len(request.input_ids),
                    output_tokens=request.output_tokens,
                    ttft_ms=first,
                    e2e_ms=last,
                )
            )
            ttft.append(first)
            e2e.append(last)
            if request.output_tokens > 1:
                tpot.append((last - first) / (request.output_tokens - 1))
            itl += [gap * ms for gap in timing.gaps(index)]
    duration = sum(t.duration_s for t in timings)
    output_tokens = sum(r.output_tokens for r in rows)
    return ScenarioResult(
        name=scenario.name,
        batch_size=scenario.batch_size,
        requests=len(rows),
        batches=len(timings),
        input_tokens=sum(r.input_tokens for r in rows),
        output_tokens=output_tokens,
        duration_s=duration,
        output_tokens_per_s=output_tokens / duration,
        requests_per_s=len(rows) / duration,
        ttft_ms=Stats.of(ttft),
        tpot_ms=Stats.of(tpot),
        itl_ms=Stats.of(itl),
        e2e_ms=Stats.of(e2e),
        peak_rss_bytes=peak_rss_bytes,
        peak_device_bytes=peak_device_bytes,
        timings=rows,
    )
