"""PNG plot of a benchmark: output tokens/s against latency, one point per scenario, a line
per (prompt length, output length) through the batch sizes."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from trtllm_forge.bench.report import BenchReport, ScenarioResult


def write_plot(report: BenchReport, path: Path) -> Path:
    """Throughput vs p50 end-to-end latency; each point labelled with its batch size."""
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    for label, scenarios in _series(report.scenarios).items():
        xs = [s.e2e_ms.p50 for s in scenarios]
        ys = [s.output_tokens_per_s for s in scenarios]
        axes.plot(xs, ys, marker="o", label=label)
        for s, x, y in zip(scenarios, xs, ys, strict=True):
            axes.annotate(f"bs{s.batch_size}", (x, y), textcoords="offset points", xytext=(4, 4))
    axes.set_xlabel("end-to-end latency p50 (ms)")
    axes.set_ylabel("output tokens/s")
    axes.set_title(f"{report.runtime}: {Path(report.target).name} ({report.device})")
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize="small")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def _series(scenarios: list[ScenarioResult]) -> dict[str, list[ScenarioResult]]:
    """Scenarios grouped by everything but the batch size, each group in batch order."""
    groups: dict[str, list[ScenarioResult]] = defaultdict(list)
    for s in scenarios:
        groups[s.name.split(" ", 1)[1] if " " in s.name else s.name].append(s)
    return {k: sorted(v, key=lambda s: s.batch_size) for k, v in groups.items()}
