"""`forge quantize`: one model, one method, a TensorRT-LLM checkpoint out."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from trtllm_forge.cli.common import SUMMARIES, JsonOpt, console, guard, human, print_json

app = typer.Typer(rich_markup_mode=None)

ModelArg = Annotated[
    str, typer.Argument(help="Hub id (org/name), local HF directory, or .gguf file.")
]
MethodOpt = Annotated[
    str,
    typer.Option("--method", "-m", help="none, int8_wo, int4_wo, smoothquant, awq, gptq or fp8."),
]
OutOpt = Annotated[
    Path, typer.Option("--out", "-o", help="Empty directory for the TensorRT-LLM checkpoint.")
]
GroupSizeOpt = Annotated[
    int | None, typer.Option("--group-size", help="int4_wo/awq/gptq group size.")
]
KvCacheOpt = Annotated[str, typer.Option("--kv-cache", help="none, int8, fp8 or nvfp4.")]
CalibOpt = Annotated[
    Path | None, typer.Option("--calib", help="Calibration text (.txt or .jsonl).")
]
CalibSamplesOpt = Annotated[
    int | None, typer.Option("--calib-samples", help="Calibration sequences (default 64).")
]
CalibDeviceOpt = Annotated[
    str | None,
    typer.Option("--calib-device", help="Where calibration runs: cpu (default), cuda, auto."),
]
CalibDtypeOpt = Annotated[
    str | None,
    typer.Option(
        "--calib-dtype", help="Model dtype while calibrating: float32 (default), float16, bfloat16."
    ),
]
DtypeOpt = Annotated[str, typer.Option("--dtype", help="Dtype of unquantized tensors.")]
TpOpt = Annotated[int, typer.Option("--tp", help="Tensor-parallel ranks to write.")]
PpOpt = Annotated[int, typer.Option("--pp", help="Pipeline-parallel ranks to write.")]
NoEvalOpt = Annotated[bool, typer.Option("--no-eval", help="Skip the perplexity comparison.")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Allow a non-empty --out.")]

# The option that sets each recipe field `forge quantize` writes: its errors name what the
# user typed, not the recipe it writes under FORGE_HOME (api.quantize's ``spelled``).
OPTIONS = {
    "source": "MODEL",
    "convert.dtype": "--dtype",
    "quantize.method": "--method",
    "quantize.kv_cache": "--kv-cache",
    "quantize.group_size": "--group-size",
    "quantize.calibration.file": "--calib",
    "quantize.calibration.samples": "--calib-samples",
    "quantize.calibration.device": "--calib-device",
    "quantize.calibration.dtype": "--calib-dtype",
    "parallel.tp": "--tp",
    "parallel.pp": "--pp",
}


@app.command(short_help=SUMMARIES["quantize"])
def quantize(
    model: ModelArg,
    method: MethodOpt,
    out: OutOpt,
    group_size: GroupSizeOpt = None,
    kv_cache: KvCacheOpt = "none",
    calib: CalibOpt = None,
    calib_samples: CalibSamplesOpt = None,
    calib_device: CalibDeviceOpt = None,
    calib_dtype: CalibDtypeOpt = None,
    dtype: DtypeOpt = "float16",
    tp: TpOpt = 1,
    pp: PpOpt = 1,
    no_eval: NoEvalOpt = False,
    overwrite: OverwriteOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Quantize MODEL once (fetch → convert → calibrate, cached and shared with `forge build`)
    and write a TensorRT-LLM checkpoint.

    Example: forge quantize ./my-llama --method awq --group-size 128 --kv-cache fp8 -o ckpt/

    On a GPU machine, add --calib-device cuda --calib-dtype float16 to calibrate there.
    """
    arguments = {
        "model": model,
        "method": method,
        "out": out,
        "params": {"group_size": group_size} if group_size is not None else {},
        "kv_cache": kv_cache,
        "calibration_file": str(calib) if calib else None,
        "calibration": {"samples": calib_samples, "device": calib_device, "dtype": calib_dtype},
        "dtype": dtype,
        "tp": tp,
        "pp": pp,
        "overwrite": overwrite,
        "evaluate": not no_eval,
    }
    guard(lambda: _run(arguments, as_json), as_json)


def _run(arguments: dict[str, Any], as_json: bool) -> None:
    from trtllm_forge import api
    from trtllm_forge.context import RunContext
    from trtllm_forge.ui import make_progress

    ctx = RunContext.default()
    # Progress on stderr as `forge build` shows it: a 17-minute AWQ calibration
    # used to print nothing at all.
    with make_progress(False) as progress:
        ctx.progress = progress
        doc = api.quantize(**arguments, ctx=ctx, spelled=OPTIONS)
    if as_json:
        print_json({"ok": True, **doc})
    else:
        _print_summary(doc)


def _print_summary(doc: dict[str, Any]) -> None:
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
        "size before → after", f"{human(doc['bytes_before'])} → {human(doc['bytes_after'])}"
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
    console().print(table)
