"""The "2026 formats" section of docs/quantization.md from bench/results/quant_formats.json
(``python -m bench.quant_formats``) and, for the cause of a gap to ModelOpt, the
``w4a8_awq`` rows of bench/results/quant_gap.json (``python -m bench.quant_gap``)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from bench import quant as qb
from bench.quant_doc import pct
from bench.quant_formats import BEGIN, END, MODELOPT_BAR

GAP_RESULTS = qb.ROOT / "bench" / "results" / "quant_gap.json"
ANCHOR = "<!-- bench.quant:end -->"
MB = 1e6


def _fmt(value: float | None, spec: str = ".3f") -> str:
    return "–" if value is None else format(value, spec)


def _weights_mb(row: dict[str, Any]) -> str:
    size = row.get("folder_bytes") or row.get("size_bytes")
    return "–" if size is None else f"{size / MB:.1f}"


def table(results: dict[str, Any]) -> list[str]:
    ref = results["reference_ppl"]
    lines = [
        "| method | artifact, loader | quantized linears | calib. windows | calibrate (s) "
        "| rank0 or folder (MB) | ppl fake-quant (forge) | ppl artifact | Δ artifact vs float "
        "| KL(float ‖ artifact) | top-1 | ppl ModelOpt fake-quant | Δ ModelOpt vs float "
        "| forge vs ModelOpt |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in results["rows"].values():
        calib = row.get("calibration")
        theirs = row.get("ppl_modelopt")
        cells = [
            row["label"],
            _loader(row),
            str(row["quantized_modules"]),
            f"{calib['samples']}×{calib['seq_len']}" if calib else "–",
            _fmt(row.get("calibrate_seconds"), ".1f"),
            _weights_mb(row),
            f"{row['ppl_fakequant']:.3f}",
            f"{row['ppl_artifact']:.3f}",
            pct(row["ppl_artifact"], ref),
            f"{row['kl_artifact']:.5f}",
            f"{100 * row['top1_artifact']:.2f} %",
            _fmt(theirs),
            "–" if theirs is None else pct(theirs, ref),
            "–" if theirs is None else pct(row["ppl_artifact"], theirs),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _loader(row: dict[str, Any]) -> str:
    if row["target"] == "modelopt":
        return "ModelOpt-format folder, forge's reader (float32)"
    if row["target"] == "compressed-tensors":
        return f"compressed-tensors folder, transformers + compressed-tensors ({row['dtype']})"
    return "ONNX Runtime engine, `OrtEngine`"


def bar_lines(results: dict[str, Any]) -> list[str]:
    """The bar is decided on the shipped artifact; forge's fake quant is shown beside it."""
    lines = [
        "| row | forge artifact vs ModelOpt fake quant | forge fake quant vs ModelOpt "
        "| within 0.5 % |",
        "|---|---|---|---|",
    ]
    for row in results["rows"].values():
        theirs = row.get("ppl_modelopt")
        if theirs is None:
            why = row.get("modelopt_error") or "ModelOpt 0.47 has no preset with these numerics"
            lines.append(f"| {row['label']} | no ModelOpt figure: {why} | – | – |")
            continue
        gap = row["ppl_artifact"] / theirs - 1.0
        verdict = "**yes**" if abs(gap) <= MODELOPT_BAR else "**no** (cause below)"
        figure = f"{row['ppl_artifact']:.3f} vs {theirs:.3f} ({100 * gap:+.2f} %)"
        fake = f"{row['ppl_fakequant']:.3f} ({pct(row['ppl_fakequant'], theirs)})"
        lines.append(f"| {row['label']} | {figure} | {fake} | {verdict} |")
    return lines


def agreement_lines(results: dict[str, Any]) -> list[str]:
    lines = [
        "| row | max \\|Δlogit\\| | mean \\|Δlogit\\| | argmax differs | ppl artifact / fake quant |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in results["rows"].values():
        d = row["artifact_vs_fakequant"]
        ratio = pct(row["ppl_artifact"], row["ppl_fakequant"])
        cells = [
            row["label"],
            f"{d['max_abs_logit']:.2g}",
            f"{d['mean_abs_logit']:.2g}",
            f"{100 * d['argmax_differs']:.2f} %",
            ratio,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def gap_lines(gap: dict[str, Any] | None) -> list[str]:
    """The measured cause of w4a8_awq's distance to ModelOpt (bench.quant_gap's rows)."""
    rows = ((gap or {}).get("methods", {}).get("w4a8_awq") or {}).get("rows", {})
    r = {k: v["ppl"] for k, v in rows.items()}
    if not {"a", "b", "c_qkv"} <= r.keys():
        return [
            "w4a8_awq's cause: not measured yet (`python -m bench.quant_gap --methods "
            "w4a8_awq --merge`)."
        ]
    share = (r["c_qkv"] - r["b"]) / (r["a"] - r["b"]) if r["a"] != r["b"] else float("nan")
    out = [
        f"**w4a8_awq: the cause, measured** (`python -m bench.quant_gap`, "
        "[quantization-gap.md](quantization-gap.md)). ModelOpt's fake-quant model keeps one "
        "AWQ pre-quant scale, one input range and one FP8 weight range per HF linear; the "
        "checkpoint TensorRT-LLM runs has one GEMM for q/k/v, so those must be shared. "
        f"ModelOpt's own sharing rule (`preprocess_linear_fusion`, what its TensorRT-LLM "
        f"exporter applies) on ModelOpt's own model moves it from {r['b']:.3f} to "
        f"{r['c_qkv']:.3f}; forge's checkpoint is at {r['a']:.3f}: the rule accounts for "
        f"{100 * share:.0f} % of the gap. The sharing is what makes the checkpoint "
        "deployable, and ModelOpt's own exporter does the same, so the figure to compare "
        f"forge's against is the shared one, not (b): forge's fake quant is "
        f"{pct(r['a'], r['c_qkv'])} from it.",
    ]
    if "c_unified" in r:
        out.append(
            f"With gate/up shared too and folded into the norms (ModelOpt's unified HF "
            f"exporter, the ModelOpt-format folder): {r['c_unified']:.3f}."
        )
    return [" ".join(out)]


def render(results: dict[str, Any], gap: dict[str, Any] | None) -> str:
    s = results["settings"]
    runs = results["runs"]
    v = runs[0]["versions"]
    parts = [
        BEGIN,
        f"Generated on {dt.date.today().isoformat()} from bench/results/quant_formats.json by:",
        "",
        *(f"* `{run['command']}`: **{run['wall_seconds'] / 60:.1f} min**" for run in runs),
        "",
        f"Machine: {runs[0]['machine']}. torch {v['torch']}, transformers "
        f"{v['transformers']}, onnxruntime {v['onnxruntime']}, nvidia-modelopt "
        f"{v['nvidia-modelopt']}. Same windows as the table above: float32 reference "
        f"perplexity **{results['reference_ppl']:.3f}** ({s['windows']} × {s['window_len']} "
        f"tokens); calibration {s['samples']} × {s['seq_len']} tokens (AWQ: "
        f"{s['awq_samples']} × {s['seq_len']}), seed 0. fp8_block uses 64 × 64 tiles and "
        "w4a8_awq groups of 64: 128 divides none of SmolLM2-135M's 576-wide inputs.",
        "",
        *table(results),
        "",
        "### forge vs ModelOpt's fake quant (bar: within 0.5 %)",
        "",
        *bar_lines(results),
        "",
        *gap_lines(gap),
        "",
        "### Artifact vs forge's fake quant of the same checkpoint",
        "",
        *agreement_lines(results),
        END,
    ]
    return "\n".join(parts) + "\n"


def write(results: dict[str, Any], path: Path = qb.DOC) -> None:
    """Replace the section (first time: insert it after bench.quant's generated section)."""
    gap = json.loads(GAP_RESULTS.read_text()) if GAP_RESULTS.exists() else None
    section = render(results, gap).rstrip("\n")
    text = path.read_text()
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        path.write_text(head + section + rest.split(END, 1)[1])
        return
    head, tail = text.split(ANCHOR, 1)
    intro = "\n\n## The 2026 formats: fp8_block, w4a8_awq, nvfp4\n\n"
    path.write_text(head + ANCHOR + intro + section + tail)
