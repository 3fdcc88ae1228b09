"""w4a8_awq (W4A8_AWQ) on the tiny Llama (64 wide, so groups of 32), calibrated once
through ModelOpt's W4A8_AWQ_BETA_CFG.

* forge's ModelOpt-format folder equals ModelOpt 0.47's own ``export_hf_checkpoint`` of
  the same calibration bit for bit (JSON fields, tensor names, dtypes, bytes);
* the canonical (TensorRT-LLM ≤ 1.2) checkpoint equals ModelOpt's TensorRT-LLM export bit
  for bit; its fake quant (INT4 groups run as FP8, static FP8 inputs) equals the ONNX
  engine run by ONNX Runtime, and forge's ModelOpt loader reads the same weights where
  the two formats share a rule (gate/up: ModelOpt's HF export shares them, its
  TensorRT-LLM export does not);
* compressed-tensors is refused at plan time (exit 2), naming the ModelOpt format;
* ``forge build`` (in process) builds and verifies the ONNX engine and the ModelOpt
  folder from one calibration.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from tests import quant_format_support as qf
from tests.helpers import assert_clean_error, forge, write_recipe

torch.set_num_threads(1)

PARAMS = {"group_size": 32}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return qf.tiny_llama(tmp_path_factory, "w4a8")


@pytest.fixture(scope="module")
def tokens() -> torch.Tensor:
    return qf.tokens()


@pytest.fixture(scope="module")
def calibrated(tiny: dict[str, Path], tokens: torch.Tensor) -> Path:
    return qf.calibrate(tiny, tokens, "w4a8_awq", PARAMS)


@pytest.fixture(scope="module")
def eval_ids() -> torch.Tensor:
    return qf.eval_ids()


@pytest.fixture(scope="module")
def fake_logits(calibrated: Path, eval_ids: torch.Tensor) -> torch.Tensor:
    return qf.fake_logits(calibrated, eval_ids)


def test_modelopt_folder_equals_modelopt_export(
    tiny: dict[str, Path], tokens: torch.Tensor, calibrated: Path
) -> None:
    ours = qf.hf_folder(tiny, calibrated, "modelopt", "modelopt")
    model = qf.modelopt_model(tiny, tokens, "w4a8_awq", PARAMS)
    theirs = qf.modelopt_hf_export(model, tiny["root"] / "modelopt-own")
    assert qf.assert_modelopt_folders_equal(ours, theirs)["quant_algo"] == "W4A8_AWQ"
    assert "model.layers.0.self_attn.o_proj.weight_scale_2" in qf.tensors(theirs)


def test_fake_quant_equals_onnx_engine_and_modelopt_loader_weights(
    tiny: dict[str, Path], calibrated: Path, eval_ids: torch.Tensor, fake_logits: torch.Tensor
) -> None:
    from trtllm_forge.checkpoint.io import CheckpointReader
    from trtllm_forge.hf.modelopt_loader import load_modelopt_model
    from trtllm_forge.quant.fakequant import dequantized_weight

    with safe_open(str(calibrated / "rank0.safetensors"), "pt") as f:
        assert f.get_tensor("transformer.layers.0.mlp.proj.weights_scaling_factor_2").shape == (1,)
    ref = qf.hf_logits(tiny, eval_ids)
    assert 0 < float((fake_logits - ref).norm() / ref.norm()) < 0.6  # random weights
    loaded = load_modelopt_model(qf.hf_folder(tiny, calibrated, "modelopt", "modelopt"))
    with torch.no_grad():
        assert 0 < float((loaded(input_ids=eval_ids).logits - ref).norm() / ref.norm()) < 0.6
    # Weight by weight, the folder means what the checkpoint means where both formats
    # apply the same rule: q/k/v share one FP8 range (one GEMM in both), o_proj and
    # down_proj stand alone. gate/up differ by design: ModelOpt's HF export shares their
    # range and pre-quant scale, its TensorRT-LLM export (and forge's checkpoint) does not.
    reader = CheckpointReader(calibrated)
    layer = loaded.model.layers[0]
    qkv = dequantized_weight(reader, "transformer.layers.0.attention.qkv")
    assert qkv is not None
    stacked = torch.cat([layer.self_attn.q_proj.weight, layer.self_attn.k_proj.weight])
    stacked = torch.cat([stacked, layer.self_attn.v_proj.weight])
    assert torch.equal(stacked, qkv)
    for module, kind in (
        (layer.self_attn.o_proj, "attention.dense"),
        (layer.mlp.down_proj, "mlp.proj"),
    ):
        assert torch.equal(
            module.weight, dequantized_weight(reader, f"transformer.layers.0.{kind}")
        )
    reader.close()
    got = qf.onnx_engine_logits(calibrated, tiny["root"] / "engine", eval_ids)
    want = fake_logits.numpy()
    assert float(np.linalg.norm(got - want) / np.linalg.norm(want)) < 5e-3


def test_compressed_tensors_exits_2_at_plan_time(tmp_path: Path, tiny: dict[str, Path]) -> None:
    recipe = write_recipe(
        tmp_path / "r.yaml",
        source={"path": str(tiny["hf"])},
        quantize=dict(PARAMS, method="w4a8_awq"),
        build={"backend": "hf", "format": "compressed-tensors"},
    )
    run = forge("plan", str(recipe))
    assert_clean_error(run, 2, "build.format", "pre-quant scale", "formats that can: modelopt")


def test_forge_build_verifies_onnx_engine_and_modelopt_folder(
    tmp_path: Path, tiny: dict[str, Path]
) -> None:
    quantize = {**PARAMS, "method": "w4a8_awq", "calibration": {"samples": 4, "seq_len": 32}}
    sizes = {"max_batch_size": 1, "max_input_len": 64, "max_seq_len": 96}
    builds = {
        "onnxruntime": {"backend": "onnxruntime", **sizes},
        "modelopt": {"backend": "hf", "format": "modelopt", **sizes},
    }
    qf.build_and_verify(tmp_path, tiny, quantize, builds, {"max_kl": 1.0})


def test_trtllm_checkpoint_equals_modelopt_trtllm_export(
    tiny: dict[str, Path], tokens: torch.Tensor
) -> None:
    qf.assert_trtllm_checkpoint_equals_modelopt_export(tiny, tokens, "w4a8_awq", PARAMS)
