"""The `forge` command line. All typer code lives here; so does error rendering.

Exit codes: 0 ok · 1 internal error · 2 bad recipe/arguments · 3 verify gate
failed · 4 missing dependency/hardware · 5 source unavailable · 6 cache/store.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer

from trtllm_forge.errors import ExitCode, ForgeError

T = TypeVar("T")

app = typer.Typer(
    name="forge",
    help="Turn Hugging Face LLM checkpoints into cached, verified, quantized inference engines.\n\n"
    "Start with:  forge build recipes/tiny-llama.yaml",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,
)
recipe_app = typer.Typer(
    help="Validate, show and export the schema of recipes.", no_args_is_help=True
)
cache_app = typer.Typer(
    help="List, size, verify and clean the artifact store ($FORGE_HOME).", no_args_is_help=True
)
export_app = typer.Typer(help="Export artifacts for other tools.", no_args_is_help=True)
app.add_typer(recipe_app, name="recipe")
app.add_typer(cache_app, name="cache")
app.add_typer(export_app, name="export")

_state = {"verbose": False}

RecipeArg = Annotated[Path, typer.Argument(help="Recipe YAML file.", show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document to stdout.")]
StageOpt = Annotated[
    str | None,
    typer.Option(
        "--until", help="Stop after this stage (fetch, convert, calibrate, build, verify)."
    ),
]


def _show_version(value: bool) -> None:
    if value:
        from trtllm_forge import __version__

        print(f"forge {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    verbose: Annotated[
        bool, typer.Option("-v", "--verbose", help="Show tracebacks for errors.")
    ] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version", help="Print the version and exit.", callback=_show_version, is_eager=True
        ),
    ] = False,
) -> None:
    _state["verbose"] = verbose or os.environ.get("FORGE_DEBUG", "") not in ("", "0")


# -- error handling ---------------------------------------------------------
def _fail(err: ForgeError, as_json: bool) -> NoReturn:
    if as_json:
        print(json.dumps({"ok": False, "error": err.to_dict()}, indent=2))
    else:
        from trtllm_forge.ui import stderr_console

        console = stderr_console()
        where = f"{err.location}: " if err.location else ""
        console.print(
            f"[bold red]error[/bold red]: {where}{err.message}",
            markup=True,
            highlight=False,
            soft_wrap=True,
        )
        if err.hint:
            console.print(f"  [dim]hint[/dim]: {err.hint}", soft_wrap=True)
    raise typer.Exit(int(err.code))


def _guard(fn: Callable[[], T], as_json: bool = False) -> T:
    """Run a command body: ForgeError → message + exit code; a bug → exit 1."""
    try:
        return fn()
    except ForgeError as err:
        if _state["verbose"]:
            import traceback

            traceback.print_exc()
        _fail(err, as_json)
    except KeyboardInterrupt:
        print("forge: interrupted", file=sys.stderr)
        raise typer.Exit(130) from None
    except (typer.Exit, typer.Abort):
        raise
    except Exception as exc:  # a library's failure (exit 4) or a bug: traceback only when asked
        if _state["verbose"]:
            import traceback

            traceback.print_exc()
        from trtllm_forge.thirdparty import library_error

        failure = library_error(exc, "running this command")
        if failure is not None:
            _fail(failure, as_json)
        internal = ForgeError(
            ExitCode.INTERNAL,
            f"internal error: {type(exc).__name__}: {exc}",
            hint="this is a bug in forge; rerun with -v (or FORGE_DEBUG=1) for a traceback "
            "and report it",
        )
        _fail(internal, as_json)


def _print_json(doc: Any) -> None:
    print(json.dumps(doc, indent=2, default=str))


# -- build / plan -----------------------------------------------------------
@app.command()
def build(
    recipe: RecipeArg,
    until: StageOpt = None,
    force: Annotated[
        list[str] | None,
        typer.Option("--force", help="Rebuild this stage even if cached (repeatable)."),
    ] = None,
    as_json: JsonOpt = False,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="No progress display.")] = False,
) -> None:
    """Run every stage of RECIPE that is not already cached.

    Each stage's artifact is stored under a digest of exactly what produced it,
    so a rerun redoes only what changed. Exit 3 if a verify gate fails.
    """
    from trtllm_forge import api
    from trtllm_forge.context import RunContext
    from trtllm_forge.ui import make_progress

    def body() -> None:
        ctx = RunContext.default()
        results: list[Any] = []

        def done(result: Any) -> None:
            results.append(result)
            ctx.progress.log(_result_line(result))

        with make_progress(quiet) as progress:
            ctx.progress = progress
            try:
                api.build(recipe=recipe, until=until, force=force or [], ctx=ctx, on_result=done)
            except ForgeError as err:
                if err.code != ExitCode.GATE:
                    raise
                # A failed gate still produced a report: show it, then exit 3.
                _show_build(results, as_json, error=err)
                raise typer.Exit(int(err.code)) from None
        _show_build(results, as_json)

    _guard(body, as_json)


@app.command()
def plan(recipe: RecipeArg, until: StageOpt = None, as_json: JsonOpt = False) -> None:
    """Show which stages of RECIPE are cached and, for a miss, what changed since its last build."""
    from trtllm_forge import api
    from trtllm_forge.context import RunContext

    def body() -> None:
        results = api.plan(recipe=recipe, until=until, ctx=RunContext.default())
        if as_json:
            _print_json({"ok": True, "stages": [r.to_json() for r in results]})
        else:
            _results_table(results, title="forge plan", plan=True)

    _guard(body, as_json)


def _show_build(results: list[Any], as_json: bool, error: ForgeError | None = None) -> None:
    verify = next((r for r in results if r.stage == "verify"), None)
    if as_json:
        doc: dict[str, Any] = {"ok": error is None, "stages": [r.to_json() for r in results]}
        if verify is not None:
            doc["verify"] = verify.info
        if error is not None:
            doc["error"] = error.to_dict()
        _print_json(doc)
        return
    _results_table(results, title="forge build")
    if verify is not None and verify.info.get("metrics"):
        _verify_table(verify)
    if error is not None:
        from trtllm_forge.ui import stderr_console

        stderr_console().print(
            f"[bold red]error[/bold red]: {error.message}\n  [dim]hint[/dim]: {error.hint}"
        )


def _verify_table(verify: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    from trtllm_forge.engine.report import verdict

    info = verify.info
    outcome = verdict(passed=bool(info.get("passed")), gated=bool(info.get("gates")))
    colour = {"PASSED": "green", "FAILED": "red"}.get(outcome, "yellow")
    table = Table(title=f"verify: [{colour}]{outcome}[/]")
    for col in ("gate / metric", "value", "threshold", "result"):
        table.add_column(col)
    for name, gate in sorted(info.get("gates", {}).items()):
        verdict = "[green]pass[/]" if gate["passed"] else "[red]FAIL[/]"
        table.add_row(name, f"{gate['value']:.6g}", f"{gate['threshold']:g}", verdict)
    for metric, value in sorted(info.get("metrics", {}).items()):
        table.add_row(f"[dim]{metric}[/]", f"{value:.6g}", "", "")
    Console(soft_wrap=True).print(table)
    reports = info.get("reports") or {}
    if reports and verify.path:
        Console(soft_wrap=True).print(
            f"reports: {verify.path}/{{{','.join(sorted(reports.values()))}}}"
        )


def _result_line(result: Any) -> str:
    from trtllm_forge.store.digest import short

    word = {"hit": "cached", "built": "built", "pulled": "pulled from the remote"}.get(
        result.status, result.status
    )
    extra = f" (changed: {', '.join(result.changed)})" if result.changed else ""
    return f"{result.stage}: {word} in {result.seconds:.2f}s [{short(result.key or '')}]{extra}"


def _results_table(results: list[Any], *, title: str, plan: bool = False) -> None:
    from rich.console import Console
    from rich.table import Table

    from trtllm_forge.store.digest import short

    table = Table(title=title)
    for col in ("stage", "status", "seconds", "key", "changed" if plan else "artifact"):
        table.add_column(col)
    styles = {
        "hit": "green",
        "built": "cyan",
        "pulled": "green",
        "miss": "yellow",
        "pending": "dim",
    }
    for r in results:
        last = ", ".join(r.changed) or (r.note or "") if plan else (r.path or "")
        table.add_row(
            r.stage,
            f"[{styles.get(r.status, '')}]{r.status}[/]",
            f"{r.seconds:.2f}",
            short(r.key or "") or "-",
            last,
        )
    Console(soft_wrap=True).print(table)


# -- recipe -----------------------------------------------------------------
@recipe_app.command("schema")
def recipe_schema() -> None:
    """Print the recipe JSON Schema (for editor validation, e.g. yaml-language-server)."""
    from trtllm_forge.recipe.schema import Recipe

    _print_json(Recipe.model_json_schema())


@recipe_app.command("show")
def recipe_show(recipe: RecipeArg, as_json: JsonOpt = False) -> None:
    """Validate RECIPE and print it with every default filled in."""
    from trtllm_forge import api

    def body() -> None:
        loaded = api.check(recipe=recipe, sources=False)  # shows a recipe, model or not
        doc = loaded.recipe.model_dump(mode="json")
        if as_json:
            _print_json(doc)
        else:
            import yaml

            print(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True), end="")

    _guard(body, as_json)


@recipe_app.command("check")
def recipe_check(recipe: RecipeArg) -> None:
    """Validate RECIPE without building anything (exit 2 with file:line:col on error)."""
    from trtllm_forge import api

    _guard(lambda: api.check(recipe=recipe))
    print(f"{recipe}: ok")


# -- quantize ---------------------------------------------------------------
@app.command()
def quantize(
    model: Annotated[
        str, typer.Argument(help="Hub id (org/name), local HF directory, or .gguf file.")
    ],
    method: Annotated[
        str,
        typer.Option(
            "--method", "-m", help="none, int8_wo, int4_wo, smoothquant, awq, gptq or fp8."
        ),
    ],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Empty directory for the TensorRT-LLM checkpoint.")
    ],
    group_size: Annotated[
        int | None, typer.Option("--group-size", help="int4_wo/awq/gptq group size.")
    ] = None,
    kv_cache: Annotated[str, typer.Option("--kv-cache", help="none, int8 or fp8.")] = "none",
    calib: Annotated[
        Path | None, typer.Option("--calib", help="Calibration text (.txt or .jsonl).")
    ] = None,
    calib_samples: Annotated[
        int | None, typer.Option("--calib-samples", help="Calibration sequences (default 64).")
    ] = None,
    calib_device: Annotated[
        str | None,
        typer.Option("--calib-device", help="Where calibration runs: cpu (default), cuda, auto."),
    ] = None,
    calib_dtype: Annotated[
        str | None,
        typer.Option(
            "--calib-dtype",
            help="Model dtype while calibrating: float32 (default), float16, bfloat16.",
        ),
    ] = None,
    dtype: Annotated[
        str, typer.Option("--dtype", help="Dtype of unquantized tensors.")
    ] = "float16",
    tp: Annotated[int, typer.Option("--tp", help="Tensor-parallel ranks to write.")] = 1,
    pp: Annotated[int, typer.Option("--pp", help="Pipeline-parallel ranks to write.")] = 1,
    no_eval: Annotated[
        bool, typer.Option("--no-eval", help="Skip the perplexity comparison.")
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Allow a non-empty --out.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Quantize MODEL once (fetch → convert → calibrate, cached and shared with `forge build`)
    and write a TensorRT-LLM checkpoint.

    Example: forge quantize ./my-llama --method awq --group-size 128 --kv-cache fp8 -o ckpt/

    On a GPU machine, add --calib-device cuda --calib-dtype float16 to calibrate there.
    """
    from trtllm_forge import api
    from trtllm_forge.context import RunContext
    from trtllm_forge.ui import make_progress

    def body() -> None:
        params = {"group_size": group_size} if group_size is not None else {}
        ctx = RunContext.default()
        # Progress on stderr as `forge build` shows it: a 17-minute AWQ calibration
        # used to print nothing at all.
        with make_progress(False) as progress:
            ctx.progress = progress
            doc = api.quantize(
                model=model,
                method=method,
                out=out,
                params=params,
                kv_cache=kv_cache,
                calibration_file=str(calib) if calib else None,
                calibration={
                    "samples": calib_samples,
                    "device": calib_device,
                    "dtype": calib_dtype,
                },
                dtype=dtype,
                tp=tp,
                pp=pp,
                overwrite=overwrite,
                evaluate=not no_eval,
                ctx=ctx,
            )
        if as_json:
            _print_json({"ok": True, **doc})
        else:
            _print_quantize_summary(doc)

    _guard(body, as_json)


def _print_quantize_summary(doc: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"forge quantize: {doc['method']}"
        + (f" + kv {doc['kv_cache']}" if doc["kv_cache"] != "none" else "")
    )
    table.add_column("")
    table.add_column("value")
    table.add_row("model", doc["model"])
    table.add_row("quantized modules", str(doc["quantized_modules"]))
    table.add_row(
        "size before → after", f"{_human(doc['bytes_before'])} → {_human(doc['bytes_after'])}"
    )
    table.add_row(
        "time (calibrate / total)", f"{doc['calibrate_seconds'] or 0:.1f}s / {doc['seconds']:.1f}s"
    )
    ppl = doc.get("perplexity")
    if ppl:
        table.add_row(
            "perplexity (built-in eval text)",
            f"{ppl['reference_ppl']:.3f} → {ppl['quantized_ppl']:.3f} ({ppl['delta_pct']:+.2f}%)",
        )
    table.add_row(
        "written", f"{doc['dest']} ({len(doc['files'])} files, tp={doc['tp']}, pp={doc['pp']})"
    )
    Console(soft_wrap=True).print(table)


# -- inspect / export -------------------------------------------------------
@app.command()
def inspect(
    target: Annotated[
        str, typer.Argument(help="Engine dir, checkpoint dir, artifact dir, or key prefix.")
    ],
    as_json: JsonOpt = False,
) -> None:
    """Describe an engine (I/O, shapes, profiles, quantization, ranks, provenance), a
    checkpoint (config, tensors per rank) or any artifact (its manifest)."""
    from trtllm_forge import api

    def body() -> None:
        doc = api.inspect(target=target)
        if as_json:
            _print_json({"ok": True, **doc})
        else:
            _print_inspection(doc)

    _guard(body, as_json)


def _print_inspection(doc: dict[str, Any]) -> None:
    """Human view of `forge inspect`; `--json` has everything."""
    from rich.console import Console

    console = Console(soft_wrap=True)
    console.print(f"[bold]{doc['kind']}[/bold]  {doc['path']}")
    art = doc.get("artifact")
    if art:
        console.print(
            f"artifact: stage {art['stage']}, key {art['key']}, {art['files']} files, "
            f"{_human(art['bytes'])}, built in {art['seconds']}s"
        )
        if art.get("external_root"):
            console.print(f"references: {art['external_root']}")
        fields = (art.get("recipe") or {}).get("fields") or {}
        for name, value in fields.items():
            console.print(f"  {name} = {value}")
        for tool, version in (art.get("tools") or {}).items():
            console.print(f"  [dim]{tool} {version}[/]")
    if "engine" in doc:
        _print_engine(console, doc["engine"])
    if "checkpoint" in doc:
        _print_checkpoint(console, doc["checkpoint"])
    if "hf_folder" in doc:
        _print_hf_folder(console, doc["hf_folder"])


def _print_hf_folder(console: Any, info: dict[str, Any]) -> None:
    console.print(
        f"Hugging Face folder: {info.get('architecture')}, format {info['format']}, "
        f"quant_algo {info.get('quant_algo') or 'none'}, group size {info.get('group_size')}, "
        f"KV cache {info.get('kv_cache') or 'none'}"
    )
    console.print(f"excluded modules: {', '.join(info.get('excluded_modules') or []) or 'none'}")
    if info.get("serving"):
        console.print(f"serving hint: {info['serving']}")


def _quantization_text(quant: dict[str, Any] | None) -> str:
    """What is quantized, or "none": an unquantized engine's config still carries
    TensorRT-LLM's default group_size 128, which `inspect` used to show as if it applied."""
    quant = quant or {}
    if not (quant.get("quant_algo") or quant.get("kv_cache_quant_algo")):
        return "none"
    return str({k: v for k, v in quant.items() if v not in (None, False, [])})


def _print_engine(console: Any, eng: dict[str, Any]) -> None:
    from rich.table import Table

    mapping = eng.get("mapping", {})
    console.print(
        f"engine: backend {eng['backend']}, tp {mapping.get('tp_size')}, pp {mapping.get('pp_size')}, "
        f"quantization {_quantization_text(eng.get('quantization'))}, limits {eng.get('limits')}, "
        f"{_human(eng['total_bytes'])}"
    )
    if eng.get("profiles"):
        console.print(f"profiles: {eng['profiles']}")
    for rank in eng.get("ranks", []):
        files = ", ".join(f"{name} ({_human(size)})" for name, size in rank["files"].items())
        console.print(
            f"rank {rank['rank']} (tp {rank['tp_rank']}, pp {rank['pp_rank']}, layers {rank['layers']}, "
            f"{rank['segments']} segment(s), {rank['collectives']} collective(s)): {files}"
        )
    first = (eng.get("ranks") or [None])[0]
    if first:
        table = Table(title="rank 0 graph inputs / outputs")
        for col in ("", "name", "dtype", "shape"):
            table.add_column(col)
        for kind in ("inputs", "outputs"):
            for io in first[kind]:
                table.add_row(kind[:-1], io["name"], io["dtype"], str(io["shape"]))
        console.print(table)
    console.print(f"provenance: {eng.get('provenance')}")


def _print_checkpoint(console: Any, ckpt: dict[str, Any]) -> None:
    config = ckpt.get("config", {})
    console.print(
        f"checkpoint: {config.get('architecture')} dtype {config.get('dtype')}, "
        f"mapping {ckpt.get('mapping')}, quantization {_quantization_text(ckpt.get('quantization'))}, "
        f"{_human(ckpt['total_bytes'])}"
    )
    for rank in ckpt.get("ranks", []):
        console.print(
            f"rank {rank['rank']} (tp {rank['tp_rank']}, pp {rank['pp_rank']}, layers {rank['layers']}): "
            f"{rank['file']} {_human(rank['file_bytes'])}, {rank['tensor_count']} tensors, dtypes {rank['dtypes']}"
        )


@export_app.command("trtllm-ckpt")
def export_trtllm_ckpt(
    recipe: RecipeArg,
    dest: Annotated[
        Path, typer.Argument(help="Empty directory to write config.json + rank*.safetensors into.")
    ],
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Allow a non-empty DEST.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Export RECIPE's per-rank TensorRT-LLM checkpoint (for `trtllm-build --checkpoint_dir`)."""
    from trtllm_forge import api

    def body() -> None:
        doc = api.export_trtllm_checkpoint(recipe=recipe, dest=dest, overwrite=overwrite)
        if as_json:
            _print_json({"ok": True, **doc})
        else:
            print(
                f"wrote {len(doc['files'])} files (tp={doc['tp']}, pp={doc['pp']}) to {doc['dest']}"
            )

    _guard(body, as_json)


@export_app.command("hf")
def export_hf(
    recipe: RecipeArg,
    dest: Annotated[Path, typer.Argument(help="Empty directory to write the model folder into.")],
    format: Annotated[
        str | None,
        typer.Option(
            "--format",
            help="modelopt or compressed-tensors (default: the recipe's build.format).",
        ),
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Allow a non-empty DEST.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Export RECIPE's quantization as a Hugging Face folder (ModelOpt's unified format
    or compressed-tensors) for TensorRT-LLM, vLLM, SGLang or transformers. A quantization
    the format cannot carry exits 2 before anything is built."""
    from trtllm_forge import api

    def body() -> None:
        doc = api.export_hf(recipe=recipe, dest=dest, format=format, overwrite=overwrite)
        if as_json:
            _print_json({"ok": True, **doc})
        else:
            print(
                f"wrote {len(doc['files'])} files ({doc['target']}, {doc['format'] or 'unquantized'}"
                f", KV {doc['kv_cache'] or 'none'}) to {doc['dest']}"
            )

    _guard(body, as_json)


@export_app.command("triton")
def export_triton(
    recipe: RecipeArg,
    dest: Annotated[
        Path, typer.Argument(help="Empty directory to write the model repository into.")
    ],
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Allow a non-empty DEST.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Write a Triton Inference Server model repository for RECIPE's artifact (needs the
    triton plugin: pip install 'trtllm-forge[triton]'). See docs/deploy.md."""
    from trtllm_forge import api

    def body() -> None:
        doc = api.export_triton(recipe=recipe, dest=dest, overwrite=overwrite)
        if as_json:
            _print_json({"ok": True, **doc})
        else:
            print(
                f"wrote a {doc['layout']} model repository ({', '.join(doc['models'])}) to {doc['dest']}"
            )

    _guard(body, as_json)


# -- bench / run ------------------------------------------------------------
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


@app.command()
def bench(
    target: TargetArg,
    runtime: RuntimeOpt = "forge",
    batch_sizes: Annotated[
        str | None,
        typer.Option("--batch-sizes", help="Comma list (default 1,4,8 up to the engine limit)."),
    ] = None,
    input_len: Annotated[
        str, typer.Option("--input-len", help="Prompt lengths, comma list.")
    ] = "32",
    output_len: Annotated[
        str, typer.Option("--output-len", help="Output lengths, comma list.")
    ] = "32",
    batches: Annotated[
        int, typer.Option("--batches", help="Timed batches per synthetic scenario.")
    ] = 2,
    dataset: Annotated[
        Path | None,
        typer.Option(
            "--dataset", help="trtllm-bench JSONL (task_id, prompt|input_ids, output_tokens)."
        ),
    ] = None,
    warmup: Annotated[int, typer.Option("--warmup", help="Untimed batches per scenario.")] = 1,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the synthetic prompts.")] = 0,
    tokenizer: TokenizerOpt = None,
    threads: ThreadsOpt = None,
    device: Annotated[
        str, typer.Option("--device", help="transformers only: cpu or cuda.")
    ] = "cpu",
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Also write the JSON here.")
    ] = None,
    plot: Annotated[
        Path | None, typer.Option("--plot", help="Write a PNG of tokens/s vs latency here.")
    ] = None,
    as_json: JsonOpt = False,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="No progress display.")] = False,
) -> None:
    """Time TARGET: TTFT, TPOT, ITL, end-to-end latency (p50/p90/p99), tokens/s, requests/s
    and peak memory over batch sizes × prompt/output lengths (docs/bench.md).

    Example: forge bench recipes/tiny-llama.yaml --out bench.json --plot bench.png
    """
    import time

    from trtllm_forge.bench import open_runner, run_bench
    from trtllm_forge.bench.targets import resolve_target
    from trtllm_forge.context import RunContext
    from trtllm_forge.ui import make_progress

    def body() -> None:
        ctx = RunContext.default()
        with make_progress(quiet) as progress:
            ctx.progress = progress
            resolved = resolve_target(target, runtime=runtime, ctx=ctx, tokenizer=tokenizer)
            t0 = time.perf_counter()
            runner = open_runner(runtime, resolved.path, threads=threads, device=device)
            load_s = time.perf_counter() - t0
            workload = _bench_workload(
                runner,
                resolved,
                batch_sizes=batch_sizes,
                input_len=input_len,
                output_len=output_len,
                dataset=dataset,
                batches=batches,
                seed=seed,
            )
            report = run_bench(runner, workload, warmup=warmup, load_s=load_s, progress=progress)
        document = report.model_dump(mode="json")
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(document, indent=2) + "\n")
        if plot is not None:
            from trtllm_forge.bench.plot import write_plot

            write_plot(report, plot)
        if as_json:
            _print_json({"ok": True, "report": document})
            return
        from rich.console import Console

        from trtllm_forge.bench.table import bench_table

        console = Console(soft_wrap=True)
        if not console.is_terminal:  # a pipe or a file: room for every column
            console = Console(soft_wrap=True, width=160)
        console.print(bench_table(report))
        for label, path in (("json", out), ("plot", plot)):
            if path is not None:
                print(f"{label}: {path}")

    _guard(body, as_json)


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
        tokenize = None
        if resolved.tokenizer_dir is not None:
            from trtllm_forge.sources.tokenizer import load_tokenizer

            tokenizer = load_tokenizer(
                resolved.tokenizer_dir, needed_for="forge bench tokenizes the dataset's prompts"
            )

            def tokenize(text: str) -> list[int]:
                return list(tokenizer(text)["input_ids"])

        return load_dataset(dataset, batch_sizes=sizes, tokenize=tokenize)
    return synthetic_workload(
        batch_sizes=sizes,
        input_lens=_int_list(input_len, "--input-len"),
        output_lens=_int_list(output_len, "--output-len"),
        vocab_size=runner.vocab_size,
        batches_per_scenario=batches,
        seed=seed,
    )


@app.command()
def run(
    target: TargetArg,
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="The text to continue.")],
    max_new_tokens: Annotated[
        int, typer.Option("--max-new-tokens", "-n", help="Most tokens to generate.")
    ] = 64,
    runtime: RuntimeOpt = "forge",
    tokenizer: TokenizerOpt = None,
    threads: ThreadsOpt = None,
    device: Annotated[
        str, typer.Option("--device", help="transformers only: cpu or cuda.")
    ] = "cpu",
    as_json: JsonOpt = False,
) -> None:
    """Generate from TARGET (greedy) and stream the text to the terminal.

    Example: forge run recipes/tiny-llama.yaml --prompt "The capital of France is"
    """
    from trtllm_forge.bench import open_runner
    from trtllm_forge.bench.generate import stream_text
    from trtllm_forge.bench.targets import require_tokenizer, resolve_target
    from trtllm_forge.context import RunContext
    from trtllm_forge.errors import recipe_error
    from trtllm_forge.sources.tokenizer import load_tokenizer
    from trtllm_forge.ui import make_progress

    def body() -> None:
        if max_new_tokens < 1:
            raise recipe_error(f"--max-new-tokens must be at least 1 (got {max_new_tokens})")
        ctx = RunContext.default()
        with make_progress(as_json) as progress:
            ctx.progress = progress
            resolved = resolve_target(target, runtime=runtime, ctx=ctx, tokenizer=tokenizer)
            tok = load_tokenizer(
                require_tokenizer(resolved, needed_for="forge run tokenizes the prompt"),
                needed_for="forge run tokenizes the prompt",
            )
            runner = open_runner(runtime, resolved.path, threads=threads, device=device)
        pieces = []
        for piece in stream_text(runner, tok, prompt, max_new_tokens):
            pieces.append(piece)
            if not as_json:
                sys.stdout.write(piece)
                sys.stdout.flush()
        if as_json:
            _print_json({"ok": True, "prompt": prompt, "text": "".join(pieces)})
        else:
            sys.stdout.write("\n")

    _guard(body, as_json)


# -- cache ------------------------------------------------------------------
def _store() -> Any:
    from trtllm_forge import api

    return api.store()


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


@cache_app.command("ls")
def cache_ls(
    remote: Annotated[
        bool, typer.Option("--remote", help="List the entries on FORGE_REMOTE instead.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """List every artifact: stage, key, size, validity and the recipes using it."""
    from trtllm_forge.store import maintenance

    def body() -> None:
        if remote:
            _remote_ls(as_json)
            return
        found = maintenance.entries(_store())
        if as_json:
            _print_json({"ok": True, "artifacts": [e.to_json() for e in found]})
            return
        from rich.console import Console
        from rich.table import Table

        from trtllm_forge.store.digest import short

        table = Table(title=f"forge store: {_store().root}")
        for col in ("stage", "key", "size", "state", "used by"):
            table.add_column(col)
        for e in found:
            state = "ok" if e.problem is None else f"[red]damaged[/]: {e.problem}"
            table.add_row(e.stage, short(e.key), _human(e.size), state, ", ".join(e.recipes))
        Console(soft_wrap=True).print(table)

    _guard(body, as_json)


@cache_app.command("du")
def cache_du(as_json: JsonOpt = False) -> None:
    """Disk usage of the store per stage."""
    from trtllm_forge.store import maintenance

    def body() -> None:
        sizes = maintenance.usage(_store())
        if as_json:
            _print_json({"ok": True, "bytes": sizes, "total": sum(sizes.values())})
            return
        for stage, size in sizes.items():
            print(f"{_human(size):>10}  {stage}")
        print(f"{_human(sum(sizes.values())):>10}  total")

    _guard(body, as_json)


@cache_app.command("verify")
def cache_verify(
    fix: Annotated[bool, typer.Option("--fix", help="Delete damaged entries.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Re-check every artifact against its manifest digests (exit 6 if any is damaged)."""
    from trtllm_forge.errors import store_error
    from trtllm_forge.store import maintenance

    def body() -> None:
        store = _store()
        found = maintenance.entries(store)
        bad = [e for e in found if e.problem is not None]
        if fix:
            for e in bad:
                maintenance.remove(store, key_prefix=e.key, stage=None, everything=False)
        error = None
        if bad and not fix:
            error = store_error(
                f"{len(bad)} damaged artifact(s) in the store",
                hint="run `forge cache verify --fix` to delete them; builds rebuild them",
            )
        if as_json:  # one document, carrying the error when there is one
            doc: dict[str, Any] = {
                "ok": error is None,
                "checked": len(found),
                "damaged": [e.to_json() for e in bad],
                "fixed": fix,
            }
            if error is not None:
                doc["error"] = error.to_dict()
            _print_json(doc)
            if error is not None:
                raise typer.Exit(int(error.code))
            return
        for e in bad:
            print(f"damaged: {e.stage} {e.key}: {e.problem}" + (" (removed)" if fix else ""))
        print(f"checked {len(found)} artifact(s), {len(bad)} damaged")
        if error is not None:
            raise error

    _guard(body, as_json)


@cache_app.command("gc")
def cache_gc(
    all_: Annotated[
        bool,
        typer.Option(
            "--all-unreferenced/--damaged-only",
            help="Also delete entries no recipe's last build uses.",
        ),
    ] = True,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only list what would be deleted.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Delete damaged entries, leftovers of killed builds and unreferenced artifacts."""
    from trtllm_forge.store import maintenance

    def body() -> None:
        report = (
            maintenance.gc(_store(), keep_referenced=True, dry_run=dry_run)
            if all_
            else _gc_damaged_only(dry_run)
        )
        if as_json:
            _print_json({"ok": True, **report})
        else:
            verb = "would delete" if dry_run else "deleted"
            for item in report["removed"]:
                print(f"{verb}: {item.get('stage')} {item['path']}")
            print(f"{verb} {len(report['removed'])} item(s), {_human(report['freed_bytes'])} freed")

    _guard(body, as_json)


def _gc_damaged_only(dry_run: bool) -> dict[str, Any]:
    from trtllm_forge.store import maintenance

    store = _store()
    bad = [e for e in maintenance.entries(store) if e.problem is not None]
    if not dry_run:
        for e in bad:
            maintenance.remove(store, key_prefix=e.key, stage=None, everything=False)
    return {
        "removed": [e.to_json() for e in bad],
        "freed_bytes": sum(e.size for e in bad),  # what the real run frees, dry or not
        "dry_run": dry_run,
    }


@cache_app.command("rm")
def cache_rm(
    key: Annotated[str | None, typer.Argument(help="Key or key prefix to delete.")] = None,
    stage: Annotated[
        str | None, typer.Option("--stage", help="Delete every artifact of this stage.")
    ] = None,
    everything: Annotated[bool, typer.Option("--all", help="Delete every artifact.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Delete artifacts by key prefix, by stage, or all of them."""
    from trtllm_forge.errors import recipe_error
    from trtllm_forge.store import maintenance

    def body() -> None:
        if not (key or stage or everything):
            raise recipe_error(
                "say what to delete", hint="forge cache rm KEY | --stage STAGE | --all"
            )
        if key is not None and len(key.split(":", 1)[-1]) < 4:
            raise recipe_error("key prefix too short", hint="give at least 4 hex characters")
        store = _store()
        if stage is not None:
            maintenance.check_stage_name(store, stage)
        gone = maintenance.remove(store, key_prefix=key, stage=stage, everything=everything)
        if as_json:
            _print_json({"ok": True, "removed": [e.to_json() for e in gone]})
        else:
            print(f"deleted {len(gone)} artifact(s)")

    _guard(body, as_json)


RemoteTargetArg = Annotated[
    str | None,
    typer.Argument(help="A recipe .yaml, an artifact key (or 4+ hex prefix); default: all."),
]


@cache_app.command("push")
def cache_push(target: RemoteTargetArg = None, as_json: JsonOpt = False) -> None:
    """Upload artifacts to the remote cache (FORGE_REMOTE): files first, manifest last."""
    _move_entries("pushed", target, as_json)


@cache_app.command("pull")
def cache_pull(target: RemoteTargetArg = None, as_json: JsonOpt = False) -> None:
    """Download artifacts from the remote cache, each checked against its manifest."""
    _move_entries("pulled", target, as_json)


def _move_entries(verb: str, target: str | None, as_json: bool) -> None:
    """``cache push`` (verb "pushed") or ``cache pull`` ("pulled"), with progress and a summary."""
    from trtllm_forge import api

    move = api.cache_push if verb == "pushed" else api.cache_pull

    def body() -> None:
        from trtllm_forge.ui import make_progress

        ctx = _remote_context()
        with make_progress(as_json) as progress:
            ctx.progress = progress
            moved = move(target=target, ctx=ctx)
        _show_moved(moved, as_json, verb)

    _guard(body, as_json)


def _remote_ls(as_json: bool) -> None:
    from trtllm_forge import api
    from trtllm_forge.store.digest import short

    entries = api.cache_remote_entries(ctx=_remote_context())
    if as_json:
        _print_json({"ok": True, "entries": [{"stage": s, "key": k} for s, k in entries]})
        return
    for stage, key in entries:
        print(f"{stage:10} {short(key)}")
    print(f"{len(entries)} entr{'y' if len(entries) == 1 else 'ies'} on the remote")


def _remote_context() -> Any:
    from trtllm_forge.context import RunContext

    return RunContext.default()


def _show_moved(moved: list[Any], as_json: bool, verb: str) -> None:
    from trtllm_forge.store.digest import short

    if as_json:
        _print_json({"ok": True, "entries": [m.to_json() for m in moved]})
        return
    for m in moved:
        size = f" ({m.files} files, {_human(m.bytes)})" if m.files else ""
        note = f": {m.note}" if m.note else ""
        print(f"{m.status:8} {m.stage:10} {short(m.key)}{size}{note}")
    count = sum(1 for m in moved if m.status == verb)
    print(f"{verb} {count} of {len(moved)} entr{'y' if len(moved) == 1 else 'ies'}")


def main() -> None:
    # Third-party tqdm bars would interleave with forge's own progress display;
    # forge reports long work through its Progress sink instead.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    # pydantic looks for plugins by scanning every installed distribution's entry points when
    # it builds its first validator; forge's CLI validates only its own models, and that scan
    # is a measurable part of a no-op build's start-up (docs/performance.md).
    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
    # torch compiles kernels for ModelOpt's quantizers into an inductor cache, /tmp by
    # default: it goes under FORGE_HOME so a build writes nothing outside the store.
    from trtllm_forge.context import forge_home

    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(forge_home() / "torchinductor"))
    app()
