"""Hugging Face targets through the real CLI: build + verify, inspect, export, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.helpers import assert_clean_error, forge, write_recipe


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory, tiny_models: dict[str, Path]) -> Path:
    target = tmp_path_factory.mktemp("hf-cli") / "model"
    shutil.copytree(tiny_models["llama"], target)
    return target


def _recipe(path: Path, model: Path, *, fmt: str, **quantize: object) -> Path:
    return write_recipe(
        path,
        source={"path": str(model)},
        convert={"dtype": "float16"},
        quantize=quantize or {"method": "int8_wo"},
        parallel={"tp": 2},
        build={"backend": "hf", "format": fmt},
        verify={
            "prompts": ["The quick brown fox"],
            "texts": ["Once upon a time there was a small model. " * 4],
            "max_new_tokens": 4,
            "max_text_tokens": 48,
            "gates": {"min_top1": 0.8},
        },
    )


def _artifacts(home: Path) -> list[Path]:
    root = home / "artifacts"
    return sorted(p for p in root.rglob("*") if p.is_dir()) if root.exists() else []


def test_build_both_formats_reuses_calibration_and_inspects(model: Path, tmp_path: Path) -> None:
    env = {"FORGE_HOME": str(tmp_path / "home")}
    ct = forge(
        "build",
        str(_recipe(tmp_path / "ct.yaml", model, fmt="compressed-tensors")),
        "--json",
        env=env,
    )
    assert ct.code == 0, ct.err
    doc = ct.json()
    assert doc["verify"]["passed"] is True
    mo = forge(
        "build", str(_recipe(tmp_path / "mo.yaml", model, fmt="modelopt")), "--json", env=env
    )
    assert mo.code == 0, mo.err
    status = {s["stage"]: s["status"] for s in mo.json()["stages"]}
    assert status["calibrate"] == "hit" and status["build"] == "built"
    build_dir = Path(next(s["path"] for s in mo.json()["stages"] if s["stage"] == "build"))
    folder = build_dir / "hf"
    assert (folder / "hf_quant_config.json").is_file()
    assert (folder / "model.safetensors.index.json").is_file()
    assert json.loads((folder / "forge.json").read_text())["serving"]["tensor_parallel_size"] == 2
    shown = forge("inspect", str(build_dir), "--json", env=env)
    assert shown.code == 0, shown.err
    info = shown.json()["hf_folder"]
    assert (info["format"], info["quant_algo"], info["kv_cache"]) == ("modelopt", "W8A16", None)
    assert "lm_head" in info["excluded_modules"]


def test_uncarriable_combination_exits_2_at_plan_time(model: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    recipe = _recipe(
        tmp_path / "r.yaml", model, fmt="compressed-tensors", method="awq", group_size=32
    )
    run = forge("build", str(recipe), env={"FORGE_HOME": str(home)})
    assert_clean_error(run, 2, "r.yaml:", "build.format", "formats that can: modelopt")
    assert _artifacts(home) == []


def test_export_refuses_before_building(model: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    recipe = _recipe(tmp_path / "r.yaml", model, fmt="modelopt", method="int8_wo", kv_cache="int8")
    dest = tmp_path / "out"
    run = forge(
        "export",
        "hf",
        str(recipe),
        str(dest),
        "--format",
        "modelopt",
        env={"FORGE_HOME": str(home)},
    )
    assert_clean_error(run, 2, "INT8 KV", "formats that can: compressed-tensors")
    assert not dest.exists() and _artifacts(home) == []


def test_exclude_matching_nothing_exits_2(model: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    recipe = _recipe(
        tmp_path / "r.yaml", model, fmt="compressed-tensors", method="int8_wo", exclude=["*q_porj"]
    )
    run = forge("build", str(recipe), env={"FORGE_HOME": str(home)})
    assert_clean_error(run, 2, "q_porj", "matches no module")
    assert not any(p.parent.name == "calibrate" for p in _artifacts(home))


def test_inspect_damaged_quantization_config_exits_5(tmp_path: Path) -> None:
    folder = tmp_path / "damaged"
    folder.mkdir()
    config = {
        "architectures": ["LlamaForCausalLM"],
        "quantization_config": {
            "quant_method": "compressed-tensors",
            "format": "pack-quantized",
            "config_groups": {
                "group_0": {"targets": ["Linear"], "weights": {"num_bits": 40, "type": "int"}}
            },
        },
    }
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "model.safetensors").write_bytes(b"")
    run = forge("inspect", str(folder))
    assert_clean_error(run, 5, "num_bits must be 1..8", "damaged")


@pytest.mark.parametrize(
    ("quantize", "field", "fragment"),
    [
        ({"method": "int8_wo"}, "quantize.method", "Conv1D"),
        ({"method": "none", "kv_cache": "fp8"}, "quantize.kv_cache", "fuses q, k and v"),
    ],
)
def test_gpt2_what_a_folder_cannot_hold_exits_2_at_plan_time(
    quantize: dict[str, str], field: str, fragment: str, tmp_path: Path
) -> None:
    from tests.tinymodels import make_tiny_hf

    gpt2 = make_tiny_hf("gpt2", tmp_path / "gpt2", with_tokenizer=True)
    recipe = _recipe(tmp_path / "r.yaml", gpt2, fmt="compressed-tensors", **quantize)
    run = forge("plan", str(recipe))
    assert_clean_error(run, 2, "r.yaml:", field, fragment)
