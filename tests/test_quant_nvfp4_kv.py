"""kv_cache: nvfp4 (ModelOpt's NVFP4_KV_CFG) on the tiny Llama, calibrated on the CPU.

* with nvfp4 weights, forge's ModelOpt-format folder equals ModelOpt 0.47's own
  ``export_hf_checkpoint`` of the same calibration bit for bit (``kv_cache_quant_algo:
  NVFP4``, ``k_proj.k_scale`` / ``v_proj.v_scale``), and the canonical checkpoint's KV
  scales equal ModelOpt's TensorRT-LLM export;
* forge's ModelOpt loader quantizes K and V as the canonical checkpoint's fake quant does;
* compressed-tensors carries it (a ``tensor_group`` kv_cache_scheme): transformers +
  compressed-tensors load the folder with its ``k_global_scale`` / ``v_global_scale`` and
  compute forge's fake quant;
* ONNX backends are refused at plan time (exit 2), naming the formats that carry it;
* ``forge build`` (in process) builds and verifies both Hugging Face targets.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from tests import quant_format_support as qf
from tests.helpers import assert_clean_error, forge, write_recipe
from tests.tinymodels import make_tiny_hf

torch.set_num_threads(1)

KvHook = Callable[[str, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return qf.tiny_llama(tmp_path_factory, "nvfp4kv")


@pytest.fixture(scope="module")
def tokens() -> torch.Tensor:
    return qf.tokens()


@pytest.fixture(scope="module")
def calibrated(tiny: dict[str, Path], tokens: torch.Tensor) -> Path:
    return qf.calibrate(tiny, tokens, "nvfp4", {}, name="cal-nvfp4", kv_cache="nvfp4")


@pytest.fixture(scope="module")
def calibrated_fp8(tiny: dict[str, Path], tokens: torch.Tensor) -> Path:
    return qf.calibrate(tiny, tokens, "fp8", {}, name="cal-fp8", kv_cache="nvfp4")


def _folder(tiny: dict[str, Path], calibrated: Path, target: str) -> Path:
    return qf.hf_folder(tiny, calibrated, target, f"{calibrated.name}-{target}")


def _modelopt_model(tiny: dict[str, Path], tokens: torch.Tensor) -> Any:
    """A fresh model calibrated by ModelOpt as forge calibrates it, plus NVFP4_KV_CFG."""
    from trtllm_forge.quant import modelopt_glue

    kv_cfg = copy.deepcopy(modelopt_glue.mtq().NVFP4_KV_CFG)["quant_cfg"]
    return qf.modelopt_model(tiny, tokens, "nvfp4", {}, extra_cfg=kv_cfg)


def test_modelopt_folder_equals_modelopt_export(
    tiny: dict[str, Path], tokens: torch.Tensor, calibrated: Path
) -> None:
    ours = _folder(tiny, calibrated, "modelopt")
    theirs = qf.modelopt_hf_export(_modelopt_model(tiny, tokens), tiny["root"] / "modelopt-own")
    assert qf.assert_modelopt_folders_equal(ours, theirs)["kv_cache_quant_algo"] == "NVFP4"
    assert "model.layers.1.self_attn.v_proj.v_scale" in qf.tensors(theirs)


def test_trtllm_checkpoint_kv_scales_equal_modelopt_trtllm_export(
    tiny: dict[str, Path], tokens: torch.Tensor, calibrated: Path
) -> None:
    from safetensors.torch import load_file

    model = _modelopt_model(tiny, tokens)
    theirs = qf.modelopt_trtllm_export(model, tiny["root"] / "modelopt-trtllm", torch.float32)
    want = {k: v for k, v in load_file(theirs / "rank0.safetensors").items() if "cache" in k}
    mine = load_file(calibrated / "rank0.safetensors")
    assert want and sorted(want) == sorted(k for k in mine if "cache" in k)
    qf.assert_same_bytes({k: mine[k] for k in want}, want)
    quantization = json.loads((theirs / "config.json").read_text())["quantization"]
    ours = json.loads((calibrated / "config.json").read_text())["quantization"]
    assert ours["kv_cache_quant_algo"] == quantization["kv_cache_quant_algo"] == "NVFP4"


def _per_cache_hook(k_scales: dict[str, float], v_scales: dict[str, float]) -> KvHook:
    """NVFP4 Q/DQ of K and V each under its own per-tensor scale, keyed by layer index."""
    from trtllm_forge.quant import nvfp4

    def hook(layer: str, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        index = layer.split(".")[-1]
        k_scale, v_scale = (torch.tensor(s[index]) for s in (k_scales, v_scales))
        return nvfp4.fake_quant(k, k_scale), nvfp4.fake_quant(v, v_scale)

    return hook


def test_modelopt_loader_quantizes_kv_as_fake_quant(
    tiny: dict[str, Path], calibrated: Path
) -> None:
    from trtllm_forge.hf.modelopt_loader import load_modelopt_model

    folder = _folder(tiny, calibrated, "modelopt")
    tensors = qf.tensors(folder)
    # ModelOpt's HF scale is amax / 448; the E2M1 blocks live under amax / (6 · 448).
    scales = {
        kind: {
            name.split(".")[2]: float(t.float() / 6.0)
            for name, t in tensors.items()
            if name.endswith(f".{kind}_scale")
        }
        for kind in ("k", "v")
    }
    ids = qf.eval_ids()
    want = qf.fake_logits(calibrated, ids, _per_cache_hook(scales["k"], scales["v"]))
    without_kv = qf.fake_logits(calibrated, ids, lambda _layer, k, v: (k, v))
    with torch.no_grad():
        got = load_modelopt_model(folder)(input_ids=ids).logits
    assert float((got - want).norm() / want.norm()) < 1e-5
    assert float((got - without_kv).norm() / want.norm()) > 1e-4  # the cache was quantized


def test_compressed_tensors_loads_the_nvfp4_cache_with_forges_numbers(
    tiny: dict[str, Path], calibrated_fp8: Path
) -> None:
    import transformers

    from trtllm_forge.hf.reader import describe

    folder = _folder(tiny, calibrated_fp8, "compressed-tensors")
    scheme = json.loads((folder / "config.json").read_text())["quantization_config"]
    assert scheme["kv_cache_scheme"]["strategy"] == "tensor_group"
    assert describe(folder).kv_cache == "NVFP4"
    model = transformers.AutoModelForCausalLM.from_pretrained(folder)  # decompresses on the CPU
    tensors = qf.tensors(folder)
    scales: dict[str, dict[str, float]] = {"k": {}, "v": {}}
    for index, layer in enumerate(model.model.layers):
        for kind in ("k", "v"):
            loaded = getattr(layer.self_attn, f"{kind}_global_scale")
            stored = tensors[f"model.layers.{index}.self_attn.{kind}_global_scale"]
            assert torch.equal(loaded.data, stored)  # the loader read it, not a default
            scales[kind][str(index)] = float(1.0 / stored.reshape(()))
    ids = qf.eval_ids(24, seed=1)
    want = qf.fake_logits(calibrated_fp8, ids, _per_cache_hook(scales["k"], scales["v"]))
    without_kv = qf.fake_logits(calibrated_fp8, ids, lambda _layer, k, v: (k, v))
    with torch.no_grad():
        got = model(input_ids=ids).logits.float()
    assert float((got - want).norm() / want.norm()) < 1e-5
    assert float((got - without_kv).norm() / want.norm()) > 1e-4


@pytest.mark.parametrize("backend", ["onnxruntime", "tensorrt"])
def test_onnx_backends_exit_2_at_plan_time(
    tmp_path: Path, tiny: dict[str, Path], backend: str
) -> None:
    recipe = write_recipe(
        tmp_path / "r.yaml",
        source={"path": str(tiny["hf"])},
        quantize={"method": "fp8", "kv_cache": "nvfp4"},
        build={"backend": backend},
    )
    run = forge("plan", str(recipe))
    assert_clean_error(
        run,
        2,
        "quantize.method",
        "nvfp4 KV cache",
        "FLOAT4E2M1",
        "build.format: modelopt or compressed-tensors",
    )


def test_head_size_not_a_multiple_of_16_exits_2(tmp_path: Path) -> None:
    hf = make_tiny_hf("llama", tmp_path / "hf", num_attention_heads=8, num_key_value_heads=2)
    recipe = write_recipe(
        tmp_path / "r.yaml",
        source={"path": str(hf)},
        quantize={"method": "fp8", "kv_cache": "nvfp4"},
        build={"backend": "hf", "format": "modelopt"},
    )
    run = forge("plan", str(recipe))
    assert_clean_error(run, 2, "quantize.kv_cache", "head size is 8")


def test_forge_build_verifies_both_hugging_face_targets(
    tmp_path: Path, tiny: dict[str, Path]
) -> None:
    quantize = {"method": "fp8", "kv_cache": "nvfp4", "calibration": {"samples": 4, "seq_len": 32}}
    builds = {fmt: {"backend": "hf", "format": fmt} for fmt in ("modelopt", "compressed-tensors")}
    qf.build_and_verify(tmp_path, tiny, quantize, builds, {"max_kl": 1.0})
