"""The `forge` command table: `--help` lists every command without loading one, a command
loads only its own module, errors render one way, and `forge quantize` errors name the
option the user typed (issues 11 and 16)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import assert_clean_error, forge, write_recipe
from trtllm_forge.cli.common import SUMMARIES, render_error
from trtllm_forge.cli.lazy import GROUPS, LOADERS, make_command
from trtllm_forge.errors import ExitCode, ForgeError, Location

# Runs `forge ARGS...` in this process, then reports which command modules it imported.
_LOADED = """
import json, sys
from trtllm_forge.cli import main
sys.argv = ["forge", *sys.argv[1:]]
try:
    main()
except SystemExit as exit:
    code = exit.code
loaded = sorted(m for m in sys.modules if m.startswith("trtllm_forge.cli."))
heavy = [m for m in ("torch", "numpy", "onnx", "onnxruntime", "transformers") if m in sys.modules]
print(json.dumps({"code": code, "loaded": loaded, "heavy": heavy}), file=sys.stderr)
"""


def _forge_loading(*args: str) -> tuple[str, dict]:  # type: ignore[type-arg]
    proc = subprocess.run(
        [sys.executable, "-c", _LOADED, *args], capture_output=True, text=True, timeout=300
    )
    return proc.stdout, json.loads(proc.stderr.strip().splitlines()[-1])


def test_help_lists_every_command_without_loading_any() -> None:
    out, report = _forge_loading("--help")
    assert report["code"] in (0, None)
    rows = out.split("Commands:")[1].splitlines()
    listed = [row.split()[0] for row in rows if row.startswith("  ") and row[2] != " "]
    assert listed == list(SUMMARIES)
    for summary in SUMMARIES.values():
        assert " ".join(summary.split()[:4]) in " ".join(out.split()), summary
    assert report["loaded"] == ["trtllm_forge.cli.common", "trtllm_forge.cli.lazy"]


def test_a_command_loads_only_its_own_module(tmp_path: Path) -> None:
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "tiny-llama.yaml"
    out, report = _forge_loading("recipe", "show", str(recipe), "--json")
    assert report["code"] in (0, None) and json.loads(out)["name"] == "tiny-llama"
    assert report["loaded"] == [
        "trtllm_forge.cli.common",
        "trtllm_forge.cli.lazy",
        "trtllm_forge.cli.recipe",
    ]


def test_build_checks_before_any_stage_without_loading_torch_numpy_or_onnx(
    tmp_path: Path, tiny_models: dict[str, Path]
) -> None:
    """Everything `forge build` checks before its first stage (backend, calibration and
    verify devices, the recipe and its model) stays off the heavy libraries, so a no-op
    build starts in a fraction of a second (docs/performance.md); `--force nosuch` stops
    the run right after those checks."""
    recipe = write_recipe(
        tmp_path / "r.yaml",
        source={"path": str(tiny_models["llama"])},
        build={"backend": "onnxruntime", "max_batch_size": 1, "max_input_len": 8,
               "max_seq_len": 16},
    )  # fmt: skip
    _, report = _forge_loading("build", str(recipe), "--force", "nosuch")
    assert report["code"] == 2
    assert report["heavy"] == []


@pytest.mark.parametrize("name", list(SUMMARIES))
def test_each_command_carries_the_summary_help_lists(name: str) -> None:
    command = make_command(name)
    assert command.name == name
    assert command.get_short_help_str(limit=500) == SUMMARIES[name]
    assert (name in GROUPS) == hasattr(command, "commands")


def test_the_table_and_the_loaders_name_the_same_commands() -> None:
    assert list(LOADERS) == list(SUMMARIES)


def test_an_unknown_command_is_refused_with_a_suggestion() -> None:
    run = forge("buidl", "recipes/tiny-llama.yaml")
    assert run.code == 2
    assert "No such command 'buidl'" in run.err and "'build'" in run.err


def test_an_error_without_a_hint_prints_no_hint_line(capsys: pytest.CaptureFixture[str]) -> None:
    render_error(ForgeError(ExitCode.RECIPE, "tp [red]3[/red] does not divide 4 heads"))
    err = capsys.readouterr().err
    assert err == "error: tp [red]3[/red] does not divide 4 heads\n"


def test_an_error_renders_where_and_hint(capsys: pytest.CaptureFixture[str]) -> None:
    where = Location("r.yaml", 3, 5, "parallel.tp")
    render_error(ForgeError(ExitCode.RECIPE, "bad tp", hint="use 1 or 2", location=where))
    err = capsys.readouterr().err
    assert err == "error: r.yaml:3:5: parallel.tp: bad tp\n  hint: use 1 or 2\n"


@pytest.fixture
def model(tmp_path: Path, tiny_models: dict[str, Path]) -> Path:
    dst = tmp_path / "model"
    shutil.copytree(tiny_models["llama"], dst)
    return dst


def test_quantize_errors_name_the_option_not_the_recipe_it_writes(
    tmp_path: Path, model: Path
) -> None:
    """A bad --group-size used to point at …/recipes/quantize-<id>.yaml:8:3 (issue 16)."""
    out = str(tmp_path / "o")
    bad_group = forge("quantize", str(model), "-m", "int4_wo", "--group-size", "7", "-o", out)
    assert_clean_error(bad_group, 2, "--group-size: ")
    assert "quantize-" not in bad_group.err and ".yaml" not in bad_group.err
    bad_tp = forge("quantize", str(model), "-m", "int8_wo", "--tp", "3", "-o", out, "--json")
    assert bad_tp.code == 2, bad_tp.err
    error = bad_tp.json()["error"]
    assert error["message"].startswith("--tp: ") and error["location"] is None
    assert error["hint"], error
