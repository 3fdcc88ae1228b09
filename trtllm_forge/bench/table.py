"""The human view of a BenchReport: one Rich table row per scenario (``forge bench``)."""

from __future__ import annotations

from typing import Any

from trtllm_forge.bench.report import BenchReport

COLUMNS = (
    "scenario",
    "requests",
    "out tok/s",
    "req/s",
    "TTFT p50/p99 ms",
    "TPOT p50 ms",
    "ITL p99 ms",
    "e2e p50/p99 ms",
    "peak RSS",
)


def bench_table(report: BenchReport) -> Any:
    from rich.table import Table

    title = f"forge bench: {report.runtime} on {report.device} — {report.target}"
    table = Table(
        title=title,
        caption=f"{report.workload} workload, {report.warmup_batches} "
        f"warm-up batch(es) per scenario; load {report.load_s:.2f}s",
    )
    for column in COLUMNS:
        table.add_column(column, justify="left" if column == "scenario" else "right")
    for s in report.scenarios:
        table.add_row(
            s.name,
            str(s.requests),
            f"{s.output_tokens_per_s:.1f}",
            f"{s.requests_per_s:.2f}",
            f"{s.ttft_ms.p50:.2f} / {s.ttft_ms.p99:.2f}",
            _ms(s.tpot_ms.p50),
            _ms(s.itl_ms.p99),
            f"{s.e2e_ms.p50:.1f} / {s.e2e_ms.p99:.1f}",
            f"{s.peak_rss_bytes / 2**20:.0f} MiB"
            + (f" (+{s.peak_device_bytes / 2**20:.0f} MiB dev)" if s.peak_device_bytes else ""),
        )
    return table


def _ms(value: float) -> str:
    return "n/a" if value != value else f"{value:.2f}"  # NaN: no sample (one-token requests)
