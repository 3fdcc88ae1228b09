"""The whole pipeline through the real CLI: build → verify gates → reports → inspect."""

from __future__ import annotations

import json
import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.helpers import forge, write_recipe


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, tiny_models: dict[str, Path]) -> dict:  # type: ignore[type-arg]
    """One full float16 build shared by the module's tests (its own FORGE_HOME)."""
    root = tmp_path_factory.mktemp("full")
    model = root / "model"
    shutil.copytree(tiny_models["llama"], model)
    home = root / "home"
    recipe = write_recipe(
        root / "r.yaml",
        source={"path": str(model)},
        convert={"dtype": "float16"},
        parallel={"tp": 2},
        build={"max_input_len": 64, "max_seq_len": 128},
        verify={"max_new_tokens": 8, "gates": {"min_top1": 0.9, "max_kl": 0.0}},
    )
    run = forge("build", str(recipe), "--json", env={"FORGE_HOME": str(home)})
    return {"run": run, "home": home, "recipe": recipe, "model": model}


def test_failed_gate_exits_3_and_still_writes_reports(built: dict) -> None:  # type: ignore[type-arg]
    run = built["run"]
    assert run.code == 3, run.err
    doc = run.json()
    assert doc["ok"] is False and doc["error"]["kind"] == "gate"
    assert doc["verify"]["failed_gates"] == ["max_kl"]  # float16 weights: KL is small but not 0
    assert doc["verify"]["gates"]["min_top1"]["passed"] is True
    verify_dir = Path(doc["stages"][-1]["path"])
    report = json.loads((verify_dir / "report.json").read_text())
    assert report["passed"] is False
    junit = ET.parse(verify_dir / "junit.xml").getroot()
    failures = [tc.get("name") for tc in junit.iter("testcase") if tc.find("failure") is not None]
    assert failures == ["max_kl"]
    assert "FAIL" in (verify_dir / "report.md").read_text()


def test_cached_failed_verify_still_fails(built: dict) -> None:  # type: ignore[type-arg]
    again = forge("build", str(built["recipe"]), "--json", env={"FORGE_HOME": str(built["home"])})
    assert again.code == 3
    assert {s["status"] for s in again.json()["stages"]} == {"hit"}


def test_inspect_engine_checkpoint_and_key(built: dict) -> None:  # type: ignore[type-arg]
    env = {"FORGE_HOME": str(built["home"])}
    stages = {s["stage"]: s for s in built["run"].json()["stages"]}
    engine = forge("inspect", stages["build"]["path"], "--json", env=env).json()
    assert engine["kind"] == "engine"
    assert engine["engine"]["mapping"]["tp_size"] == 2
    assert [r["tp_rank"] for r in engine["engine"]["ranks"]] == [0, 1]
    assert {i["name"] for i in engine["engine"]["ranks"][0]["inputs"]} >= {
        "input_ids",
        "attention_mask",
    }
    convert_key = stages["convert"]["key"].split(":")[1]
    ckpt = forge("inspect", convert_key[:10], "--json", env=env).json()
    assert ckpt["kind"] == "checkpoint"
    assert ckpt["checkpoint"]["config"]["dtype"] == "float16"
    assert ckpt["artifact"]["key"] == stages["convert"]["key"]
    text = forge("inspect", stages["build"]["path"], env=env)
    assert text.code == 0 and "rank 1" in text.out
    # Unquantized: no TensorRT-LLM default group_size shown as if it applied (issue 17).
    assert "quantization none," in text.out and "group_size" not in text.out, text.out
    missing = forge("inspect", "ffffffffffff", env=env)
    assert missing.code == 2 and "no artifact key" in missing.err


def test_build_output_carries_no_raw_python_warnings(built: dict) -> None:  # type: ignore[type-arg]
    """Issue 17 item 15: library warnings (transformers' FutureWarnings and the like) are not
    printed into forge's output in Python's `file.py:N: SomeWarning: ...` form."""
    raw = re.compile(r"\.py:\d+: \w*Warning: ")
    assert not raw.search(built["run"].err), built["run"].err[-2000:]
    assert not raw.search(built["run"].out)
