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
from safetensors import safe_open

from tests.helpers import assert_clean_error, forge, write_recipe
from tests.tinymodels import make_tiny_hf

torch.set_num_threads(1)

KvHook = Callable[[str, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from trtllm_forge.checkpoint.convert import convert_hf_checkpoint

    root = tmp_path_factory.mktemp("nvfp4kv")
    hf = make_tiny_hf("llama", root / "hf", with_tokenizer=True)
    convert_hf_checkpoint(hf, root / "canonical", dtype="float32")
    return {"hf": hf, "canonical": root / "canonical", "root": root}


@pytest.fixture(scope="module")
def tokens() -> torch.Tensor:
    return torch.randint(4, 256, (8, 32), generator=torch.Generator().manual_seed(0))


def _calibrate(tiny: dict[str, Path], tokens: torch.Tensor, method: str, name: str) -> Path:
    from trtllm_forge.quant.quantize import quantize_checkpoint

    out = tiny["root"] / name
    quantize_checkpoint(
        hf_dir=tiny["hf"],
        canonical_dir=tiny["canonical"],
        out_dir=out,
        method=method,
        params={},
        kv_cache="nvfp4",
        calibration=tokens,
    )
    return out


@pytest.fixture(scope="module")
def calibrated(tiny: dict[str, Path], tokens: torch.Tensor) -> Path:
    return _calibrate(tiny, tokens, "nvfp4", "cal-nvfp4")


@pytest.fixture(scope="module")
def calibrated_fp8(tiny: dict[str, Path], tokens: torch.Tensor) -> Path:
    return _calibrate(tiny, tokens, "fp8", "cal-fp8")


def _folder(tiny: dict[str, Path], calibrated: Path, target: str) -> Path:
    from trtllm_forge.hf.folder import write_hf_folder

    out = tiny["root"] / f"{calibrated.name}-{target}"
    if not out.exists():
        write_hf_folder(
            hf_dir=tiny["hf"],
            calibrated_dir=calibrated,
            out_dir=out,
            target=target,  # type: ignore[arg-type]
        )
    return out


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as handle:
            out.update({name: handle.get_tensor(name) for name in handle.keys()})
    return out


def _modelopt_model(tiny: dict[str, Path], tokens: torch.Tensor) -> Any:
    """A fresh model calibrated by ModelOpt as forge calibrates it, plus NVFP4_KV_CFG."""
    from trtllm_forge.checkpoint.convert import load_hf_config
    from trtllm_forge.quant import calibration, modelopt_glue, nvfp4
    from trtllm_forge.quant.capture import decoder
    from trtllm_forge.quant.quantize import load_hf_model
    from trtllm_forge.quant.registry import validate_params
    from trtllm_forge.quant.targets import plan_targets

    mtq = modelopt_glue.mtq()
    model = load_hf_model(tiny["hf"])
    targets = plan_targets(load_hf_config(tiny["hf"]), ["lm_head"]).hf_modules()
    config = nvfp4.modelopt_config(validate_params("nvfp4", {}), targets)
    config["quant_cfg"] += copy.deepcopy(mtq.NVFP4_KV_CFG)["quant_cfg"]
    data = calibration.from_tokens(tokens)

    def forward_loop(m: Any) -> None:  # forge's calibration loop (modelopt_glue.calibrate)
        with torch.no_grad():
            for ids in data.batches(modelopt_glue.BATCH_SIZE):
                decoder(m)(input_ids=ids)

    # mtq.quantize itself: its attention plugin inserts the KV-cache quantizers.
    with modelopt_glue.quiet(modelopt_glue._NO_PROGRESS):
        mtq.quantize(model, config, forward_loop)
    model.config.architectures = model.config.architectures or [type(model).__name__]
    return model


def _assert_same_bytes(mine: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert sorted(mine) == sorted(want)
    for name, tensor in want.items():
        got = mine[name]
        assert got.dtype == tensor.dtype and got.shape == tensor.shape, name
        assert torch.equal(
            got.reshape(-1).view(torch.uint8), tensor.reshape(-1).view(torch.uint8)
        ), name


def test_modelopt_folder_equals_modelopt_export(
    tiny: dict[str, Path], tokens: torch.Tensor, calibrated: Path
) -> None:
    from modelopt.torch.export import export_hf_checkpoint

    from trtllm_forge.quant import modelopt_glue

    ours = _folder(tiny, calibrated, "modelopt")
    theirs = tiny["root"] / "modelopt-own"
    with modelopt_glue.quiet(modelopt_glue._NO_PROGRESS):
        export_hf_checkpoint(_modelopt_model(tiny, tokens), dtype=torch.float32, export_dir=theirs)
    hf_quant = json.loads((theirs / "hf_quant_config.json").read_text())
    assert hf_quant["quantization"]["kv_cache_quant_algo"] == "NVFP4"
    assert json.loads((ours / "hf_quant_config.json").read_text()) == hf_quant
    ours_cfg = json.loads((ours / "config.json").read_text())["quantization_config"]
    theirs_cfg = json.loads((theirs / "config.json").read_text())["quantization_config"]
    assert ours_cfg == theirs_cfg
    want = _tensors(theirs)
    assert "model.layers.1.self_attn.v_proj.v_scale" in want
    _assert_same_bytes(_tensors(ours), want)


def test_trtllm_checkpoint_kv_scales_equal_modelopt_trtllm_export(
    tiny: dict[str, Path], tokens: torch.Tensor, calibrated: Path
) -> None:
    from modelopt.torch.export import export_tensorrt_llm_checkpoint
    from safetensors.torch import load_file

    from trtllm_forge.quant import modelopt_glue

    theirs = tiny["root"] / "modelopt-trtllm"
    with modelopt_glue.quiet(modelopt_glue._NO_PROGRESS):
        export_tensorrt_llm_checkpoint(
            _modelopt_model(tiny, tokens),
            "llama",
            torch.float32,
            theirs,
            inference_tensor_parallel=1,
        )
    want = {k: v for k, v in load_file(theirs / "rank0.safetensors").items() if "cache" in k}
    mine = load_file(calibrated / "rank0.safetensors")
    assert want and sorted(want) == sorted(k for k in mine if "cache" in k)
    _assert_same_bytes({k: mine[k] for k in want}, want)
    quantization = json.loads((theirs / "config.json").read_text())["quantization"]
    ours = json.loads((calibrated / "config.json").read_text())["quantization"]
    assert ours["kv_cache_quant_algo"] == quantization["kv_cache_quant_algo"] == "NVFP4"


def _per_cache_hook(k_scales: dict[str, float], v_scales: dict[str, float]) -> KvHook:
    """NVFP4 Q/DQ of K and V each under its own per-tensor scale, keyed by layer index."""
    from trtllm_forge.quant import layout

    def hook(layer: str, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        index = layer.split(".")[-1]
        k_scale, v_scale = (torch.tensor(s[index]) for s in (k_scales, v_scales))
        return layout.fake_quant_nvfp4(k, k_scale), layout.fake_quant_nvfp4(v, v_scale)

    return hook


def _fake_logits(calibrated: Path, ids: torch.Tensor, hook: KvHook | None) -> torch.Tensor:
    from trtllm_forge.quant.fakequant import FakeQuantForward

    fake = FakeQuantForward(calibrated)
    if hook is not None:
        fake.forward.kv_hook = hook
    try:
        return fake.logits(ids)
    finally:
        fake.close()


def test_modelopt_loader_quantizes_kv_as_fake_quant(
    tiny: dict[str, Path], calibrated: Path
) -> None:
    from trtllm_forge.hf.modelopt_loader import load_modelopt_model

    folder = _folder(tiny, calibrated, "modelopt")
    tensors = _tensors(folder)
    # ModelOpt's HF scale is amax / 448; the E2M1 blocks live under amax / (6 · 448).
    scales = {
        kind: {
            name.split(".")[2]: float(t.float() / 6.0)
            for name, t in tensors.items()
            if name.endswith(f".{kind}_scale")
        }
        for kind in ("k", "v")
    }
    ids = torch.randint(4, 256, (2, 20), generator=torch.Generator().manual_seed(7))
    want = _fake_logits(calibrated, ids, _per_cache_hook(scales["k"], scales["v"]))
    without_kv = _fake_logits(calibrated, ids, lambda _layer, k, v: (k, v))
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
    tensors = _tensors(folder)
    scales: dict[str, dict[str, float]] = {"k": {}, "v": {}}
    for index, layer in enumerate(model.model.layers):
        for kind in ("k", "v"):
            loaded = getattr(layer.self_attn, f"{kind}_global_scale")
            stored = tensors[f"model.layers.{index}.self_attn.{kind}_global_scale"]
            assert torch.equal(loaded.data, stored)  # the loader read it, not a default
            scales[kind][str(index)] = float(1.0 / stored.reshape(()))
    ids = torch.randint(4, 256, (2, 24), generator=torch.Generator().manual_seed(1))
    want = _fake_logits(calibrated_fp8, ids, _per_cache_hook(scales["k"], scales["v"]))
    without_kv = _fake_logits(calibrated_fp8, ids, lambda _layer, k, v: (k, v))
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
    from trtllm_forge import api
    from trtllm_forge.context import RunContext, Settings

    ctx = RunContext(settings=Settings(home=tmp_path / "home"))
    for fmt in ("modelopt", "compressed-tensors"):
        recipe = write_recipe(
            tmp_path / f"{fmt}.yaml",
            source={"path": str(tiny["hf"])},
            quantize={
                "method": "fp8",
                "kv_cache": "nvfp4",
                "calibration": {"samples": 4, "seq_len": 32},
            },
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
