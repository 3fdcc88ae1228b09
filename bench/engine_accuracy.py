"""What forge's quantized lm_head costs in accuracy, and how merged runs are kept apart.

``python -m bench.engine_perf`` calls :func:`head_accuracy` for the ort profile: the same
int4 / int8 ort engine (int8 activations, as timed) built twice, with lm_head in float32
and with ``quantize_lm_head``, each verified by ``forge build`` against transformers
float32 on the real SmolLM2 weights. The rows go into bench/results/engine_perf.json and
the table into docs/engine-performance.md.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import lib

DATA = lib.DATA
# Only models with trained weights: llama-1b's random weights make agreement meaningless.
MODELS = ("smollm2-135m",)
TEXT_TOKENS = 1024
NEW_TOKENS = 32
VERIFY = {
    "text_file": str(DATA / "enwiki-eval.txt"),
    "max_text_tokens": TEXT_TOKENS,
    "max_new_tokens": NEW_TOKENS,
}
METRICS = ("token_agreement", "top1_agreement", "kl_mean", "ppl_ratio")


def head_accuracy(
    model: Any, precisions: tuple[str, ...], build: Callable[..., dict], log: Any
) -> list[dict[str, Any]]:
    """One row per (quantized precision, lm_head float32 or quantized): verify's metrics."""
    if model.name not in MODELS:
        return []
    rows = []
    for precision in (p for p in precisions if p != "float32"):
        for head in (False, True):
            stages = build(model, precision, "ort", log, head=head, verify=VERIFY)
            report = _report(Path(stages["verify"]["path"]))
            metrics = report.get("metrics") or {}
            rows.append(
                {
                    "model": model.name,
                    "precision": precision,
                    "lm_head": precision if head else "float32",
                    "metrics": {k: metrics.get(k) for k in (*METRICS, "text_tokens")},
                    "prompts": len(report.get("prompts") or []),
                }
            )
    return rows


def _report(verify_dir: Path) -> dict[str, Any]:
    import json

    return dict(json.loads((verify_dir / "report.json").read_text()))


def merge(previous: dict[str, Any], later: dict[str, Any]) -> dict[str, Any]:
    """``--merge``: the later run's rows replace the previous rows they measured again."""

    def run_key(r: dict[str, Any]) -> tuple[str, ...]:
        return (r["model"], r["precision"], r["target"])

    def accuracy_key(r: dict[str, Any]) -> tuple[str, ...]:
        return (r["model"], r["precision"], r["lm_head"])

    redone = {run_key(r) for r in later["runs"]}
    for r in later["runs"]:
        r["run"] = later.get("started_at")  # its vs-genai peer is the builder of this run
    remeasured = {accuracy_key(r) for r in later.get("accuracy", [])}
    earlier = previous.get("later") or []
    return {
        **previous,
        "runs": [r for r in previous["runs"] if run_key(r) not in redone] + later["runs"],
        "accuracy": [r for r in previous.get("accuracy", []) if accuracy_key(r) not in remeasured]
        + later.get("accuracy", []),
        "later": [*(earlier if isinstance(earlier, list) else [earlier]), _summary(later)],
    }


def _summary(run: dict[str, Any]) -> dict[str, Any]:
    return {
        "started_at": run.get("started_at"),
        "finished_at": run.get("finished_at"),
        "load average at start": run["machine"].get("load average at start"),
        "rows": sorted({f"{r['model']} {r['precision']} {r['target']}" for r in run["runs"]}),
    }


def render_later(doc: dict[str, Any]) -> list[str]:
    """Which rows a later ``--merge`` run measured (their vs-genai peers are from it too)."""
    later = doc.get("later") or []
    if not later:
        return []
    lines = ["## Later runs merged into this page", ""]
    for run in later if isinstance(later, list) else [later]:
        lines.append(
            f"- {run.get('started_at')} → {run.get('finished_at')} (load average at start "
            f"{run.get('load average at start')}): {'; '.join(run.get('rows', []))}."
        )
    return [*lines, ""]


def render_accuracy(doc: dict[str, Any]) -> list[str]:
    rows = doc.get("accuracy") or []
    if not rows:
        return []
    lines = [
        "## What the quantized lm_head costs in accuracy",
        "",
        "`forge build` with verify on, for the ort engines timed above (int8 activations) "
        "with lm_head kept in float32 and with `quantize.quantize_lm_head: true`, against "
        f"transformers float32: greedy tokens of the default prompts ({NEW_TOKENS} new "
        f"tokens each) and {TEXT_TOKENS} tokens of bench/.data/enwiki-eval.txt. **token "
        "agreement** = greedy tokens equal to the reference's; **top-1** = teacher-forced "
        "argmax agreement; **KL** = mean KL(reference ‖ engine) in nats; **ppl ratio** = "
        "engine / reference perplexity. `quantize_lm_head` stays off by default (recipes "
        "keep their keys and numbers); the ort rows above use it for equal precision with "
        "the builder, which quantizes its head.",
        "",
        "| model | weights | lm_head | token agreement | top-1 | KL | ppl ratio |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        m = r["metrics"]
        lines.append(
            f"| {r['model']} | {r['precision']} | {r['lm_head']} | {_num(m.get('token_agreement'))} | "
            f"{_num(m.get('top1_agreement'))} | {_num(m.get('kl_mean'), 4)} | "
            f"{_num(m.get('ppl_ratio'), 4)} |"
        )
    return [*lines, ""]


def _num(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"
