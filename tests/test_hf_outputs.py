"""Hugging Face targets on the tiny Llama: every method × both formats.

* ModelOpt format: forge's folder equals ModelOpt 0.47's own ``export_hf_checkpoint``
  of the same calibration (same model, same windows): JSON fields, tensor names,
  dtypes and bytes.
* compressed-tensors: transformers + compressed-tensors load the folder on the CPU
  (decompressing it) and its logits equal forge's fake-quant model of the canonical
  checkpoint (docs/outputs.md states the tolerance).

Calibration runs once per method (module-scoped) and both formats reuse it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open

from tests.tinymodels import make_tiny_hf

torch.set_num_threads(1)

GROUP = 32  # the tiny Llama is 64 wide
CASES: dict[str, tuple[str, dict[str, Any], str | None]] = {
    "int8_wo": ("int8_wo", {}, None),
    "int4_wo": ("int4_wo", {"group_size": GROUP}, None),
    "gptq": ("gptq", {"group_size": GROUP, "act_order": True}, None),
    "awq": ("awq", {"group_size": GROUP}, None),
    "smoothquant": ("smoothquant", {}, None),
    "fp8": ("fp8", {}, None),
    "fp8_pcpt": ("fp8", {"granularity": "per_channel_per_token"}, None),
    "int8_wo+int8kv": ("int8_wo", {}, "int8"),
    "fp8+fp8kv": ("fp8", {}, "fp8"),
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_hf("llama", tmp_path_factory.mktemp("hf-src") / "llama", with_tokenizer=True)


@pytest.fixture(scope="module")
def tokens() -> torch.Tensor:
    return torch.randint(4, 256, (8, 32), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def canonical(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from trtllm_forge.checkpoint.convert import convert_hf_checkpoint

    out = tmp_path_factory.mktemp("hf-canonical")
    convert_hf_checkpoint(tiny, out, dtype="float32")
    return out


@pytest.fixture(scope="module")
def calibrated(
    tiny: Path, canonical: Path, tokens: torch.Tensor, tmp_path_factory: pytest.TempPathFactory
):
    """case → calibrate artifact dir, computed on first use."""
    from trtllm_forge.quant.quantize import quantize_checkpoint

    done: dict[str, Path] = {}

    def get(case: str) -> Path:
        if case not in done:
            method, params, kv = CASES[case]
            out = tmp_path_factory.mktemp(f"cal-{case}")
            quantize_checkpoint(
                hf_dir=tiny,
                canonical_dir=canonical,
                out_dir=out,
                method=method,
                params=params,
                kv_cache=kv,
                calibration=tokens,
            )
            done[case] = out
        return done[case]

    return get


def _folder(tiny: Path, cal: Path, target: str, out: Path) -> Path:
    from trtllm_forge.hf.folder import write_hf_folder

    write_hf_folder(hf_dir=tiny, calibrated_dir=cal, out_dir=out, target=target)  # type: ignore[arg-type]
    return out


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as handle:
            out.update({name: handle.get_tensor(name) for name in handle.keys()})
    return out


# -- ModelOpt's own export of the same calibration ---------------------------------


def _modelopt_export(tiny: Path, tokens: torch.Tensor, case: str, out: Path) -> Path:
    """Calibrate a fresh model with ModelOpt exactly as forge does, then let ModelOpt export it."""
    import copy

    from modelopt.torch.export import export_hf_checkpoint

    from trtllm_forge.checkpoint.convert import load_hf_config
    from trtllm_forge.quant import calibration as calib
    from trtllm_forge.quant import modelopt_glue, registry
    from trtllm_forge.quant.quantize import load_hf_model
    from trtllm_forge.quant.targets import plan_targets

    method, params, kv = CASES[case]
    model = load_hf_model(tiny)
    targets = plan_targets(load_hf_config(tiny), ["lm_head"]).hf_modules()
    data = calib.from_tokens(tokens)
    mtq = modelopt_glue.mtq()
    if method == "int8_wo":
        # forge's own RTN INT8 equals ModelOpt's INT8_WEIGHT_ONLY max calibration.
        config = modelopt_glue.target_config(copy.deepcopy(mtq.INT8_WEIGHT_ONLY_CFG), targets)
    else:
        module = registry.get(method).load()
        config = module.modelopt_config(registry.validate_params(method, params), targets)
    if kv:
        bits = (4, 3) if kv == "fp8" else 8
        config["quant_cfg"].append(
            {"quantizer_name": "*[kv]_bmm_quantizer", "cfg": {"num_bits": bits, "axis": None}}
        )
    modelopt_glue.calibrate(model, config, data)
    model.config.architectures = ["LlamaForCausalLM"]
    with modelopt_glue.quiet(modelopt_glue._NO_PROGRESS):
        export_hf_checkpoint(model, dtype=torch.float32, export_dir=out)
    return out


MODELOPT_CASES = ["int8_wo", "awq", "smoothquant", "fp8", "fp8_pcpt", "int8_wo+int8kv", "fp8+fp8kv"]


@pytest.mark.parametrize("case", MODELOPT_CASES)
def test_modelopt_folder_equals_modelopt_export(
    case: str, tiny: Path, tokens: torch.Tensor, calibrated: Any, tmp_path: Path
) -> None:
    ours = _folder(tiny, calibrated(case), "modelopt", tmp_path / "forge")
    theirs = _modelopt_export(tiny, tokens, case, tmp_path / "modelopt")
    assert json.loads((ours / "hf_quant_config.json").read_text()) == json.loads(
        (theirs / "hf_quant_config.json").read_text()
    )
    ours_cfg = json.loads((ours / "config.json").read_text())["quantization_config"]
    theirs_cfg = json.loads((theirs / "config.json").read_text())["quantization_config"]
    assert ours_cfg == theirs_cfg
    mine, want = _tensors(ours), _tensors(theirs)
    assert sorted(mine) == sorted(want)
    for name, tensor in want.items():
        got = mine[name]
        assert got.dtype == tensor.dtype and got.shape == tensor.shape, name
        assert torch.equal(
            got.reshape(-1).view(torch.uint8), tensor.reshape(-1).view(torch.uint8)
        ), name
