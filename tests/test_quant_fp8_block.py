"""fp8_block (FP8_BLOCK_SCALES) on the tiny Llama (64 wide, so 32 × 32 tiles).

* the block ranges are exactly ModelOpt's FP8_2D_BLOCKWISE max calibration;
* the canonical checkpoint holds fp8 weights and one fp32 scale per tile, and its
  fake quant (dynamic per-token-group activations) stays near the float model;
* the ONNX engine (blocked DequantizeLinear / QuantizeLinear, opset 21) run by ONNX
  Runtime equals the fake quant;
* the compressed-tensors folder (``strategy: block``) loads in transformers +
  compressed-tensors and its logits equal the fake quant;
* what cannot carry it (ModelOpt's HF format, the ort profile, sizes the tiles do
  not divide) is refused at plan time with exit 2.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from tests import quant_format_support as qf
from tests.helpers import assert_clean_error, forge, write_recipe

torch.set_num_threads(1)

BLOCK = 32
PARAMS = {"block_size": BLOCK}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return qf.tiny_llama(tmp_path_factory, "fp8-block")


@pytest.fixture(scope="module")
def calibrated(tiny: dict[str, Path]) -> Path:
    return qf.calibrate(tiny, qf.tokens(4), "fp8_block", PARAMS)


@pytest.fixture(scope="module")
def eval_ids() -> torch.Tensor:
    return qf.eval_ids()


@pytest.fixture(scope="module")
def fake_logits(calibrated: Path, eval_ids: torch.Tensor) -> torch.Tensor:
    return qf.fake_logits(calibrated, eval_ids)


def test_block_ranges_equal_modelopt_2d_blockwise_calibration(tiny: dict[str, Path]) -> None:
    import copy

    from trtllm_forge.checkpoint.convert import load_hf_config
    from trtllm_forge.quant import fp8_block, modelopt_glue
    from trtllm_forge.quant.quantize import load_hf_model
    from trtllm_forge.quant.registry import validate_params
    from trtllm_forge.quant.targets import plan_targets

    targets = plan_targets(load_hf_config(tiny["hf"]), ["lm_head"]).hf_modules()
    ours = fp8_block.quantize_model(
        load_hf_model(tiny["hf"]),
        None,
        validate_params("fp8_block", {"block_size": BLOCK}),
        targets,
    )
    mtq = modelopt_glue.mtq()
    preset = copy.deepcopy(mtq.FP8_2D_BLOCKWISE_WEIGHT_ONLY_CFG)
    weight_cfg, _ = modelopt_glue.preset_numerics(preset)
    assert weight_cfg is not None and weight_cfg["block_sizes"] == {-1: 128, -2: 128}
    weight_cfg["block_sizes"] = {-1: BLOCK, -2: BLOCK}
    config = modelopt_glue.target_config(preset, targets, weight_cfg=weight_cfg)
    model = load_hf_model(tiny["hf"])
    ids = torch.randint(4, 256, (1, 8))
    with modelopt_glue.quiet(modelopt_glue._NO_PROGRESS):
        mtq.quantize(model, config, lambda m: m(input_ids=ids))
    modules = dict(model.named_modules())
    for name in targets:
        theirs = modules[name].weight_quantizer.amax.float()  # [out/b, 1, in/b, 1]
        mine = ours.linears[name].weight_amax
        assert torch.equal(theirs.reshape(mine.shape), mine), name


def test_checkpoint_holds_fp8_tiles_and_fake_quant_is_near_float(
    tiny: dict[str, Path], calibrated: Path, eval_ids: torch.Tensor, fake_logits: torch.Tensor
) -> None:
    from trtllm_forge.checkpoint.io import read_config

    quantization = read_config(calibrated)["quantization"]
    assert (quantization["quant_algo"], quantization["group_size"]) == ("FP8_BLOCK_SCALES", BLOCK)
    with safe_open(str(calibrated / "rank0.safetensors"), "pt") as f:
        weight = f.get_tensor("transformer.layers.0.attention.qkv.weight")
        scale = f.get_tensor("transformer.layers.0.attention.qkv.weights_scaling_factor")
    assert weight.dtype == torch.float8_e4m3fn and weight.shape == (128, 64)
    assert scale.dtype == torch.float32 and scale.shape == (128 // BLOCK, 64 // BLOCK)
    ref = qf.hf_logits(tiny, eval_ids)
    rel = float((fake_logits - ref).norm() / ref.norm())
    assert 0 < rel < 0.1


def test_onnx_engine_equals_fake_quant(
    calibrated: Path, tiny: dict[str, Path], eval_ids: torch.Tensor, fake_logits: torch.Tensor
) -> None:
    got = qf.onnx_engine_logits(calibrated, tiny["root"] / "engine", eval_ids)
    want = fake_logits.numpy()
    # Dynamic FP8 rounding amplifies accumulation-order differences (as for fp8 per token).
    assert float(np.linalg.norm(got - want) / np.linalg.norm(want)) < 5e-3


def test_compressed_tensors_folder_loads_and_equals_fake_quant(
    tiny: dict[str, Path], calibrated: Path, eval_ids: torch.Tensor, fake_logits: torch.Tensor
) -> None:
    import transformers

    from trtllm_forge.hf.reader import describe

    folder = qf.hf_folder(tiny, calibrated, "compressed-tensors", "ct")
    group = json.loads((folder / "config.json").read_text())["quantization_config"]
    group = group["config_groups"]["group_0"]
    assert group["weights"]["strategy"] == "block"
    assert group["weights"]["block_structure"] == [BLOCK, BLOCK]
    assert group["input_activations"] == {
        "num_bits": 8,
        "type": "float",
        "symmetric": True,
        "strategy": "group",
        "dynamic": True,
        "group_size": BLOCK,
    }
    info = describe(folder)  # what forge inspect shows
    assert (info.format, info.quant_algo, info.group_size) == (
        "compressed-tensors",
        "FP8_BLOCK_SCALES",
        BLOCK,
    )
    model = transformers.AutoModelForCausalLM.from_pretrained(folder)  # decompresses on the CPU
    q_proj = model.model.layers[0].self_attn.q_proj
    assert q_proj.quantization_scheme.input_activations.strategy == "group"
    with torch.no_grad():
        got = model(input_ids=eval_ids).logits
    # The loader fake-quantizes activations per token group itself; scales are fp32 here.
    assert float((got - fake_logits).norm() / fake_logits.norm()) < 1e-5


def _plan(tmp_path: Path, model: Path, quantize: dict, build: dict) -> object:
    recipe = write_recipe(
        tmp_path / "r.yaml", source={"path": str(model)}, quantize=quantize, build=build
    )
    return forge("plan", str(recipe))


@pytest.mark.parametrize(
    ("quantize", "build", "fragments"),
    [
        (
            {"method": "fp8_block", "block_size": 32},
            {"backend": "hf", "format": "modelopt"},
            ("build.format", "fp8_pb_wo", "formats that can: compressed-tensors"),
        ),
        (
            {"method": "fp8_block", "block_size": 32},
            {"profile": "ort"},
            ("quantize.method", "build.profile ort", "'fp8_block'"),
        ),
        (
            {"method": "fp8_block"},  # 128 × 128 tiles on a 64-wide model
            {},
            ("quantize.block_size", "attention.qkv", "128×128"),
        ),
        (
            {"method": "fp8_block", "block_size": 32},
            {"backend": "trtllm"},
            ("quantize.method", "trtllm-build", "build.format: compressed-tensors"),
        ),
    ],
)
def test_what_cannot_carry_it_exits_2_at_plan_time(
    tmp_path: Path, tiny: dict[str, Path], quantize: dict, build: dict, fragments: tuple
) -> None:
    run = _plan(tmp_path, tiny["hf"], quantize, build)
    assert_clean_error(run, 2, *fragments)  # type: ignore[arg-type]


def test_tiles_that_do_not_divide_the_layers_fail_before_weights_load(
    tiny: dict[str, Path],
) -> None:
    from trtllm_forge.errors import ExitCode, ForgeError
    from trtllm_forge.quant.quantize import quantize_checkpoint

    with pytest.raises(ForgeError) as error:
        quantize_checkpoint(
            hf_dir=tiny["hf"],
            canonical_dir=tiny["canonical"],
            out_dir=tiny["root"] / "never",
            method="fp8_block",
            params={},  # 128 × 128 tiles on a 64-wide model
            kv_cache=None,
            calibration=None,
        )
    assert error.value.code == ExitCode.RECIPE and "128×128" in error.value.message


def test_forge_build_verifies_onnx_engine_and_compressed_tensors_folder(
    tmp_path: Path, tiny: dict[str, Path]
) -> None:
    sizes = {"max_batch_size": 1, "max_input_len": 64, "max_seq_len": 96}
    builds = {
        "onnxruntime": {"backend": "onnxruntime", **sizes},
        "compressed-tensors": {"backend": "hf", "format": "compressed-tensors", **sizes},
    }
    qf.build_and_verify(tmp_path, tiny, dict(PARAMS, method="fp8_block"), builds, {"min_top1": 0.8})
