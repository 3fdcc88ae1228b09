"""`forge quantize` and `forge export` through the real CLI on a tiny model: they share
the cache with `forge build`, and changing tp reuses the calibration."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from safetensors import safe_open

from tests.helpers import assert_clean_error, forge, write_recipe


@pytest.fixture
def model(tmp_path: Path, tiny_models: dict[str, Path]) -> Path:
    dst = tmp_path / "model"
    shutil.copytree(tiny_models["llama"], dst)
    return dst


def test_quantize_int8_wo_writes_checkpoint_and_summary(tmp_path: Path, model: Path) -> None:
    out = tmp_path / "ckpt"
    run = forge(
        "quantize",
        str(model),
        "--method",
        "int8_wo",
        "--dtype",
        "float32",
        "-o",
        str(out),
        "--json",
    )
    assert run.code == 0, run.err
    # Progress on stderr, as `forge build` shows it (it printed nothing; issue 17).
    assert "forge: calibrate ..." in run.err and "forge: calibrate done in" in run.err, run.err
    doc = run.json()
    assert doc["files"] == ["config.json", "rank0.safetensors"]
    config = json.loads((out / "config.json").read_text())
    assert config["quantization"]["quant_algo"] == "W8A16"
    assert (
        doc["quantized_modules"] == 2 * 5
    )  # 2 layers × (qkv, dense, fc, gate, proj); lm_head excluded
    with safe_open(str(out / "rank0.safetensors"), "pt") as f:
        qkv = f.get_tensor("transformer.layers.0.attention.qkv.weight")
    assert str(qkv.dtype) == "torch.int8"
    assert doc["bytes_after"] < doc["bytes_before"]
    ppl = doc["perplexity"]
    assert ppl["tokens"] > 100 and abs(ppl["delta_pct"]) < 5.0


def test_quantize_shares_calibration_with_build_and_tp_reuses_it(
    tmp_path: Path, model: Path
) -> None:
    out = tmp_path / "ckpt"
    quantized = forge(
        "quantize",
        str(model),
        "--method",
        "int8_wo",
        "--dtype",
        "float32",
        "-o",
        str(out),
        "--no-eval",
        "--json",
    )
    assert quantized.code == 0, quantized.err
    calib_key = next(s["key"] for s in quantized.json()["stages"] if s["stage"] == "calibrate")
    recipe = write_recipe(
        tmp_path / "r.yaml",
        source={"path": str(model)},
        convert={"dtype": "float32"},
        quantize={"method": "int8_wo"},
        parallel={"tp": 1},
    )
    plan = forge("plan", str(recipe), "--until", "calibrate", "--json").json()["stages"]
    assert [s["status"] for s in plan] == ["hit", "hit", "hit"]
    assert plan[2]["key"] == calib_key
    write_recipe(
        recipe,
        source={"path": str(model)},
        convert={"dtype": "float32"},
        quantize={"method": "int8_wo"},
        parallel={"tp": 2},
    )
    plan2 = forge("plan", str(recipe), "--until", "calibrate", "--json").json()["stages"]
    assert plan2[2]["status"] == "hit" and plan2[2]["key"] == calib_key


def test_export_tp2_pp2(tmp_path: Path, model: Path) -> None:
    recipe = write_recipe(
        tmp_path / "r.yaml",
        source={"path": str(model)},
        convert={"dtype": "float32"},
        parallel={"tp": 2, "pp": 2},
    )
    out = tmp_path / "export"
    run = forge("export", "trtllm-ckpt", str(recipe), str(out), "--json")
    assert run.code == 0, run.err
    assert sorted(p.name for p in out.iterdir()) == ["config.json"] + [
        f"rank{r}.safetensors" for r in range(4)
    ]
    mapping = json.loads((out / "config.json").read_text())["mapping"]
    assert (mapping["tp_size"], mapping["pp_size"], mapping["world_size"]) == (2, 2, 4)
    again = forge("export", "trtllm-ckpt", str(recipe), str(out))
    assert_clean_error(again, 2, "not empty", "--overwrite")


def test_quantize_unknown_method_is_a_clean_error(tmp_path: Path, model: Path) -> None:
    run = forge("quantize", str(model), "--method", "int3", "-o", str(tmp_path / "o"))
    assert_clean_error(run, 2, "int3")


def test_quantize_calibration_options_reach_the_recipe(tmp_path: Path, model: Path) -> None:
    """--calib-samples/--calib-dtype shape the calibration; --calib-device cuda without a
    GPU is refused before any work (exit 4), leaving --out untouched."""
    out = tmp_path / "ckpt"
    common = [str(model), "--method", "smoothquant", "--dtype", "float32", "--no-eval", "--json"]
    run = forge(
        "quantize", *common, "--calib-samples", "4", "--calib-dtype", "bfloat16", "-o", str(out)
    )
    assert run.code == 0, run.err
    recipe = Path(run.json()["recipe"]).read_text()
    assert "samples: 4" in recipe and "dtype: bfloat16" in recipe
    placement = json.loads((out / "config.json").read_text())
    assert placement["quantization"]["quant_algo"] == "W8A8_SQ_PER_CHANNEL"
    refused = forge("quantize", *common, "--calib-device", "cuda", "-o", str(tmp_path / "gpu"))
    assert_clean_error(refused, 4, "cuda")
    assert not (tmp_path / "gpu").exists() or not any((tmp_path / "gpu").iterdir())


def test_quantize_with_a_broken_tokenizer_is_a_source_error(tmp_path: Path, model: Path) -> None:
    """int8_wo reads no calibration text, so the summary's perplexity is the first
    thing that tokenizes: a corrupt tokenizer must be a located source error there too."""
    (model / "tokenizer.json").write_text('{"model": {"type": "BPE", "vocab": 3')
    run = forge("quantize", str(model), "--method", "int8_wo", "-o", str(tmp_path / "o"))
    assert_clean_error(run, 5, "tokenizer")


def test_export_of_weight_only_float32_is_refused_before_work(tmp_path: Path, model: Path) -> None:
    """trtllm-build's weight-only kernels take float16/bfloat16 activations (issue 17:
    a float32 W4A16_AWQ checkpoint was exported without a word)."""
    recipe = write_recipe(
        tmp_path / "r.yaml",
        source={"path": str(model)},
        convert={"dtype": "float32"},
        quantize={"method": "int8_wo"},
    )
    run = forge("export", "trtllm-ckpt", str(recipe), str(tmp_path / "out"))
    assert_clean_error(run, 2, "convert.dtype", "float16 or bfloat16", "r.yaml:")
    assert not (tmp_path / "out").exists()
