"""forge's writer against ModelOpt's own TensorRT-LLM exporter, on the same calibration.

ModelOpt is deterministic (same model, config and batches give the same
quantizer state), so a stock ModelOpt run exported with
``export_tensorrt_llm_checkpoint`` must give exactly forge's checkpoint: same
tensor names, shapes, dtypes and bytes. The exporter mutates the model it is
given (it unifies fused layers' ranges), so it gets a deep copy; that mutated
copy is also the reference for what the checkpoint *means*, checked against
forge's fake-quant forward.
"""

from __future__ import annotations

import copy
import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from tests.tinymodels import make_tiny_hf
from trtllm_forge.checkpoint.convert import convert_hf_checkpoint
from trtllm_forge.checkpoint.io import CheckpointReader
from trtllm_forge.quant import modelopt_glue
from trtllm_forge.quant.fakequant import ActivationQuant, FakeQuantForward, dequantized_weight
from trtllm_forge.quant.quantize import load_hf_model, quantize_checkpoint
from trtllm_forge.quant.targets import linear_targets

GROUP = 64


def _awq(mtq: Any) -> dict[str, Any]:
    cfg = copy.deepcopy(mtq.INT4_AWQ_CFG)
    for entry in cfg["quant_cfg"]:
        if entry.get("quantizer_name") == "*weight_quantizer":
            entry["cfg"]["block_sizes"] = {-1: GROUP, "type": "static"}
    return cfg


def _smoothquant_int8_kv(mtq: Any) -> dict[str, Any]:
    cfg = copy.deepcopy(mtq.INT8_SMOOTHQUANT_CFG)
    cfg["algorithm"] = {"method": "smoothquant", "alpha": 0.5}
    cfg["quant_cfg"].append(
        {"quantizer_name": "*[kv]_bmm_quantizer", "cfg": {"num_bits": 8, "axis": None}}
    )
    return cfg


def _fp8_fp8_kv(mtq: Any) -> dict[str, Any]:
    cfg = copy.deepcopy(mtq.FP8_DEFAULT_CFG)
    cfg["quant_cfg"] = list(cfg["quant_cfg"]) + copy.deepcopy(mtq.FP8_KV_CFG["quant_cfg"])
    return cfg


# case -> (forge method, params, kv_cache, ModelOpt preset builder, expected quant_algo)
CASES: dict[str, tuple[str, dict[str, Any], str | None, Callable[[Any], dict[str, Any]], str]] = {
    "awq": ("awq", {"group_size": GROUP}, None, _awq, "W4A16_AWQ"),
    "smoothquant": (
        "smoothquant",
        {"alpha": 0.5},
        "int8",
        _smoothquant_int8_kv,
        "W8A8_SQ_PER_CHANNEL",
    ),
    "fp8": ("fp8", {}, "fp8", _fp8_fp8_kv, "FP8"),
}


@pytest.fixture(scope="module")
def mtq() -> Any:
    return modelopt_glue.mtq()  # the ~7 s import, once


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("modelopt-equiv")
    hf = make_tiny_hf("llama", root / "hf", hidden_size=128, intermediate_size=256, seed=3)
    convert_hf_checkpoint(hf, root / "canonical16", dtype="float16")
    convert_hf_checkpoint(hf, root / "canonical32", dtype="float32")
    return {
        "hf": hf,
        "root": root,
        "canonical16": root / "canonical16",
        "canonical32": root / "canonical32",
    }


@pytest.fixture(scope="module")
def tokens() -> torch.Tensor:
    return torch.randint(0, 256, (16, 32), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def reference(
    mtq: Any, tiny: dict[str, Path], tokens: torch.Tensor
) -> dict[str, tuple[Path, nn.Module]]:
    """Per case: ModelOpt's export dir and the exported (mutated) model."""
    from modelopt.torch.export import export_tensorrt_llm_checkpoint

    out: dict[str, tuple[Path, nn.Module]] = {}
    for case, (_, _, _, preset, _) in CASES.items():
        model = load_hf_model(tiny["hf"])

        def loop(m: nn.Module) -> None:
            with torch.no_grad():
                for ids in tokens.split(modelopt_glue.BATCH_SIZE):
                    m(input_ids=ids)

        export_dir = tiny["root"] / f"modelopt_{case}"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = mtq.quantize(model, preset(mtq), loop)
            exported = copy.deepcopy(model)
            export_tensorrt_llm_checkpoint(
                exported, "llama", torch.float16, export_dir, inference_tensor_parallel=1
            )
        out[case] = (export_dir, exported)
    return out


def _ours(tiny: dict[str, Path], tokens: torch.Tensor, case: str, canonical: str) -> Path:
    method, params, kv, _, _ = CASES[case]
    out = tiny["root"] / f"forge_{case}_{canonical}"
    if not out.exists():
        quantize_checkpoint(
            hf_dir=tiny["hf"],
            canonical_dir=tiny[canonical],
            out_dir=out,
            method=method,
            params=params,
            kv_cache=kv,
            calibration=tokens,
        )
    return out


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.uint8) if t.dtype == torch.float8_e4m3fn else t


@pytest.mark.parametrize("case", list(CASES))
def test_writer_matches_modelopt_export_bit_for_bit(
    case: str,
    tiny: dict[str, Path],
    tokens: torch.Tensor,
    reference: dict[str, tuple[Path, nn.Module]],
) -> None:
    ours_dir = _ours(tiny, tokens, case, "canonical16")
    theirs_dir = reference[case][0]
    ours = load_file(ours_dir / "rank0.safetensors")
    theirs = load_file(theirs_dir / "rank0.safetensors")
    assert sorted(ours) == sorted(theirs)
    for name, tensor in theirs.items():
        assert ours[name].dtype == tensor.dtype, name
        assert ours[name].shape == tensor.shape, name
        assert torch.equal(_bits(ours[name]), _bits(tensor)), name
    our_q = json.loads((ours_dir / "config.json").read_text())["quantization"]
    their_q = json.loads((theirs_dir / "config.json").read_text())["quantization"]
    assert our_q["quant_algo"] == their_q["quant_algo"] == CASES[case][4]
    assert our_q["kv_cache_quant_algo"] == their_q["kv_cache_quant_algo"]
    for key in ("group_size", "has_zero_point", "pre_quant_scale"):
        if key in their_q:
            assert our_q[key] == their_q[key], key


@pytest.mark.parametrize("case", list(CASES))
def test_fake_quant_linears_compute_what_modelopt_computes(
    case: str,
    tiny: dict[str, Path],
    tokens: torch.Tensor,
    reference: dict[str, tuple[Path, nn.Module]],
) -> None:
    """Every quantized linear, on real calibration activations: ModelOpt's quantized
    module against forge's dequantized weight + activation transform.

    ModelOpt rounds ``x·(127/amax)``, the checkpoint implies ``x/(amax/127)``: the two
    differ in the last bit, so a handful of INT8 codes land on the other side of a
    rounding boundary (rel. ~1e-4); everything else agrees to float precision.
    """
    exported = reference[case][1]
    modules = dict(exported.named_modules())
    inputs: dict[str, torch.Tensor] = {}
    hooks = [
        modules[name].register_forward_pre_hook(
            lambda _m, a, n=name: inputs.setdefault(n, a[0].detach())
        )
        for t in linear_targets(json.loads((tiny["hf"] / "config.json").read_text()))
        for name in t.sources
    ]
    with torch.no_grad():
        exported(input_ids=tokens[:2])
    for hook in hooks:
        hook.remove()
    ckpt = _ours(tiny, tokens, case, "canonical32")
    with CheckpointReader(ckpt) as reader:
        act = ActivationQuant(
            reader, json.loads((ckpt / "config.json").read_text())["quantization"]["quant_algo"]
        )
        for target in linear_targets(json.loads((tiny["hf"] / "config.json").read_text())):
            weight = dequantized_weight(reader, target.module)
            assert weight is not None
            row = 0
            for name in target.sources:
                linear = modules[name]
                x = inputs[name]
                with torch.no_grad():
                    want = linear(x)
                got = act(target.module, x) @ weight[row : row + linear.out_features].T
                row += linear.out_features
                rel = float((got - want).norm() / want.norm())
                assert rel < 5e-4, (name, rel)


@pytest.mark.parametrize("case", ["awq", "fp8"])
def test_fake_quant_logits_match_modelopt_model(
    case: str,
    tiny: dict[str, Path],
    tokens: torch.Tensor,
    reference: dict[str, tuple[Path, nn.Module]],
) -> None:
    """End to end with a float32 canonical checkpoint (no fp16 rounding of norms).

    (SmoothQuant is checked per linear only: its static INT8 activation rounding makes
    random-weight logits flip on 1e-7 input differences, like ModelOpt's x·(127/amax)
    against the checkpoint's x/(amax/127).)
    """
    ids = tokens[:2]
    model = reference[case][1]
    # ModelOpt's in-model KV quantizer uses amax/448, while the exported FP8 KV scale is
    # raised to >= 1 (its TensorRT-LLM convention); compare the linears without KV Q/DQ.
    kv = [m for n, m in model.named_modules() if n.endswith(("k_bmm_quantizer", "v_bmm_quantizer"))]
    for quantizer in kv:
        quantizer.disable()
    try:
        with torch.no_grad():
            want = model(input_ids=ids).logits
    finally:
        for quantizer in kv:
            quantizer.enable()
    fake = FakeQuantForward(_ours(tiny, tokens, case, "canonical32"))
    fake.forward.kv_hook = None
    try:
        got = fake.logits(ids)
    finally:
        fake.close()
    assert float((got - want).norm() / want.norm()) < 1e-5
