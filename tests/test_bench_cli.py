"""`forge bench` and `forge run` through the real CLI on a tiny recipe (built on first use).

The two happy paths run the installed CLI in a subprocess; the bad inputs call the same typer
app in this process (each subprocess pays seconds of imports before it can fail)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.helpers import Run, assert_clean_error, forge, write_recipe
from tests.test_bench_lib import assert_consistent
from trtllm_forge.bench import BenchReport


@pytest.fixture(scope="module")
def recipe(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bench-cli")
    return write_recipe(
        root / "tiny.yaml",
        source={"path": str(tiny_models["llama"])},
        convert={"dtype": "float32"},
        build={"backend": "onnxruntime", "max_batch_size": 4, "max_input_len": 32,
               "max_seq_len": 64},
        verify={"enabled": False},
    )  # fmt: skip


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """One store for the module, so the recipe's engine is built once."""
    return {"FORGE_HOME": str(tmp_path_factory.mktemp("bench-home"))}


def in_process(*args: str) -> Run:
    from trtllm_forge.cli import app

    result = CliRunner().invoke(app, list(args))
    return Run(result.exit_code, result.stdout, result.stderr)


def test_bench_a_recipe_writes_json_plot_and_table(
    recipe: Path, home: dict[str, str], tmp_path: Path
) -> None:
    out, png = tmp_path / "r.json", tmp_path / "r.png"
    run = forge("bench", str(recipe), "--batch-sizes", "1,4", "--input-len", "8",
                "--output-len", "4", "--out", str(out), "--plot", str(png), env=home)  # fmt: skip
    assert run.code == 0, run.err
    assert "out tok/s" in run.out and "bs4 isl8 osl4" in run.out  # the table
    report = BenchReport.model_validate_json(out.read_text())
    assert [s.batch_size for s in report.scenarios] == [1, 4] and report.runtime == "forge"
    assert_consistent(report)
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_run_streams_the_greedy_continuation(
    recipe: Path, home: dict[str, str], tiny_models: dict[str, Path]
) -> None:
    """The text forge run prints is the reference model's greedy continuation, decoded."""
    from trtllm_forge.bench import open_runner
    from trtllm_forge.sources.tokenizer import load_tokenizer

    run = forge("run", str(recipe), "--prompt", "The quick brown fox", "-n", "6", env=home)
    assert run.code == 0, run.err
    tokenizer = load_tokenizer(tiny_models["llama"], needed_for="the test")
    ids = tokenizer("The quick brown fox")["input_ids"]
    reference = open_runner("transformers", tiny_models["llama"])
    tokens = [step[0] for step in reference.stream([ids], 6)]
    if tokenizer.eos_token_id in tokens:
        tokens = tokens[: tokens.index(tokenizer.eos_token_id)]
    assert run.out == tokenizer.decode(tokens, skip_special_tokens=True) + "\n"


def test_bad_bench_inputs_exit_2_with_a_clear_message(
    recipe: Path, home: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FORGE_HOME", home["FORGE_HOME"])
    not_engine = tmp_path / "empty"
    not_engine.mkdir()
    assert_clean_error(in_process("bench", str(not_engine)), 2, "not a forge engine directory")
    assert_clean_error(
        in_process("bench", str(recipe), "--batch-sizes", "8", "-q"),
        2, "batch size 8 is larger than the engine's max_batch_size 4",
    )  # fmt: skip
    dataset = tmp_path / "d.jsonl"
    dataset.write_text('{"task_id": 1, "input_ids": [5, 6], "output_tokens": 2}\n{"task_id": 2,\n')
    assert_clean_error(
        in_process("bench", str(recipe), "--dataset", str(dataset), "-q"),
        2, f"dataset line {dataset}:2: not valid JSON",
    )  # fmt: skip
    dataset.write_text(json.dumps({"task_id": 1, "input_ids": [5] * 33, "output_tokens": 2}))
    assert_clean_error(
        in_process("bench", str(recipe), "--dataset", str(dataset), "--batch-sizes", "1", "-q"),
        2, "a prompt of 33 tokens is longer than max_input_len 32",
    )  # fmt: skip
    assert_clean_error(
        in_process("run", str(recipe), "--prompt", "word " * 40), 2, "longer than max_input_len"
    )
    assert_clean_error(in_process("bench", str(recipe), "--input-len", "4,x"), 2, "comma-separated")
