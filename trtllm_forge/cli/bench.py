"""`forge bench` and `forge run`: time a model or engine, or generate from it."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from trtllm_forge.cli.common import SUMMARIES, JsonOpt, QuietOpt, console, guard, print_json

app = typer.Typer(rich_markup_mode=None)

TargetArg = Annotated[
    Path,
    typer.Argument(
        help="A recipe (built first if needed), a forge engine dir, an onnxruntime-genai "
        "model folder or a Hugging Face model dir.",
        show_default=False,
    ),
]
RuntimeOpt = Annotated[
    str, typer.Option("--runtime", help="forge (default), genai or transformers.")
]
TokenizerOpt = Annotated[
    Path | None,
    typer.Option("--tokenizer", help="Tokenizer dir for an engine dir (a recipe knows its own)."),
]
ThreadsOpt = Annotated[
    int | None, typer.Option("--threads", help="Intra-op threads (default: $OMP_NUM_THREADS).")
]
DeviceOpt = Annotated[
    str,
    typer.Option(
        "--device",
        help="cpu or cuda: forge engines on ONNX Runtime's CUDA provider (onnxruntime-gpu), "
        "genai folders on genai's CUDA provider, transformers on torch's CUDA device.",
    ),
]
CudaGraphOpt = Annotated[
    bool | None,
    typer.Option(
        "--cuda-graph/--no-cuda-graph",
        help="device cuda: replay decode steps as CUDA graphs (default: on for forge's ort "
        "engines, as the folder's config says for genai; the flag sets both).",
        show_default=False,
    ),
]
DtypeOpt = Annotated[
    str,
    typer.Option(
        "--dtype", help="transformers only: float32, float16 or bfloat16 weights and compute."
    ),
]
BatchSizesOpt = Annotated[
    str | None,
    typer.Option("--batch-sizes", help="Comma list (default 1,4,8 up to the engine limit)."),
]
InputLenOpt = Annotated[str, typer.Option("--input-len", help="Prompt lengths, comma list.")]
OutputLenOpt = Annotated[str, typer.Option("--output-len", help="Output lengths, comma list.")]
BatchesOpt = Annotated[int, typer.Option("--batches", help="Timed batches per synthetic scenario.")]
DatasetOpt = Annotated[
    Path | None,
    typer.Option(
        "--dataset", help="trtllm-bench JSONL (task_id, prompt|input_ids, output_tokens)."
    ),
]
WarmupOpt = Annotated[int, typer.Option("--warmup", help="Untimed batches per scenario.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed of the synthetic prompts.")]
OutOpt = Annotated[Path | None, typer.Option("--out", "-o", help="Also write the JSON here.")]
PlotOpt = Annotated[
    Path | None, typer.Option("--plot", help="Write a PNG of tokens/s vs latency here.")
]


@app.command(short_help=SUMMARIES["bench"])
def bench(
    target: TargetArg,
    runtime: RuntimeOpt = "forge",
    batch_sizes: BatchSizesOpt = None,
    input_len: InputLenOpt = "32",
    output_len: OutputLenOpt = "32",
    batches: BatchesOpt = 2,
    dataset: DatasetOpt = None,
    warmup: WarmupOpt = 1,
    seed: SeedOpt = 0,
    tokenizer: TokenizerOpt = None,
    threads: ThreadsOpt = None,
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = "float32",
    cuda_graph: CudaGraphOpt = None,
    out: OutOpt = None,
    plot: PlotOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Time TARGET: TTFT, TPOT, ITL, end-to-end latency (p50/p90/p99), tokens/s, requests/s
    and peak memory over batch sizes × prompt/output lengths (docs/bench.md).

    Example: forge bench recipes/tiny-llama.yaml --out bench.json --plot bench.png
    """
    opened = {
        "runtime": runtime,
        "tokenizer": tokenizer,
        "threads": threads,
        "device": device,
        "dtype": dtype,
        "cuda_graph": cuda_graph,
    }
    sweep = {
        "batch_sizes": batch_sizes,
        "input_len": input_len,
        "output_len": output_len,
        "dataset": dataset,
        "batches": batches,
        "seed": seed,
    }

    def body() -> None:
        report = _measure(target, opened, sweep, warmup=warmup, quiet=quiet)
        _show_report(report, out=out, plot=plot, as_json=as_json)

    guard(body, as_json)


def _dtype(name: str) -> str:
    from trtllm_forge.errors import recipe_error

    if name not in ("float32", "float16", "bfloat16"):
        raise recipe_error(f"--dtype {name!r} is not one of float32, float16, bfloat16")
    return name


def _measure(
    target: Path, opened: dict[str, Any], sweep: dict[str, Any], *, warmup: int, quiet: bool
) -> Any:
    """Resolve and open TARGET, then run the workload ``sweep`` describes on it."""
    import time

    from trtllm_forge.bench import open_runner, run_bench
    from trtllm_forge.bench.targets import resolve_target
    from trtllm_forge.context import RunContext
    from trtllm_forge.ui import make_progress

    ctx = RunContext.default()
    runtime = opened["runtime"]
    with make_progress(quiet) as progress:
        ctx.progress = progress
        resolved = resolve_target(target, runtime=runtime, ctx=ctx, tokenizer=opened["tokenizer"])
        t0 = time.perf_counter()
        runner = open_runner(
            runtime,
            resolved.path,
            threads=opened["threads"],
            device=opened["device"],
            dtype=_dtype(opened["dtype"]),
            cuda_graph=opened["cuda_graph"],
        )
        load_s = time.perf_counter() - t0
        try:
            workload = _bench_workload(runner, resolved, **sweep)
            return run_bench(runner, workload, warmup=warmup, load_s=load_s, progress=progress)
        finally:
            runner.close()


def _show_report(report: Any, *, out: Path | None, plot: Path | None, as_json: bool) -> None:
    document = report.model_dump(mode="json")
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(document, indent=2) + "\n")
    if plot is not None:
        from trtllm_forge.bench.plot import write_plot

        write_plot(report, plot)
    if as_json:
        print_json({"ok": True, "report": document})
        return
    from trtllm_forge.bench.table import bench_table

    console(wide_when_piped=True).print(bench_table(report))
    for label, path in (("json", out), ("plot", plot)):
        if path is not None:
            print(f"{label}: {path}")


def _int_list(text: str, option: str) -> list[int]:
    from trtllm_forge.errors import recipe_error

    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        values = []
    if not values or any(v < 1 for v in values):
        raise recipe_error(
            f"{option} {text!r} is not a comma-separated list of positive integers",
            hint=f"e.g. {option} 1,4,8",
        )
    return values


def _bench_workload(
    runner: Any,
    resolved: Any,
    *,
    batch_sizes: str | None,
    input_len: str,
    output_len: str,
    dataset: Path | None,
    batches: int,
    seed: int,
) -> Any:
    """The dataset's requests, or the synthetic sweep (default batch sizes: 1, 4, 8 within
    the engine's max_batch_size)."""
    from trtllm_forge.bench import load_dataset, synthetic_workload

    limit = runner.limits.max_batch_size
    sizes = (
        _int_list(batch_sizes, "--batch-sizes")
        if batch_sizes
        else [b for b in (1, 4, 8) if limit is None or b <= limit] or [1]
    )
    if dataset is not None:
        return load_dataset(dataset, batch_sizes=sizes, tokenize=_tokenizer_of(resolved))
    return synthetic_workload(
        batch_sizes=sizes,
        input_lens=_int_list(input_len, "--input-len"),
        output_lens=_int_list(output_len, "--output-len"),
        vocab_size=runner.vocab_size,
        batches_per_scenario=batches,
        seed=seed,
    )


def _tokenizer_of(resolved: Any) -> Any:
    """Text → token ids with the target's tokenizer (None: the dataset must hold ids)."""
    if resolved.tokenizer_dir is None:
        return None
    from trtllm_forge.sources.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(
        resolved.tokenizer_dir, needed_for="forge bench tokenizes the dataset's prompts"
    )

    def tokenize(text: str) -> list[int]:
        return list(tokenizer(text)["input_ids"])

    return tokenize


@app.command(short_help=SUMMARIES["run"])
def run(
    target: TargetArg,
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="The text to continue.")],
    max_new_tokens: Annotated[
        int, typer.Option("--max-new-tokens", "-n", help="Most tokens to generate.")
    ] = 64,
    runtime: RuntimeOpt = "forge",
    tokenizer: TokenizerOpt = None,
    threads: ThreadsOpt = None,
    device: DeviceOpt = "cpu",
    as_json: JsonOpt = False,
) -> None:
    """Generate from TARGET (greedy) and stream the text to the terminal.

    Example: forge run recipes/tiny-llama.yaml --prompt "The capital of France is"
    """
    opened = {"runtime": runtime, "tokenizer": tokenizer, "threads": threads, "device": device}

    def body() -> None:
        from trtllm_forge.bench.generate import stream_text
        from trtllm_forge.errors import recipe_error

        if max_new_tokens < 1:
            raise recipe_error(f"--max-new-tokens must be at least 1 (got {max_new_tokens})")
        runner, tok = _open_for_generation(target, opened, quiet=as_json)
        pieces = []
        try:
            for piece in stream_text(runner, tok, prompt, max_new_tokens):
                pieces.append(piece)
                if not as_json:
                    sys.stdout.write(piece)
                    sys.stdout.flush()
        finally:
            runner.close()
        if as_json:
            print_json({"ok": True, "prompt": prompt, "text": "".join(pieces)})
        else:
            sys.stdout.write("\n")

    guard(body, as_json)


def _open_for_generation(target: Path, opened: dict[str, Any], *, quiet: bool) -> Any:
    """The runner and tokenizer `forge run` generates with."""
    from trtllm_forge.bench import open_runner
    from trtllm_forge.bench.targets import require_tokenizer, resolve_target
    from trtllm_forge.context import RunContext
    from trtllm_forge.sources.tokenizer import load_tokenizer
    from trtllm_forge.ui import make_progress

    ctx = RunContext.default()
    runtime = opened["runtime"]
    with make_progress(quiet) as progress:
        ctx.progress = progress
        resolved = resolve_target(target, runtime=runtime, ctx=ctx, tokenizer=opened["tokenizer"])
        needed = "forge run tokenizes the prompt"
        tok = load_tokenizer(require_tokenizer(resolved, needed_for=needed), needed_for=needed)
        runner = open_runner(
            runtime, resolved.path, threads=opened["threads"], device=opened["device"]
        )
    return runner, tok
