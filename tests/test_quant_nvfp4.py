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
from typing import Any

import pytest
import torch
from safetensors import safe_open

from tests.helpers import assert_clean_error, forge, write_recipe
from tests.tinymodels import make_tiny_hf

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from trtllm_forge.checkpoint.convert import convert_hf_checkpoint

    root = tmp_path_factory.mktemp("nvfp4")
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
        method="nvfp4",
        params={},
        kv_cache=None,
        calibration=tokens,
    )
    return out


@pytest.fixture(scope="module")
def folders(tiny: dict[str, Path], calibrated: Path) -> dict[str, Path]:
    from trtllm_forge.hf.folder import write_hf_folder

    out = {}
    for target in ("modelopt", "compressed-tensors"):
        out[target] = tiny["root"] / target
        write_hf_folder(
            hf_dir=tiny["hf"], calibrated_dir=calibrated, out_dir=out[target], target=target
        )
    return out


@pytest.fixture(scope="module")
def eval_ids() -> torch.Tensor:
    return torch.randint(4, 256, (2, 20), generator=torch.Generator().manual_seed(7))


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
    from trtllm_forge.quant import calibration, modelopt_glue, nvfp4
    from trtllm_forge.quant.capture import decoder
    from trtllm_forge.quant.quantize import load_hf_model
    from trtllm_forge.quant.registry import validate_params
    from trtllm_forge.quant.targets import plan_targets

    model = load_hf_model(tiny["hf"])
    targets = plan_targets(load_hf_config(tiny["hf"]), ["lm_head"]).hf_modules()
    config = nvfp4.modelopt_config(validate_params("nvfp4", {}), targets)
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
    tiny: dict[str, Path], tokens: torch.Tensor, folders: dict[str, Path]
) -> None:
    ours = folders["modelopt"]
    theirs = _modelopt_export(tiny, tokens, tiny["root"] / "modelopt-own")
    hf_quant = json.loads((theirs / "hf_quant_config.json").read_text())
    assert hf_quant["quantization"]["quant_algo"] == "NVFP4"
    assert json.loads((ours / "hf_quant_config.json").read_text()) == hf_quant
    ours_cfg = json.loads((ours / "config.json").read_text())["quantization_config"]
    theirs_cfg = json.loads((theirs / "config.json").read_text())["quantization_config"]
    assert ours_cfg == theirs_cfg
    mine, want = _tensors(ours), _tensors(theirs)
    assert sorted(mine) == sorted(want)
    assert want["model.layers.0.self_attn.q_proj.weight"].dtype == torch.uint8
    for name, tensor in want.items():
        got = mine[name]
        assert got.dtype == tensor.dtype and got.shape == tensor.shape, name
        assert torch.equal(
            got.reshape(-1).view(torch.uint8), tensor.reshape(-1).view(torch.uint8)
        ), name


def test_modelopt_loader_equals_fake_quant_near_float(
    tiny: dict[str, Path], calibrated: Path, folders: dict[str, Path], eval_ids: torch.Tensor
) -> None:
    from trtllm_forge.hf.modelopt_loader import load_modelopt_model
    from trtllm_forge.quant.fakequant import FakeQuantForward
    from trtllm_forge.quant.quantize import load_hf_model

    fake = FakeQuantForward(calibrated)
    try:
        want = fake.logits(eval_ids)
    finally:
        fake.close()
    with torch.no_grad():
        got = load_modelopt_model(folders["modelopt"])(input_ids=eval_ids).logits
        ref = load_hf_model(tiny["hf"])(input_ids=eval_ids).logits
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
    from trtllm_forge.quant import layout
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
    mine = layout.fake_quant_nvfp4(x, global_scale)
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
    from trtllm_forge import api
    from trtllm_forge.context import RunContext, Settings

    ctx = RunContext(settings=Settings(home=tmp_path / "home"))
    for fmt in ("modelopt", "compressed-tensors"):
        recipe = write_recipe(
            tmp_path / f"{fmt}.yaml",
            source={"path": str(tiny["hf"])},
            quantize={"method": "nvfp4", "calibration": {"samples": 4, "seq_len": 32}},
            build={"backend": "hf", "format": fmt},
            verify={
                "prompts": ["The quick brown fox"],
                "texts": ["Once upon a time there was a small model. " * 4],
                "max_new_tokens": 4,
                "max_text_tokens": 48,
                "gates": {"max_kl": 1.0},
            },
        )
        results = {r.stage: r for r in api.build(recipe=recipe, ctx=ctx)}
        assert results["verify"].status == "built", fmt
        report = json.loads((Path(str(results["verify"].path)) / "report.json").read_text())
        assert report["passed"] is True, fmt
        if fmt == "compressed-tensors":
            assert results["calibrate"].status == "hit"  # the modelopt build's calibration


def test_trtllm_checkpoint_equals_modelopt_trtllm_export(
    tiny: dict[str, Path], tokens: torch.Tensor
) -> None:
    """The canonical (TensorRT-LLM ≤ 1.2) checkpoint equals ModelOpt's
    export_tensorrt_llm_checkpoint of the same calibration (float16, as ModelOpt writes)."""
    from modelopt.torch.export import export_tensorrt_llm_checkpoint
    from safetensors.torch import load_file

    from trtllm_forge.checkpoint.convert import convert_hf_checkpoint, load_hf_config
    from trtllm_forge.quant import calibration, modelopt_glue, nvfp4
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
        method="nvfp4",
        params={},
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
            model, nvfp4.modelopt_config(validate_params("nvfp4", {}), targets), forward_loop
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
