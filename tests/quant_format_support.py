"""Shared steps of the quantization-format tests (test_quant_nvfp4*, test_quant_w4a8_awq,
test_quant_fp8_block): the tiny Llama, forge's calibration, ModelOpt calibrating the same
model the same way, and the comparisons of what each side wrote.

Every step runs the real component (the converter, ``quantize_checkpoint``, ModelOpt's
quantize and exporters, the ``forge`` API); only the repetition lives here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open

from tests.helpers import write_recipe
from tests.tinymodels import make_tiny_hf

# What the build-and-verify tests ask of verify: short, so a tiny model builds in seconds.
VERIFY = {
    "prompts": ["The quick brown fox"],
    "texts": ["Once upon a time there was a small model. " * 4],
    "max_new_tokens": 4,
    "max_text_tokens": 48,
}


def tiny_llama(tmp_path_factory: pytest.TempPathFactory, name: str) -> dict[str, Path]:
    """The tiny Llama (with a tokenizer) and its float32 canonical checkpoint."""
    from trtllm_forge.checkpoint.convert import convert_hf_checkpoint

    root = tmp_path_factory.mktemp(name)
    hf = make_tiny_hf("llama", root / "hf", with_tokenizer=True)
    convert_hf_checkpoint(hf, root / "canonical", dtype="float32")
    return {"hf": hf, "canonical": root / "canonical", "root": root}


def tokens(rows: int = 8) -> torch.Tensor:
    """Calibration tokens (seed 0)."""
    return torch.randint(4, 256, (rows, 32), generator=torch.Generator().manual_seed(0))


def eval_ids(length: int = 20, seed: int = 7) -> torch.Tensor:
    return torch.randint(4, 256, (2, length), generator=torch.Generator().manual_seed(seed))


def calibrate(
    tiny: Mapping[str, Path],
    calibration: torch.Tensor,
    method: str,
    params: Mapping[str, Any],
    *,
    name: str = "cal",
    kv_cache: str | None = None,
    canonical: Path | None = None,
) -> Path:
    """forge's calibrated checkpoint of the tiny model, under ``tiny["root"] / name``."""
    from trtllm_forge.quant.quantize import quantize_checkpoint

    out = tiny["root"] / name
    quantize_checkpoint(
        hf_dir=tiny["hf"],
        canonical_dir=canonical or tiny["canonical"],
        out_dir=out,
        method=method,
        params=dict(params),
        kv_cache=kv_cache,
        calibration=calibration,
    )
    return out


def fake_logits(calibrated: Path, ids: torch.Tensor, kv_hook: Any = None) -> torch.Tensor:
    """The canonical checkpoint's fake-quant logits (``kv_hook`` replaces its KV rule)."""
    from trtllm_forge.quant.fakequant import FakeQuantForward

    fake = FakeQuantForward(calibrated)
    if kv_hook is not None:
        fake.forward.kv_hook = kv_hook
    try:
        return fake.logits(ids)
    finally:
        fake.close()


def hf_logits(tiny: Mapping[str, Path], ids: torch.Tensor) -> torch.Tensor:
    """The float model's logits."""
    from trtllm_forge.quant.quantize import load_hf_model

    with torch.no_grad():
        return load_hf_model(tiny["hf"])(input_ids=ids).logits


def hf_folder(tiny: Mapping[str, Path], calibrated: Path, target: str, name: str) -> Path:
    """forge's Hugging Face folder of ``target`` (written once per name)."""
    from trtllm_forge.hf.folder import write_hf_folder

    out = tiny["root"] / name
    if not out.exists():
        write_hf_folder(
            hf_dir=tiny["hf"],
            calibrated_dir=calibrated,
            out_dir=out,
            target=target,  # type: ignore[arg-type]
        )
    return out


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a folder's safetensors files."""
    out = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as handle:
            out.update({name: handle.get_tensor(name) for name in handle.keys()})
    return out


def assert_same_bytes(mine: Mapping[str, torch.Tensor], want: Mapping[str, torch.Tensor]) -> None:
    """The same tensor names, dtypes, shapes and bytes."""
    assert sorted(mine) == sorted(want)
    for name, tensor in want.items():
        got = mine[name]
        assert got.dtype == tensor.dtype and got.shape == tensor.shape, name
        assert torch.equal(
            got.reshape(-1).view(torch.uint8), tensor.reshape(-1).view(torch.uint8)
        ), name


def modelopt_model(
    tiny: Mapping[str, Path],
    calibration: torch.Tensor,
    method: str,
    params: Mapping[str, Any],
    extra_cfg: list[Any] | None = None,
) -> Any:
    """A fresh model calibrated by ModelOpt with the config and the calibration loop forge
    uses for ``method`` (``extra_cfg``: more quant_cfg entries, e.g. a KV-cache preset)."""
    from trtllm_forge.checkpoint.convert import load_hf_config
    from trtllm_forge.quant import calibration as calib
    from trtllm_forge.quant import modelopt_glue, registry
    from trtllm_forge.quant.capture import decoder
    from trtllm_forge.quant.quantize import load_hf_model
    from trtllm_forge.quant.targets import plan_targets

    model = load_hf_model(tiny["hf"])
    targets = plan_targets(load_hf_config(tiny["hf"]), ["lm_head"]).hf_modules()
    module = registry.get(method).load()
    config = module.modelopt_config(registry.validate_params(method, params), targets)
    config["quant_cfg"] += extra_cfg or []
    data = calib.from_tokens(calibration)

    def forward_loop(m: Any) -> None:  # forge's calibration loop (modelopt_glue.calibrate)
        with torch.no_grad():
            for ids in data.batches(modelopt_glue.BATCH_SIZE):
                decoder(m)(input_ids=ids)

    # mtq.quantize itself: its attention plugin inserts KV-cache quantizers when asked.
    with modelopt_glue.quiet(modelopt_glue._NO_PROGRESS):
        modelopt_glue.mtq().quantize(model, config, forward_loop)
    model.config.architectures = model.config.architectures or [type(model).__name__]
    return model


def modelopt_hf_export(model: Any, out: Path) -> Path:
    """ModelOpt's own ``export_hf_checkpoint`` (float32) of a calibrated model."""
    from modelopt.torch.export import export_hf_checkpoint

    from trtllm_forge.quant import modelopt_glue

    with modelopt_glue.quiet(modelopt_glue._NO_PROGRESS):
        export_hf_checkpoint(model, dtype=torch.float32, export_dir=out)
    return out


def modelopt_trtllm_export(model: Any, out: Path, dtype: torch.dtype) -> Path:
    """ModelOpt's own ``export_tensorrt_llm_checkpoint`` (one rank) of a calibrated model."""
    from modelopt.torch.export import export_tensorrt_llm_checkpoint

    from trtllm_forge.quant import modelopt_glue

    with modelopt_glue.quiet(modelopt_glue._NO_PROGRESS):
        export_tensorrt_llm_checkpoint(model, "llama", dtype, out, inference_tensor_parallel=1)
    return out


def assert_modelopt_folders_equal(ours: Path, theirs: Path) -> dict[str, Any]:
    """forge's ModelOpt folder equals ModelOpt's export: hf_quant_config.json, config.json's
    quantization_config, and every tensor's bytes. Returns ModelOpt's ``quantization``."""
    hf_quant = json.loads((theirs / "hf_quant_config.json").read_text())
    assert json.loads((ours / "hf_quant_config.json").read_text()) == hf_quant
    ours_cfg = json.loads((ours / "config.json").read_text())["quantization_config"]
    theirs_cfg = json.loads((theirs / "config.json").read_text())["quantization_config"]
    assert ours_cfg == theirs_cfg
    assert_same_bytes(tensors(ours), tensors(theirs))
    quantization: dict[str, Any] = hf_quant["quantization"]
    return quantization


def assert_trtllm_checkpoint_equals_modelopt_export(
    tiny: Mapping[str, Path], calibration: torch.Tensor, method: str, params: Mapping[str, Any]
) -> None:
    """forge's canonical (TensorRT-LLM ≤ 1.2) checkpoint equals ModelOpt's
    export_tensorrt_llm_checkpoint of the same calibration (float16, as ModelOpt writes)."""
    from safetensors.torch import load_file

    from trtllm_forge.checkpoint.convert import convert_hf_checkpoint

    root = tiny["root"]
    convert_hf_checkpoint(tiny["hf"], root / "canonical16", dtype="float16")
    ours = calibrate(
        tiny, calibration, method, params, name="forge16", canonical=root / "canonical16"
    )
    model = modelopt_model(tiny, calibration, method, params)
    theirs = modelopt_trtllm_export(model, root / "modelopt-trtllm", torch.float16)
    assert_same_bytes(
        load_file(ours / "rank0.safetensors"), load_file(theirs / "rank0.safetensors")
    )
    quantization = json.loads((theirs / "config.json").read_text())["quantization"]
    ours_algo = json.loads((ours / "config.json").read_text())["quantization"]["quant_algo"]
    assert ours_algo == quantization["quant_algo"]


def onnx_engine_logits(calibrated: Path, out: Path, ids: torch.Tensor) -> Any:
    """Logits of the checkpoint's ONNX engine, built and run by ONNX Runtime."""
    import numpy as np

    from trtllm_forge.engine.backends import BuildOptions, build_engine
    from trtllm_forge.engine.runtime import OrtEngine

    options = BuildOptions(max_batch_size=2, max_input_len=32, max_seq_len=64)
    build_engine("onnxruntime", calibrated, out, options)
    engine = OrtEngine.load(out, threads=1)
    return np.stack([engine.score(row.tolist()) for row in ids])


def build_and_verify(
    tmp_path: Path,
    tiny: Mapping[str, Path],
    quantize: Mapping[str, Any],
    builds: Mapping[str, Mapping[str, Any]],
    gates: Mapping[str, float],
) -> dict[str, dict[str, Any]]:
    """``forge build`` (in process, one store) of each named build section; each verify
    must pass. Returns each build's stage results."""
    from trtllm_forge import api
    from trtllm_forge.context import RunContext, Settings

    ctx = RunContext(settings=Settings(home=tmp_path / "home"))
    done = {}
    for name, build in builds.items():
        recipe = write_recipe(
            tmp_path / f"{name}.yaml",
            source={"path": str(tiny["hf"])},
            quantize=dict(quantize),
            build=dict(build),
            verify={**VERIFY, "gates": dict(gates)},
        )
        results = {r.stage: r for r in api.build(recipe=recipe, ctx=ctx)}
        assert results["verify"].status == "built", name
        report = json.loads((Path(str(results["verify"].path)) / "report.json").read_text())
        assert report["passed"] is True, name
        done[name] = results
    return done
