"""``python -m bench NAME run|render [ARGS...]``: one entry for every benchmark.

``run`` measures (the module's own command line, ARGS passed through: ``python -m bench
quant run --methods awq`` is ``python -m bench.quant --methods awq``) and writes the
module's results JSON and doc section; ``render`` rewrites the doc section from the
committed results JSON without measuring anything. ``python -m bench list`` names them.

Every module keeps its own command line (``python -m bench.quant ...``, ``python -m
bench.engine_perf ...``), since docs and results files cite those; this table only maps a
name and a verb onto them. ``python -m bench`` with no name (or with options only) is the
performance benchmark as before: ``python -m bench [--quick]``, ``python -m bench --noop``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from bench import (
    convert_rss,
    engine_perf,
    engine_perf_gpu,
    gguf_fetch,
    gpu_calib,
    layerwise_cpu,
    layerwise_gpu,
    lib,
    modelopt_gpu,
    perf,
    quant,
    quant_formats,
    quant_gap,
    quant_sq,
    report,
    store_size,
    verify_memory,
    verify_report,
)


@dataclass(frozen=True)
class Verb:
    """A module's own command line with ``args`` put first (``python -m bench.MODULE ARGS``)."""

    module: ModuleType
    args: tuple[str, ...] = ()

    def __call__(self, rest: list[str]) -> int:
        argv = [*self.args, *rest]
        # What a module records as its command line (some read sys.argv) is the one it cites.
        sys.argv = [str(self.module.__file__), *argv]
        return int(self.module.main(argv) or 0)


@dataclass(frozen=True)
class Benchmark:
    what: str
    run: Verb
    render: Verb | Callable[[list[str]], int] | str  # a str: why there is nothing to render


def _render_noop(argv: list[str]) -> int:
    """The no-op rows of docs/performance.md from bench/results/noop.json."""
    results = Path(argv[0]) if argv else lib.RESULTS / "noop.json"
    report.write_noop(lib.DOCS / "performance.md", json.loads(results.read_text()))
    return 0


def _render_perf(argv: list[str]) -> int:
    """The build/shard/cp rows of a doc from a results file ``python -m bench`` saved."""
    if len(argv) not in (1, 2):
        raise SystemExit("usage: python -m bench perf render RESULTS.json [DOC.md]")
    doc = Path(argv[1]) if len(argv) == 2 else lib.DOCS / "performance.md"
    report.write(doc, json.loads(Path(argv[0]).read_text()))
    return 0


NO_RESULTS = "its run writes the doc section directly; no results file is kept to render from"

BENCHMARKS: dict[str, Benchmark] = {
    "perf": Benchmark(
        "first build, shard, cp, no-op rebuild, plan, digest (python -m bench)",
        Verb(perf),
        _render_perf,
    ),
    "noop": Benchmark(
        "no-op builds, plan, --help on the tiny recipe (python -m bench --noop)",
        Verb(perf, ("--noop",)),
        _render_noop,
    ),
    "quant": Benchmark(
        "quantization quality of every method vs ModelOpt (docs/quantization.md)",
        Verb(quant),
        Verb(quant, ("--from-json", str(quant.HOME / "results.json"))),
    ),
    "quant_formats": Benchmark(
        "fp8_block, w4a8_awq, nvfp4 and their HF folders (docs/quantization.md)",
        Verb(quant_formats),
        Verb(quant_formats, ("--render",)),
    ),
    "quant_gap": Benchmark(
        "study: where AWQ/GPTQ lose against ModelOpt (docs/quantization-gap.md)",
        Verb(quant_gap),
        Verb(quant_gap, ("--render",)),
    ),
    "quant_sq": Benchmark(
        "study: SmoothQuant per-tensor ablations (prints Markdown)",
        Verb(quant_sq),
        "it prints its tables; nothing is saved to render from",
    ),
    "modelopt_gpu": Benchmark(
        "ModelOpt's CUDA-only fake-quant figures (`merge` puts them in quant_formats.json)",
        Verb(modelopt_gpu, ("run",)),
        Verb(quant_formats, ("--render",)),
    ),
    "gpu_calib": Benchmark(
        "calibration time and perplexity, forge vs ModelOpt on a GPU (docs/performance.md)",
        Verb(gpu_calib, ("run",)),
        Verb(gpu_calib, ("render",)),
    ),
    "layerwise_cpu": Benchmark(
        "peak memory of a layer-by-layer AWQ on a 7B shape (render takes its results JSON)",
        Verb(layerwise_cpu),
        Verb(layerwise_cpu, ("--render",)),
    ),
    "layerwise_gpu": Benchmark(
        "layer-by-layer vs whole-model calibration on a GPU (docs/performance.md)",
        Verb(layerwise_gpu, ("run",)),
        Verb(layerwise_gpu, ("render",)),
    ),
    "engine_perf": Benchmark(
        "engine speed against onnxruntime-genai on the CPU (docs/engine-performance.md)",
        Verb(engine_perf),
        Verb(engine_perf, ("--render-only",)),
    ),
    "engine_perf_gpu": Benchmark(
        "engine speed on the GPU (docs/engine-performance.md; `collect` adds a session)",
        Verb(engine_perf_gpu),
        Verb(engine_perf, ("--render-only",)),
    ),
    "verify_memory": Benchmark(
        "verify's peak memory and time at several text lengths (docs/bench.md)",
        Verb(verify_memory),
        Verb(verify_memory, ("--doc-only",)),
    ),
    "verify_report": Benchmark(
        "verify reports of SmolLM2-135M (docs/verify-smollm2-135m.md)",
        Verb(verify_report),
        NO_RESULTS,
    ),
    "store_size": Benchmark(
        "store size of a build (docs/performance.md with --doc)", Verb(store_size), NO_RESULTS
    ),
    "gguf_fetch": Benchmark(
        "GGUF fetch time (docs/performance.md with --doc)", Verb(gguf_fetch), NO_RESULTS
    ),
    "convert_rss": Benchmark("peak memory of convert (prints)", Verb(convert_rss), NO_RESULTS),
}
VERBS = ("run", "render")


def usage() -> str:
    width = max(map(len, BENCHMARKS))
    lines = ["usage: python -m bench NAME run|render [ARGS...]   (or: python -m bench [--noop])"]
    lines += [f"  {name:<{width}}  {b.what}" for name, b in BENCHMARKS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0].startswith("-"):
        return perf.main(argv)  # python -m bench [--quick] [--noop] ...: as before
    if argv[0] == "list":
        print(usage())  # noqa: T201
        return 0
    name, verb, rest = argv[0], argv[1] if len(argv) > 1 else "", argv[2:]
    if name not in BENCHMARKS or verb not in VERBS:
        raise SystemExit(usage())
    command = getattr(BENCHMARKS[name], verb)
    if isinstance(command, str):
        raise SystemExit(f"python -m bench {name} render: {command}")
    try:
        return int(command(rest) or 0)
    except FileNotFoundError as exc:
        if verb != "render":
            raise
        raise SystemExit(
            f"{exc.filename} is missing: `python -m bench {name} run` makes it"
        ) from exc
