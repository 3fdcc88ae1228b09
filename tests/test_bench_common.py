"""bench/lib.py, what the benchmark modules share: the generated doc sections and the
perplexity of a logits function (forge's own metrics)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from bench import lib
from trtllm_forge.engine import metrics

BEGIN, END = "<!-- x:begin -->", "<!-- x:end -->"


def test_section_is_replaced_and_the_rest_kept_byte_for_byte(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text(f"# T\n\nabove\n{BEGIN}\nSTALE\n{END}\n\n\nbelow  \n")
    lib.write_section(doc, BEGIN, END, "fresh\n")
    once = doc.read_text()
    assert once == f"# T\n\nabove\n{BEGIN}\nfresh\n{END}\n\n\nbelow  \n"
    lib.write_section(doc, BEGIN, END, "fresh\n")
    assert doc.read_text() == once


def test_section_is_appended_when_missing(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text("# T\n\ntext\n\n")
    lib.write_section(doc, BEGIN, END, "body\n")
    assert doc.read_text() == f"# T\n\ntext\n\n{BEGIN}\nbody\n{END}\n"
    new = tmp_path / "sub" / "new.md"
    lib.write_section(new, BEGIN, END, "body\n", new_doc="# New\n")
    assert new.read_text() == f"# New\n\n{BEGIN}\nbody\n{END}\n"


def test_an_end_marker_before_the_begin_marker_is_not_a_section() -> None:
    text = f"{END}\n{BEGIN}\n"
    assert not lib.has_section(text, BEGIN, END)
    assert lib.put_section(text, BEGIN, END, "S") == f"{END}\n{BEGIN}\n\nS\n"


def test_window_perplexity_is_forge_metrics() -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    windows = torch.tensor(rng.integers(0, 11, size=(3, 7)))
    table = rng.normal(size=(11, 11)).astype(np.float32)

    def logits_of(ids: object) -> np.ndarray:
        return table[np.asarray(ids)]

    nll = np.concatenate([metrics.next_token_nll(table[w.numpy()], w.tolist()) for w in windows])
    expected = metrics.perplexity(nll)
    assert lib.window_perplexity(logits_of, windows) == pytest.approx(expected, rel=1e-12)
    assert math.isfinite(expected) and nll.size == 3 * 6
