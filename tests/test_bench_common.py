"""bench/lib.py, what the benchmark modules share (the generated doc sections, the
perplexity of a logits function by forge's own metrics), and bench/entry.py, the one
``python -m bench NAME run|render`` entry over the modules' own command lines."""

from __future__ import annotations

import json
import math
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from bench import entry, lib, report
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


def test_entry_passes_a_modules_own_command_line(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[list[str] | None, list[str]]] = []
    module = types.ModuleType("bench.fake")
    module.__file__ = "/x/bench/fake.py"
    module.main = lambda argv=None: seen.append((argv, sys.argv[1:])) or 0  # type: ignore[attr-defined]
    fake = entry.Benchmark("fake", entry.Verb(module, ("run",)), entry.Verb(module, ("render",)))
    monkeypatch.setitem(entry.BENCHMARKS, "fake", fake)
    monkeypatch.setattr(sys, "argv", ["python"])
    assert entry.main(["fake", "run", "--out", "o.json"]) == 0
    assert entry.main(["fake", "render"]) == 0
    assert seen == [(["run", "--out", "o.json"],) * 2, (["render"],) * 2]


def test_entry_without_a_name_is_the_performance_benchmark(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str] | None] = []
    monkeypatch.setattr(entry.perf, "main", lambda argv=None: calls.append(argv) or 0)
    assert entry.main([]) == 0 and entry.main(["--noop"]) == 0
    assert calls == [[], ["--noop"]]


def test_entry_refuses_unknown_names_and_renders_without_results(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit, match="python -m bench NAME run"):
        entry.main(["nosuch", "run"])
    with pytest.raises(SystemExit, match="python -m bench NAME run"):
        entry.main(["quant", "draw"])
    with pytest.raises(SystemExit, match="store_size render: its run writes"):
        entry.main(["store_size", "render"])
    assert entry.main(["list"]) == 0
    listed = capsys.readouterr().out
    assert all(f"  {name} " in listed for name in entry.BENCHMARKS)


def test_committed_noop_section_is_rendered_from_committed_results() -> None:
    results = json.loads((lib.RESULTS / "noop.json").read_text())
    text = (lib.DOCS / "performance.md").read_text()
    section = text.split(report.NOOP_BEGIN, 1)[1].split(report.NOOP_END, 1)[0]
    assert section == "\n" + report.render_noop(results), "run: python -m bench noop render"


@pytest.fixture(scope="module")
def smoothquant_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama with static per-tensor SmoothQuant (what bench.quant_sq ablates)."""
    torch = pytest.importorskip("torch")
    from tests.tinymodels import make_tiny_hf
    from trtllm_forge.checkpoint.convert import convert_hf_checkpoint
    from trtllm_forge.quant.quantize import quantize_checkpoint

    root = tmp_path_factory.mktemp("bench-sq")
    hf = make_tiny_hf("llama", root / "hf", seed=1)
    convert_hf_checkpoint(hf, root / "canonical", dtype="float32")
    quantize_checkpoint(
        hf_dir=hf,
        canonical_dir=root / "canonical",
        out_dir=root / "sq",
        method="smoothquant",
        params={"alpha": 0.5, "activations": "per_tensor"},
        calibration=torch.randint(3, 250, (8, 32), generator=torch.Generator().manual_seed(0)),
    )
    return root / "sq"


def test_activation_hooks_wrap_the_fake_quant_through_its_public_attribute(
    smoothquant_ckpt: Path,
) -> None:
    """bench.quant's nudge and bench.quant_sq's ablations wrap ``activation_hook``: the
    ablation of nothing is the fake quant itself, the nudge moves it by float noise only."""
    torch = pytest.importorskip("torch")
    from bench import quant, quant_sq
    from trtllm_forge.quant.fakequant import FakeQuantForward

    windows = torch.randint(3, 250, (2, 16), generator=torch.Generator().manual_seed(5))
    fake = FakeQuantForward(smoothquant_ckpt)
    try:
        plain = lib.window_perplexity(lib.fake_quant_logits(fake), windows)
    finally:
        fake.close()
    base = quant_sq.Ablation(smoothquant_ckpt, collect=True)
    assert base.perplexity(windows) == plain
    assert set(base.steps) and all(quant_sq.kind(m) in quant_sq.KINDS for m in base.steps)
    as_float = quant_sq.Ablation(smoothquant_ckpt, "float", quant_sq.KINDS).perplexity(windows)
    assert as_float != plain
    noisy = quant.nudged(FakeQuantForward(smoothquant_ckpt))
    try:
        nudged = lib.window_perplexity(lib.fake_quant_logits(noisy), windows)
    finally:
        noisy.close()
    assert nudged == pytest.approx(plain, rel=1e-3)


def test_gap_study_is_rendered_from_committed_results_and_cites_the_gpu_rows() -> None:
    from bench import quant_gap

    results = json.loads(quant_gap.RESULTS.read_text())
    gpu = json.loads(quant_gap.GPU_RESULTS.read_text())
    assert quant_gap.render(results, gpu) == quant_gap.DOC.read_text(), (
        "run: python -m bench quant_gap render"
    )
    gpu["methods"]["awq"]["forge"]["perplexity"] = 99.0  # the text follows the results file
    assert "(99.00 vs " in quant_gap.render(results, gpu)
    assert "not measured yet" in quant_gap.render(results, None)


def test_forge_build_runs_the_recipe_through_the_api_and_reuses_the_store(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    doc = {
        "schema_version": 1,
        "name": "bench-lib",
        "source": {"path": str(tiny_models["llama"])},
        "convert": {"dtype": "float32"},
        "quantize": {"method": "int8_wo"},
        "build": {"backend": "onnxruntime", "max_batch_size": 1, "max_input_len": 8,
                  "max_seq_len": 16},
        "verify": {"enabled": False},
    }  # fmt: skip
    home = tmp_path / "home"
    first = lib.forge_build(doc, tmp_path / "r.yaml", home=home, until="calibrate")
    ckpt = lib.checkpoint_of(first.artifacts["calibrate"])
    assert (ckpt / "config.json").is_file() and (ckpt / "rank0.safetensors").is_file()
    again = lib.forge_build(doc, tmp_path / "r.yaml", home=home, until="calibrate")
    assert lib.checkpoint_of(again.artifacts["calibrate"]) == ckpt
    assert {r.status for r in first} == {"built"} and {r.status for r in again} == {"hit"}
