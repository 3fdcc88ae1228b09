"""`python -m bench.layerwise_gpu render` writes its docs/performance.md section from a
results file: the goal verdicts follow the ratios, runs a time limit stopped are named,
a method measured in a second call merges in, and the rest of the document is kept."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench import layerwise_gpu as lw

ROOT = Path(__file__).resolve().parents[1]


def _results(**runs: dict[str, Any]) -> dict[str, Any]:
    shape = {
        "name": "llama-8b",
        "hidden_size": 4096,
        "num_hidden_layers": 16,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "intermediate_size": 14336,
        "vocab_size": 128256,
        "max_shard_bytes": 5_000_000_000,
        "full_layers": 32,
        "parameters_b": 4.54,
        "checkpoint_gb": 9.08,
    }
    machine = {"cpu_cores": 16, "python": "3.12", "torch": "2.11", "transformers": "5.17"}
    return {
        "date": "2026-12-02 12:00 UTC",
        "command": "python -m bench.layerwise_gpu run --methods awq",
        "device": "cuda",
        "dtype": "float16",
        "machine": {**machine, "modelopt": "0.47.0", "gpu": "H200", "gpu_memory_gib": 139.8},
        "shape": shape,
        "group": 128,
        "calibration": {"tokens": "random ids, seed 0", "samples": 8, "seq_len": 256},
        "storage": "ext4",
        "prepare": {"synth_s": 30.0, "convert_s": 40.0, "cuda_ext_built": True, "total_s": 75},
        "runs": runs,
        "total_s": 400.0,
    }


def _run(seconds: float, gpu: float, calibrate: float | None = None) -> dict[str, Any]:
    run = {"seconds": seconds, "peak_gpu_gib": gpu, "peak_gpu_reserved_gib": gpu + 1}
    run["peak_rss_gib"] = 3.0
    if calibrate is not None:
        run["calibrate_s"] = calibrate
    return run


AWQ = {
    "modelopt": _run(50.0, 9.5, 40.0),
    "forge_layerwise": _run(55.0, 1.8),
    "forge_whole": _run(90.0, 9.9, 35.0),
}


def test_goal_verdicts_follow_the_ratios() -> None:
    ratios = lw.goal_ratios(AWQ)
    assert ratios["memory"] == pytest.approx(1.8 / 9.9)
    assert ratios["time"] == pytest.approx(55 / 50)
    text = lw.render(_results(awq=AWQ))
    assert "- awq: memory 0.18x the whole-model run (meets); time 1.10x ModelOpt in place " in (
        text
    )
    slow = {**AWQ, "forge_layerwise": _run(70.0, 3.0)}
    assert "memory 0.30x the whole-model run (misses); time 1.40x ModelOpt in place (misses)" in (
        lw.render(_results(awq=slow))
    )
    assert "cut to 16 of its 32 decoder layers" in text


def test_stopped_skipped_and_failed_runs_are_named() -> None:
    gptq = {
        "modelopt": {"timed_out_after_s": 61.5},
        "forge_layerwise": {"failed": "exit 1", "log_tail": "Traceback"},
        "forge_whole": {"skipped": "12 s of the budget left"},
    }
    text = lw.render(_results(awq=AWQ, gptq=gptq))
    assert f"| gptq | {lw.LABELS['modelopt']} | stopped at the budget after 61.5 s" in text
    assert "| gptq | forge, layer by layer | failed (exit 1)" in text
    assert "| gptq | forge, whole model | not run (12 s of the budget left)" in text
    assert (
        "- gptq: memory over the whole-model run not measured; time over ModelOpt in place "
        "not measured." in text
    )


def test_a_second_call_merges_and_the_section_is_rewritten_in_place(tmp_path: Path) -> None:
    first, second = tmp_path / "awq.json", tmp_path / "gptq.json"
    first.write_text(json.dumps(_results(awq=AWQ)))
    later = _results(gptq=AWQ)
    later["command"] = "python -m bench.layerwise_gpu run --methods gptq"
    second.write_text(json.dumps(later))
    merged = lw.merged([first, second])
    assert list(merged["runs"]) == ["awq", "gptq"]
    assert merged["command"].splitlines()[1].endswith("--methods gptq")
    doc = tmp_path / "performance.md"
    doc.write_text(f"# Performance\n\nabove\n\n{lw.BEGIN}\nSTALE\n{lw.END}\n\nbelow\n")
    lw.write_section(doc, lw.render(merged))
    once = doc.read_text()
    lw.write_section(doc, lw.render(merged))
    assert doc.read_text() == once
    assert once.startswith("# Performance\n\nabove\n\n") and once.endswith("\nbelow\n")
    assert "STALE" not in once and "| gptq | forge, whole model | 90.0 s | 35.0 s |" in once


def test_modelopt_gets_forge_numerics() -> None:
    mtq = pytest.importorskip("modelopt.torch.quantization")
    for method in ("awq", "gptq"):
        config = lw.modelopt_config(mtq, method, 64)
        weights = [e for e in config["quant_cfg"] if e.get("quantizer_name") == "*weight_quantizer"]
        assert weights[0]["cfg"]["block_sizes"] == {-1: 64, "type": "static"}
    gptq = lw.modelopt_config(mtq, "gptq", 128)["algorithm"]
    assert gptq == {"method": "gptq", "perc_damp": 0.01, "block_size": 128}
    assert lw.params("gptq", 128) == {"group_size": 128, "damping": 0.01, "act_order": False}


def test_committed_section_is_rendered_from_committed_results() -> None:
    if not lw.RESULTS.exists():
        pytest.skip("bench/results/layerwise_gpu.json not measured yet")
    committed = (ROOT / "docs" / "performance.md").read_text()
    section = committed.split(lw.BEGIN, 1)[1].split(lw.END, 1)[0].strip("\n")
    assert section == lw.render(lw.merged(list(lw.COMMITTED))).strip("\n"), (
        "run: python -m bench.layerwise_gpu render"
    )


def test_the_modelopt_run_gives_an_in_place_row_and_an_export_row() -> None:
    """Both rows come from the one ModelOpt run's JSON; each ratio names its peer row."""
    entry = {**_run(4.0, 9.0, 2.7), "load_s": 1.3}
    entry["export"] = {"export_s": 6.0, "output_gb": 5.5, **_run(0, 12.0)}
    del entry["export"]["seconds"]
    rows = lw.split_rows("modelopt", entry)
    assert rows["modelopt"]["seconds"] == 4.0 and "export" not in rows["modelopt"]
    assert rows["modelopt_export"]["seconds"] == 10.0
    assert rows["modelopt_export"]["peak_gpu_gib"] == 12.0
    assert rows["modelopt_export"]["calibrate_s"] == 2.7
    runs = {**rows, "forge_layerwise": _run(11.0, 2.0), "forge_whole": _run(20.0, 10.0, 3.0)}
    text = lw.render(_results(awq=runs))
    assert f"| awq | {lw.LABELS['modelopt']} | 4.0 s | 2.7 s | 9.00 GiB |" in text
    assert f"| awq | {lw.LABELS['modelopt_export']} | 10.0 s | 2.7 s | 12.00 GiB |" in text
    assert (
        "- awq: memory 0.20x the whole-model run (meets); time 2.75x ModelOpt in place "
        "(misses); time 1.10x ModelOpt + export (meets)." in text
    )
    stopped = {"timed_out_after_s": 90.0, "limit": "the 90 s cap per run"}
    assert lw.split_rows("modelopt", stopped) == {
        "modelopt": stopped,
        "modelopt_export": stopped,
    }
    assert "stopped at the 90 s cap per run after 90.0 s" in lw.render(
        _results(gptq=lw.split_rows("modelopt", stopped))
    )


def test_gptq_runs_forge_first_and_a_cap_limits_one_run() -> None:
    assert lw.ORDER["gptq"][-1] == "modelopt" and lw.ORDER["awq"][0] == "modelopt"
    assert lw.run_limit(300.0, 0.0) == (300.0, "the budget")
    assert lw.run_limit(300.0, 120.0) == (120.0, "the 120 s cap per run")
    assert lw.run_limit(100.0, 120.0) == (100.0, "the budget")


def test_a_stopped_modelopt_run_bounds_the_time_ratio() -> None:
    """ModelOpt stopped at its cap while forge's layer-by-layer run finished: the ratio is
    bounded by forge's time over the seconds ModelOpt ran; no bound otherwise."""
    from bench import layerwise_gpu

    finished = {"seconds": 60.0, "peak_gpu_gib": 1.0, "peak_rss_gib": 1.0}
    runs = {"forge_layerwise": finished, "modelopt": {"timed_out_after_s": 150.0}}
    assert layerwise_gpu.stopped_peer_bound(runs) == 60.0 / 150.0
    assert layerwise_gpu.stopped_peer_bound({**runs, "modelopt": {"seconds": 4.0}}) is None
    assert layerwise_gpu.stopped_peer_bound({"modelopt": {"timed_out_after_s": 1.0}}) is None
