"""nvfp4 (NVFP4 W4A4) on the tiny Llama, calibrated once through ModelOpt on the CPU.

* forge's ModelOpt-format folder equals ModelOpt 0.47's own ``export_hf_checkpoint`` of
  the same calibration bit for bit (JSON fields, tensor names, dtypes, bytes);
* the canonical (TensorRT-LLM ≤ 1.2) checkpoint equals ModelOpt's TensorRT-LLM export
  bit for bit;
* forge's ModelOpt loader (its verify path) computes what the canonical checkpoint's
  fake quant computes;
* the compressed-tensors folder loads in transformers + compressed-tensors: the
  library's decompressed weights are forge's dequantized weights (in bfloat16, the
  dtype the library unpacks NVFP4 to) and its activation quantizer is forge's;
* ONNX backends are refused at plan time (exit 2), naming the formats that carry it;
* ``forge build`` (in process) builds and verifies both Hugging Face targets, reusing one
  calibration.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests import quant_format_support as qf
from tests.helpers import assert_clean_error, forge, write_recipe

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return qf.tiny_llama(tmp_path_factory, "nvfp4")


@pytest.fixture(scope="module")
def tokens() -> torch.Tensor:
    return qf.tokens()


@pytest.fixture(scope="module")
def calibrated(tiny: dict[str, Path], tokens: torch.Tensor) -> Path:
    return qf.calibrate(tiny, tokens, "nvfp4", {})


@pytest.fixture(scope="module")
def folders(tiny: dict[str, Path], calibrated: Path) -> dict[str, Path]:
    targets = ("modelopt", "compressed-tensors")
    return {target: qf.hf_folder(tiny, calibrated, target, target) for target in targets}


@pytest.fixture(scope="module")
def eval_ids() -> torch.Tensor:
    return qf.eval_ids()


def test_modelopt_folder_equals_modelopt_export(
    tiny: dict[str, Path], tokens: torch.Tensor, folders: dict[str, Path]
) -> None:
    model = qf.modelopt_model(tiny, tokens, "nvfp4", {})
    theirs = qf.modelopt_hf_export(model, tiny["root"] / "modelopt-own")
    assert qf.assert_modelopt_folders_equal(folders["modelopt"], theirs)["quant_algo"] == "NVFP4"
    assert qf.tensors(theirs)["model.layers.0.self_attn.q_proj.weight"].dtype == torch.uint8


def test_modelopt_loader_equals_fake_quant_near_float(
    tiny: dict[str, Path], calibrated: Path, folders: dict[str, Path], eval_ids: torch.Tensor
) -> None:
    from trtllm_forge.hf.modelopt_loader import load_modelopt_model

    want = qf.fake_logits(calibrated, eval_ids)
    ref = qf.hf_logits(tiny, eval_ids)
    with torch.no_grad():
        got = load_modelopt_model(folders["modelopt"])(input_ids=eval_ids).logits
    assert float((got - want).norm() / want.norm()) < 1e-5
    # 4-bit weights and activations of a random model: a sanity bound, not accuracy.
    assert 0 < float((want - ref).norm() / ref.norm()) < 0.5


def test_compressed_tensors_folder_loads_with_forges_numbers(
    calibrated: Path, folders: dict[str, Path], eval_ids: torch.Tensor
) -> None:
    import transformers
    from compressed_tensors.compressors.nvfp4.base import NVFP4PackedCompressor
    from compressed_tensors.quantization.lifecycle.forward import forward_quantize

    from trtllm_forge.checkpoint.io import CheckpointReader
    from trtllm_forge.hf.reader import describe
    from trtllm_forge.quant import nvfp4
    from trtllm_forge.quant.fakequant import dequantized_weight

    folder = folders["compressed-tensors"]
    config = json.loads((folder / "config.json").read_text())["quantization_config"]
    assert config["format"] == "nvfp4-pack-quantized"
    for target, path in folders.items():  # what forge inspect (and verify) read
        assert (describe(path).format, describe(path).quant_algo) == (target, "NVFP4")
    # compressed-tensors 0.20 unpacks NVFP4 to bfloat16 whatever the checkpoint dtype.
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16)
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=eval_ids).logits).all()
    reader = CheckpointReader(calibrated)
    attention = model.model.layers[0].self_attn
    qkv = dequantized_weight(reader, "transformer.layers.0.attention.qkv")
    assert qkv is not None
    rows = 0
    for linear in (attention.q_proj, attention.k_proj, attention.v_proj):
        state = {name: p.data for name, p in linear.named_parameters()}
        if "weight_packed" in state:  # still compressed: run the library's decompressor
            state = NVFP4PackedCompressor.decompress(state, linear.quantization_scheme)
        weight = state["weight"]
        want = qkv[rows : rows + weight.shape[0]].to(torch.bfloat16)
        rows += weight.shape[0]
        assert torch.equal(weight, want)
    x = torch.randn(3, 5, 64, generator=torch.Generator().manual_seed(3))
    args = attention.q_proj.quantization_scheme.input_activations
    theirs = forward_quantize(attention.q_proj, x, "input", args)
    global_scale = 1.0 / attention.q_proj.input_global_scale.float().reshape(())
    mine = nvfp4.fake_quant(x, global_scale)
    assert float((theirs.float() - mine).norm() / mine.norm()) < 1e-6
    reader.close()


@pytest.mark.parametrize("backend", ["onnxruntime", "tensorrt"])
def test_onnx_backends_exit_2_at_plan_time(
    tmp_path: Path, tiny: dict[str, Path], backend: str
) -> None:
    recipe = write_recipe(
        tmp_path / "r.yaml",
        source={"path": str(tiny["hf"])},
        quantize={"method": "nvfp4"},
        build={"backend": backend},
    )
    run = forge("plan", str(recipe))
    assert_clean_error(
        run, 2, "quantize.method", "FLOAT4E2M1", "build.format: modelopt or compressed-tensors"
    )


def test_forge_build_verifies_both_hugging_face_targets(
    tmp_path: Path, tiny: dict[str, Path]
) -> None:
    quantize = {"method": "nvfp4", "calibration": {"samples": 4, "seq_len": 32}}
    builds = {fmt: {"backend": "hf", "format": fmt} for fmt in ("modelopt", "compressed-tensors")}
    done = qf.build_and_verify(tmp_path, tiny, quantize, builds, {"max_kl": 1.0})
    assert done["compressed-tensors"]["calibrate"].status == "hit"  # the modelopt build's


def test_trtllm_checkpoint_equals_modelopt_trtllm_export(
    tiny: dict[str, Path], tokens: torch.Tensor
) -> None:
    qf.assert_trtllm_checkpoint_equals_modelopt_export(tiny, tokens, "nvfp4", {})
