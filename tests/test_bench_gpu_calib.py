"""The GPU block of docs/performance.md is generated from bench/results/gpu_calib.json by
`python -m bench.gpu_calib render`, and rendering leaves the rest of the document alone."""

from __future__ import annotations

import json
from pathlib import Path

from bench import gpu_calib

ROOT = Path(__file__).resolve().parents[1]


def _block(text: str) -> str:
    return text.split(gpu_calib.BEGIN, 1)[1].split(gpu_calib.END, 1)[0].strip("\n")


def test_committed_block_is_rendered_from_committed_results() -> None:
    results = json.loads(gpu_calib.RESULTS.read_text())
    committed = _block((ROOT / "docs" / "performance.md").read_text())
    assert committed == gpu_calib.render(results).strip("\n"), (
        "run: python -m bench.gpu_calib render"
    )


def test_render_replaces_only_the_block_and_is_idempotent(tmp_path: Path) -> None:
    results = json.loads(gpu_calib.RESULTS.read_text())
    doc = tmp_path / "performance.md"
    doc.write_text(
        f"# Performance\n\nabove\n\n{gpu_calib.BEGIN}\nSTALE-TEXT\n{gpu_calib.END}\n\nbelow\n"
    )
    gpu_calib.write_block(doc, gpu_calib.render(results))
    once = doc.read_text()
    gpu_calib.write_block(doc, gpu_calib.render(results))
    assert doc.read_text() == once
    assert once.startswith("# Performance\n\nabove\n\n") and once.endswith("\nbelow\n")
    assert "STALE-TEXT" not in once and "| gptq |" in _block(once)


def test_render_appends_a_block_when_the_doc_has_none(tmp_path: Path) -> None:
    doc = tmp_path / "performance.md"
    doc.write_text("# Performance\n\nCPU text\n")
    gpu_calib.write_block(doc, "## GPU\n")
    assert (
        doc.read_text()
        == f"# Performance\n\nCPU text\n\n{gpu_calib.BEGIN}\n## GPU\n{gpu_calib.END}\n"
    )
