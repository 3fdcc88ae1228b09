"""quantize.calibration.device / dtype: validated by the schema, part of the calibrate
key (but cpu/float32 keys as before the fields existed), `cuda` without a GPU exits 4
before any work, and a non-default placement runs end to end (bfloat16 on the CPU)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import ValidationError
from safetensors import safe_open

from tests.helpers import assert_clean_error, forge, write_recipe
from trtllm_forge.errors import ExitCode, ForgeError
from trtllm_forge.quant.device import Placement, key_fields
from trtllm_forge.recipe.schema import Calibration

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")


@pytest.fixture
def model(tmp_path: Path, tiny_models: dict[str, Path]) -> Path:
    dst = tmp_path / "model"
    shutil.copytree(tiny_models["llama"], dst)
    return dst


def _recipe(tmp_path: Path, model: Path, name: str, **calibration: Any) -> Path:
    quantize: dict[str, Any] = {"method": "int8_wo"}
    if calibration:
        quantize["calibration"] = calibration
    return write_recipe(
        tmp_path / f"{name}.yaml",
        source={"path": str(model)},
        convert={"dtype": "float32"},
        quantize=quantize,
    )


def test_schema_accepts_devices_and_dtypes_and_rejects_others() -> None:
    assert (Calibration().device, Calibration().dtype) == ("cpu", "float32")
    assert Calibration(device="cuda", dtype="float16").device == "cuda"
    assert Calibration(device="auto", dtype="bfloat16").dtype == "bfloat16"
    with pytest.raises(ValidationError, match="device"):
        Calibration(device="tpu")
    with pytest.raises(ValidationError, match="dtype"):
        Calibration(dtype="int8")


def test_recipe_with_unknown_device_is_a_recipe_error(tmp_path: Path, model: Path) -> None:
    run = forge("plan", str(_recipe(tmp_path, model, "bad", device="gpu")))
    assert_clean_error(run, 2, "quantize.calibration.device")


def test_key_fields_default_empty_cuda_kept_auto_resolved() -> None:
    assert key_fields("cpu", "float32") == {}
    assert key_fields("cpu", "bfloat16") == {
        "quantize.calibration.device": "cpu",
        "quantize.calibration.dtype": "bfloat16",
    }
    assert key_fields("cuda", "float16")["quantize.calibration.device"] == "cuda"
    resolved = "cuda" if torch.cuda.is_available() else "cpu"
    assert key_fields("auto", "float16")["quantize.calibration.device"] == resolved


def test_calibrate_keys_differ_by_placement(tmp_path: Path, model: Path) -> None:
    built = forge("build", str(_recipe(tmp_path, model, "base")), "--until", "convert")
    assert built.code == 0, built.err

    def calibrate_key(name: str, **calibration: Any) -> str:
        recipe = _recipe(tmp_path, model, name, **calibration)
        run = forge("plan", str(recipe), "--until", "calibrate", "--json")
        assert run.code == 0, run.err
        stage = run.json()["stages"][2]
        assert stage["stage"] == "calibrate" and stage["key"], stage
        return str(stage["key"])

    default = calibrate_key("default")
    assert calibrate_key("explicit", device="cpu", dtype="float32") == default
    keys = {
        default,
        calibrate_key("bf16", device="cpu", dtype="bfloat16"),
        calibrate_key("cuda16", device="cuda", dtype="float16"),  # plannable without a GPU
        calibrate_key("cuda32", device="cuda", dtype="float32"),
    }
    assert len(keys) == 4
    auto = calibrate_key("auto", device="auto", dtype="float16")
    assert (auto == calibrate_key("cuda16b", device="cuda", dtype="float16")) == (
        torch.cuda.is_available()
    )


@NO_CUDA
def test_cuda_without_gpu_exits_4_before_any_work(tmp_path: Path, model: Path) -> None:
    recipe = _recipe(tmp_path, model, "cuda", device="cuda", dtype="float16")
    run = forge("build", str(recipe))
    assert_clean_error(run, int(ExitCode.DEPENDENCY), "no CUDA GPU", "hint:", "device: auto")
    plan = forge("plan", str(recipe), "--json").json()["stages"]
    assert plan[0]["stage"] == "fetch" and plan[0]["status"] == "miss"  # nothing was built


@NO_CUDA
def test_library_cuda_without_gpu_raises_before_writing(tmp_path: Path, model: Path) -> None:
    from trtllm_forge.checkpoint.convert import convert_hf_checkpoint
    from trtllm_forge.quant.quantize import quantize_checkpoint

    convert_hf_checkpoint(model, tmp_path / "canonical", dtype="float32")
    with pytest.raises(ForgeError) as caught:
        quantize_checkpoint(
            hf_dir=model,
            canonical_dir=tmp_path / "canonical",
            out_dir=tmp_path / "out",
            method="int8_wo",
            device="cuda",
        )
    assert caught.value.code == ExitCode.DEPENDENCY
    assert not (tmp_path / "out").exists()


def test_bfloat16_placement_runs_gptq_and_differs_from_float32(tmp_path: Path, model: Path) -> None:
    from trtllm_forge.checkpoint.convert import convert_hf_checkpoint
    from trtllm_forge.quant.quantize import quantize_checkpoint

    convert_hf_checkpoint(model, tmp_path / "canonical", dtype="float32")
    tokens = torch.randint(0, 250, (4, 32), generator=torch.Generator().manual_seed(0))
    weights = {}
    for dtype in ("float32", "bfloat16"):
        out = tmp_path / dtype
        summary = quantize_checkpoint(
            hf_dir=model,
            canonical_dir=tmp_path / "canonical",
            out_dir=out,
            method="gptq",
            params={"group_size": 32},
            calibration=tokens,
            device="cpu",
            dtype=dtype,
        )
        assert summary["calibration_placement"] == {"device": "cpu", "dtype": dtype}
        with safe_open(str(out / "rank0.safetensors"), "pt") as f:
            weights[dtype] = f.get_tensor(
                "transformer.layers.0.attention.qkv.weights_scaling_factor"
            )
    assert weights["float32"].shape == weights["bfloat16"].shape
    assert not torch.equal(weights["float32"], weights["bfloat16"])
    assert torch.allclose(weights["float32"].float(), weights["bfloat16"].float(), rtol=0.05)


def test_placement_default_is_a_no_op() -> None:
    placement = Placement.of("cpu", "float32")
    layer = torch.nn.Linear(4, 4)
    assert placement.is_default and placement.model(layer).weight.dtype == torch.float32
    with pytest.raises(ForgeError) as caught:
        Placement.of("cpu", "float8")
    assert caught.value.code == ExitCode.RECIPE
