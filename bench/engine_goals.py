"""Issue 20's CPU goals, checked on bench/results/engine_perf.json for
docs/engine-performance.md: forge's ort profile at or above onnxruntime-genai's builder
(tokens/s, same precision and batch, same run) in every CPU cell, and SmolLM2's int4 ort
engine at 5× the 11.4 tokens/s forge reached before the issue (portable int4, batch 1).
A row short of a goal is listed with its measured cause (``CAUSES``) or says none is
measured yet."""

from __future__ import annotations

from typing import Any

INT4_BEFORE = 11.4  # tokens/s, smollm2-135m forge portable int4, batch 1, before issue 20
INT4_GOAL = 5 * INT4_BEFORE

# Measured causes of rows short of a goal, keyed by (model, precision, batch); the figures
# behind each are in the JSON next to the table.
CAUSES: dict[tuple[str, str, int], str] = {
    ("smollm2-135m", "float32", 1): (
        "Measured cause: a slow forge process in that run, not the engine. The same cell "
        "read 1.39x in the 04:55 run; timed in alternating pairs right after the 15:23 "
        "rerun (load 1.1-1.3; `forge bench ENGINE --runtime forge|genai --batch-sizes 1 "
        "--input-len 64 --output-len 64 --batches 2 --warmup 1 --threads 2`), forge's "
        "float32 ort engine made 32.8, 32.4 and 33.1 tokens/s against the builder's 21.3, "
        "21.2 and 21.3 (1.52-1.56x)."
    ),
    ("smollm2-135m", "float32", 8): (
        "0.5 % under, inside the timing noise of this machine: both engines stream the same "
        "float32 head each step (forge's 625 MB on disk hold the tied head a second time, "
        "transposed; the builder's 515 MB share it) and were timed in separate processes at "
        "load 8.0 and 8.9."
    ),
    ("llama-1b", "int4", 1): (
        "The builder needs a tokenizer to convert a model and the synthetic 1B shape "
        "(bench/synth.py: random weights, config only) has none, so this cell has no peer; "
        "forge's row is measured."
    ),
    ("llama-1b", "int4", 8): "As at batch 1: no builder model without a tokenizer.",
    ("smollm2-135m", "int4", 1): (
        "Measured cause: timing noise between the two processes, not the engine. With "
        "`quantize_lm_head` forge's ort engine has the builder's layout (int4 MatMulNBits "
        "head, the tied embedding read from it by GatherBlockQuantized; weights 73 MB vs "
        "74 MB). Timed in alternating pairs right after this run (08:14 UTC, load 3.5-4; "
        "`forge bench ENGINE --runtime forge|genai --batch-sizes 1,8 --input-len 64 "
        "--output-len 64 --batches 2 --warmup 1 --threads 2`), forge's int4 ort engine "
        "made 81.3 and 62.4 tokens/s at batch 1 against the builder's 64.6 and 62.5, and "
        "130.4 and 138.4 at batch 8 against 114.1 and 106.9. AWQ's pre-quant Muls (120 "
        "of the graph's 462 nodes; without them it is the builder's graph node for node) "
        "are not it either: an int4_wo engine without them (342 nodes) made 84.5 and 80.9 "
        "tokens/s at batch 1 in the same alternation, the AWQ one 100.1 and 87.0."
    ),
    ("smollm2-135m", "int4", 8): "Same as batch 1.",
}


def scenario(report: dict[str, Any], batch: int) -> dict[str, Any] | None:
    for entry in report.get("scenarios", []):
        if entry["batch_size"] == batch:
            return dict(entry)
    return None


def _speed(doc: dict[str, Any], model: str, precision: str, target: str, batch: int) -> float:
    for run in doc["runs"]:
        if (run["model"], run["precision"], run["target"]) == (model, precision, target):
            found = scenario(run["report"], batch)
            return float(found["output_tokens_per_s"]) if found else 0.0
    return 0.0


def _error(doc: dict[str, Any], model: str, precision: str, target: str) -> str | None:
    for run in doc["runs"]:
        if (run["model"], run["precision"], run["target"]) == (model, precision, target):
            return run["report"].get("error")
    return None


def shortfalls(doc: dict[str, Any]) -> list[tuple[str, str, int, str]]:
    """(model, precision, batch, what is short) for every CPU cell that misses a goal."""
    out = []
    cells = sorted(
        {(r["model"], r["precision"]) for r in doc["runs"] if r["target"] == "forge ort"}
    )
    for model, precision in cells:
        for batch in (1, 8):
            ours = _speed(doc, model, precision, "forge ort", batch)
            peer = _speed(doc, model, precision, "genai builder", batch)
            error = _error(doc, model, precision, "genai builder")
            if error:
                out.append((model, precision, batch, f"no builder figure ({error})"))
            if peer and ours < peer:
                out.append(
                    (model, precision, batch, f"forge ort at {ours / peer:.2f}× the builder")
                )
            if (model, precision, batch) == ("smollm2-135m", "int4", 1) and ours < INT4_GOAL:
                out.append(
                    (
                        model,
                        precision,
                        batch,
                        f"{ours:.1f} tokens/s < {INT4_GOAL:.0f} (5× {INT4_BEFORE})",
                    )
                )
    return out


def render_goals(doc: dict[str, Any]) -> list[str]:
    lines = [
        "## Goals (issue 20, CPU)",
        "",
        "forge ort ≥ 1.0× the onnxruntime-genai builder's tokens/s at equal precision in "
        f"every cell (batch 1 and 8); SmolLM2 int4 ort at batch 1 ≥ {INT4_GOAL:.0f} tokens/s "
        f"(5× the {INT4_BEFORE} of forge's portable int4 engine before the issue).",
        "",
    ]
    short = shortfalls(doc)
    if not short:
        return [*lines, "Every measured cell meets them in the run shown.", ""]
    cells: dict[tuple[str, str, int], list[str]] = {}
    for model, precision, batch, what in short:
        cells.setdefault((model, precision, batch), []).append(what)
    for (model, precision, batch), whats in cells.items():
        cause = CAUSES.get((model, precision, batch), "Cause not measured yet.")
        lines.append(f"- {model}, {precision}, batch {batch}: {'; '.join(whats)}. {cause}")
    return [*lines, ""]
