"""bench.quant_formats: rows merge by label over the same evaluation windows only, and the
doc section decides the 0.5 % bar against ModelOpt's figure from the rows themselves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench import quant_formats as qf
from bench import quant_formats_doc as doc


def _row(label: str, ppl: float, modelopt: float | None, target: str) -> dict[str, Any]:
    row: dict[str, Any] = {
        "label": label,
        "target": target,
        "quantized_modules": 150,
        "calibration": {"samples": 8, "seq_len": 256},
        "calibrate_seconds": 1.0,
        "size_bytes": 3e8,
        "ppl_fakequant": ppl,
        "ppl_artifact": ppl,
        "kl_artifact": 0.01,
        "top1_artifact": 0.9,
        "artifact_vs_fakequant": {"max_abs_logit": 0, "mean_abs_logit": 0, "argmax_differs": 0},
        "dtype": "float32",
    }
    if modelopt is None:
        row["modelopt_error"] = "AssertionError: amax must be a CUDA tensor"
    else:
        row["ppl_modelopt"] = modelopt
    return row


def _results(rows: list[dict[str, Any]], ref: float = 20.0) -> dict[str, Any]:
    run = {"command": "c", "machine": "m", "wall_seconds": 60.0}
    run["versions"] = dict.fromkeys(
        ("torch", "transformers", "onnxruntime", "nvidia-modelopt"), "1"
    )
    new = {"reference_ppl": ref, "settings": _settings(), "rows": rows}
    return qf.merge(None, new, [run])


def _settings() -> dict[str, Any]:
    return {"windows": 8, "window_len": 512, "samples": 64, "seq_len": 256, "awq_samples": 8}


def test_merge_keeps_rows_by_label_and_refuses_other_windows() -> None:
    first = _results([_row("a", 21.0, 21.0, "onnxruntime engine")])
    again = {"reference_ppl": 20.0, "rows": [_row("a", 22.0, 21.0, "onnxruntime engine")]}
    merged = qf.merge(first, again, [{"command": "d"}])
    assert merged["rows"]["a"]["ppl_artifact"] == 22.0
    assert [r["command"] for r in merged["runs"]] == ["c", "d"]
    with pytest.raises(SystemExit):
        qf.merge(first, {**again, "reference_ppl": 20.5}, [])


def test_bar_is_decided_from_the_figures(tmp_path: Path) -> None:
    results = _results(
        [
            _row("near", 20.09, 20.0, "onnxruntime engine"),  # +0.45 %
            _row("far", 20.2, 20.0, "onnxruntime engine"),  # +1.0 %
            _row("cpu-only", 21.0, None, "modelopt"),
        ]
    )
    lines = "\n".join(doc.bar_lines(results))
    assert "| near | 20.090 vs 20.000 (+0.45 %) | 20.090 (+0.45 %) | **yes** |" in lines
    assert "| far | 20.200 vs 20.000 (+1.00 %) | 20.200 (+1.00 %) | **no** (cause below) |" in lines
    assert "no ModelOpt figure: AssertionError: amax must be a CUDA tensor" in lines
    page = tmp_path / "quantization.md"
    page.write_text(f"# title\n\n{doc.ANCHOR}\n\n## How to read\n")
    doc.write(results, page)
    doc.write(results, page)  # a second write replaces the section, never duplicates it
    text = page.read_text()
    assert text.count(doc.BEGIN) == 1 and text.index(doc.ANCHOR) < text.index(doc.BEGIN)
    assert text.rstrip().endswith("## How to read")
