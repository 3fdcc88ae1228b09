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

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors import safe_open

from tests.helpers import assert_clean_error, forge, write_recipe
from tests.tinymodels import make_tiny_hf

torch.set_num_threads(1)

PARAMS = {"group_size": 32}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from trtllm_forge.checkpoint.convert import convert_hf_checkpoint

    root = tmp_path_factory.mktemp("w4a8")
    hf = make_tiny_hf("llama", root / "hf", with_tokenizer=True)
    convert_hf_checkpoint(hf, root / "canonical", dtype="float32")
    return {"hf": hf, "canonical": root / "canonical", "root": root}


@pytest.fixture(scope="module")
def tokens() -> torch.Tensor:
    return torch.randint(4, 256, (8, 32), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def calibrated(tiny: dict[str, Path], tokens: torch.Tensor) -> Path:
    from trtllm_forge.quant.quantize import quantize_checkpoint

    out = tiny["root"] / "cal"
    quantize_checkpoint(
        hf_dir=tiny["hf"],
        canonical_dir=tiny["canonical"],
        out_dir=out,
        method="w4a8_awq",
        params=PARAMS,
        kv_cache=None,
        calibration=tokens,
    )
    return out


@pytest.fixture(scope="module")
def eval_ids() -> torch.Tensor:
    return torch.randint(4, 256, (2, 20), generator=torch.Generator().manual_seed(7))


@pytest.fixture(scope="module")
def fake_logits(calibrated: Path, eval_ids: torch.Tensor) -> torch.Tensor:
    from trtllm_forge.quant.fakequant import FakeQuantForward

    fake = FakeQuantForward(calibrated)
    try:
        return fake.logits(eval_ids)
    finally:
        fake.close()


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as handle:
            out.update({name: handle.get_tensor(name) for name in handle.keys()})
    return out


def _modelopt_export(tiny: dict[str, Path], tokens: torch.Tensor, out: Path) -> Path:
    """Calibrate a fresh model with ModelOpt exactly as forge does; ModelOpt exports it."""
    from modelopt.torch.export import export_hf_checkpoint

    from trtllm_forge.checkpoint.convert import load_hf_config
    from trtllm_forge.quant import calibration, modelopt_glue, w4a8_awq
    from trtllm_forge.quant.capture import decoder
    from trtllm_forge.quant.quantize import load_hf_model
    from trtllm_forge.quant.registry import validate_params
    from trtllm_forge.quant.targets import plan_targets

    model = load_hf_model(tiny["hf"])
    targets = plan_targets(load_hf_config(tiny["hf"]), ["lm_head"]).hf_modules()
    config = w4a8_awq.modelopt_config(validate_params("w4a8_awq", PARAMS), targets)
    data = calibration.from_tokens(tokens)

    def forward_loop(m: Any) -> None:  # forge's calibration loop (modelopt_glue.calibrate)
        with torch.no_grad():
            for ids in data.batches(modelopt_glue.BATCH_SIZE):
                decoder(m)(input_ids=ids)

    with modelopt_glue.quiet(modelopt_glue._NO_PROGRESS):
        modelopt_glue.mtq().quantize(model, config, forward_loop)
        model.config.architectures = model.config.architectures or [type(model).__name__]
        export_hf_checkpoint(model, dtype=torch.float32, export_dir=out)
    return out


def test_modelopt_folder_equals_modelopt_export(
    tiny: dict[str, Path], tokens: torch.Tensor, calibrated: Path
) -> None:
    from trtllm_forge.hf.folder import write_hf_folder

    ours = tiny["root"] / "modelopt"
    write_hf_folder(hf_dir=tiny["hf"], calibrated_dir=calibrated, out_dir=ours, target="modelopt")
    theirs = _modelopt_export(tiny, tokens, tiny["root"] / "modelopt-own")
    hf_quant = json.loads((theirs / "hf_quant_config.json").read_text())
    assert hf_quant["quantization"]["quant_algo"] == "W4A8_AWQ"
    assert json.loads((ours / "hf_quant_config.json").read_text()) == hf_quant
    ours_cfg = json.loads((ours / "config.json").read_text())["quantization_config"]
    theirs_cfg = json.loads((theirs / "config.json").read_text())["quantization_config"]
    assert ours_cfg == theirs_cfg
    mine, want = _tensors(ours), _tensors(theirs)
    assert sorted(mine) == sorted(want)
    assert "model.layers.0.self_attn.o_proj.weight_scale_2" in want
    for name, tensor in want.items():
        got = mine[name]
        assert got.dtype == tensor.dtype and got.shape == tensor.shape, name
        assert torch.equal(
            got.reshape(-1).view(torch.uint8), tensor.reshape(-1).view(torch.uint8)
        ), name


def test_fake_quant_equals_onnx_engine_and_modelopt_loader_weights(
    tiny: dict[str, Path], calibrated: Path, eval_ids: torch.Tensor, fake_logits: torch.Tensor
) -> None:
    from trtllm_forge.checkpoint.io import CheckpointReader
    from trtllm_forge.engine.backends import BuildOptions, build_engine
    from trtllm_forge.engine.runtime import OrtEngine
    from trtllm_forge.hf.folder import write_hf_folder
    from trtllm_forge.hf.modelopt_loader import load_modelopt_model
    from trtllm_forge.quant.fakequant import dequantized_weight
    from trtllm_forge.quant.quantize import load_hf_model

    with safe_open(str(calibrated / "rank0.safetensors"), "pt") as f:
        assert f.get_tensor("transformer.layers.0.mlp.proj.weights_scaling_factor_2").shape == (1,)
    with torch.no_grad():
        ref = load_hf_model(tiny["hf"])(input_ids=eval_ids).logits
    assert 0 < float((fake_logits - ref).norm() / ref.norm()) < 0.6  # random weights
    folder = tiny["root"] / "modelopt-loader"
    write_hf_folder(hf_dir=tiny["hf"], calibrated_dir=calibrated, out_dir=folder, target="modelopt")
    loaded = load_modelopt_model(folder)
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
    out = tiny["root"] / "engine"
    build_engine(
        "onnxruntime",
        calibrated,
        out,
        BuildOptions(max_batch_size=2, max_input_len=32, max_seq_len=64),
    )
    engine = OrtEngine.load(out, threads=1)
    got = np.stack([engine.score(row.tolist()) for row in eval_ids])
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
    from trtllm_forge import api
    from trtllm_forge.context import RunContext, Settings

    ctx = RunContext(settings=Settings(home=tmp_path / "home"))
    for name, build in {
        "onnxruntime": {"backend": "onnxruntime"},
        "modelopt": {"backend": "hf", "format": "modelopt"},
    }.items():
        recipe = write_recipe(
            tmp_path / f"{name}.yaml",
            source={"path": str(tiny["hf"])},
            quantize={
                **PARAMS,
                "method": "w4a8_awq",
                "calibration": {"samples": 4, "seq_len": 32},
            },
            build={**build, "max_batch_size": 1, "max_input_len": 64, "max_seq_len": 96},
            verify={
                "prompts": ["The quick brown fox"],
                "texts": ["Once upon a time there was a small model. " * 4],
                "max_new_tokens": 4,
                "max_text_tokens": 48,
                "gates": {"max_kl": 1.0},
            },
        )
        results = {r.stage: r for r in api.build(recipe=recipe, ctx=ctx)}
        assert results["verify"].status == "built", name
        report = json.loads((Path(str(results["verify"].path)) / "report.json").read_text())
        assert report["passed"] is True, name


def test_trtllm_checkpoint_equals_modelopt_trtllm_export(
    tiny: dict[str, Path], tokens: torch.Tensor
) -> None:
    """The canonical (TensorRT-LLM ≤ 1.2) checkpoint equals ModelOpt's
    export_tensorrt_llm_checkpoint of the same calibration (float16, as ModelOpt writes)."""
    from modelopt.torch.export import export_tensorrt_llm_checkpoint
    from safetensors.torch import load_file

    from trtllm_forge.checkpoint.convert import convert_hf_checkpoint, load_hf_config
    from trtllm_forge.quant import calibration, modelopt_glue, w4a8_awq
    from trtllm_forge.quant.capture import decoder
    from trtllm_forge.quant.quantize import load_hf_model, quantize_checkpoint
    from trtllm_forge.quant.registry import validate_params
    from trtllm_forge.quant.targets import plan_targets

    root = tiny["root"]
    convert_hf_checkpoint(tiny["hf"], root / "canonical16", dtype="float16")
    ours = root / "forge16"
    quantize_checkpoint(
        hf_dir=tiny["hf"],
        canonical_dir=root / "canonical16",
        out_dir=ours,
        method="w4a8_awq",
        params=PARAMS,
        kv_cache=None,
        calibration=tokens,
    )
    model = load_hf_model(tiny["hf"])
    targets = plan_targets(load_hf_config(tiny["hf"]), ["lm_head"]).hf_modules()
    data = calibration.from_tokens(tokens)

    def forward_loop(m: Any) -> None:
        with torch.no_grad():
            for ids in data.batches(modelopt_glue.BATCH_SIZE):
                decoder(m)(input_ids=ids)

    theirs = root / "modelopt-trtllm"
    with modelopt_glue.quiet(modelopt_glue._NO_PROGRESS):
        modelopt_glue.mtq().quantize(
            model,
            w4a8_awq.modelopt_config(validate_params("w4a8_awq", PARAMS), targets),
            forward_loop,
        )
        export_tensorrt_llm_checkpoint(
            model, "llama", torch.float16, theirs, inference_tensor_parallel=1
        )
    mine, want = load_file(ours / "rank0.safetensors"), load_file(theirs / "rank0.safetensors")
    assert sorted(mine) == sorted(want)
    for name, tensor in want.items():
        got = mine[name]
        assert got.dtype == tensor.dtype and got.shape == tensor.shape, name
        assert torch.equal(
            got.reshape(-1).view(torch.uint8), tensor.reshape(-1).view(torch.uint8)
        ), name
    quantization = json.loads((theirs / "config.json").read_text())["quantization"]
    assert (
        json.loads((ours / "config.json").read_text())["quantization"]["quant_algo"]
        == (quantization["quant_algo"])
    )
