"""Every quantization method end to end on a tiny random Llama (hidden 128, group 64).

For each method: the checkpoint has exactly the TensorRT-LLM tensors of its
format (names, dtypes, shapes), its weights dequantize close to the HF weights,
its fake-quant logits stay near the float model's, and the ONNX Q/DQ lowering
run by ONNX Runtime reproduces the fake-quant logits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors import safe_open

from tests.tinymodels import make_tiny_hf
from trtllm_forge.checkpoint.convert import convert_hf_checkpoint
from trtllm_forge.checkpoint.io import CheckpointReader, read_config
from trtllm_forge.errors import ExitCode, ForgeError
from trtllm_forge.quant.calibration import CalibrationSpec
from trtllm_forge.quant.capture import kv_ranges
from trtllm_forge.quant.fakequant import FakeQuantForward, dequantized_weight
from trtllm_forge.quant.quantize import load_hf_model, quantize_checkpoint
from trtllm_forge.quant.targets import linear_targets

GROUP = 64
CALIB = CalibrationSpec(samples=8, seq_len=32, seed=0)
CASES: dict[str, tuple[str, dict[str, Any], str | None]] = {
    "int8_wo": ("int8_wo", {}, None),
    "int4_wo": ("int4_wo", {"group_size": GROUP}, "int8"),
    "awq": ("awq", {"group_size": GROUP}, None),
    "gptq": ("gptq", {"group_size": GROUP, "act_order": True}, None),
    "sq": ("smoothquant", {"alpha": 0.5}, "int8"),
    "sq_token": ("smoothquant", {"activations": "per_token"}, None),
    "fp8": ("fp8", {}, "fp8"),
    "fp8_channel": ("fp8", {"granularity": "per_channel_per_token"}, None),
    "kv_only": ("none", {}, "int8"),
}
# Relative error of the dequantized weight (after undoing smoothing) against HF. GPTQ
# trades weight error for output error (its win is tested in test_quant_gptq.py).
WEIGHT_TOL = {"int8_wo": 0.01, "int4_wo": 0.15, "awq": 0.15, "gptq": 0.3, "sq": 0.01}
WEIGHT_TOL |= {"sq_token": 0.01, "fp8": 0.05, "fp8_channel": 0.05}
# Fake-quant logits against the float model (random weights: a sanity bound, not accuracy).
LOGIT_TOL = {"int8_wo": 0.05, "sq": 0.15, "sq_token": 0.1, "fp8": 0.2, "fp8_channel": 0.2}
LOGIT_TOL |= {"int4_wo": 0.6, "awq": 0.6, "gptq": 0.6, "kv_only": 0.05}
# ONNX Runtime against fake quant. Dynamic FP8 rounding amplifies accumulation-order
# differences (a 1e-7 input nudge moves these logits by ~1e-3), hence its looser bound.
ORT_TOL = {"fp8_channel": 5e-3}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("quant-tiny")
    hf = make_tiny_hf(
        "llama", root / "hf", hidden_size=128, intermediate_size=256, with_tokenizer=True
    )
    convert_hf_checkpoint(hf, root / "canonical", dtype="float16")
    return {"hf": hf, "canonical": root / "canonical", "root": root}


@pytest.fixture(scope="module")
def quantized(tiny: dict[str, Path]) -> dict[str, Path]:
    """Lazily quantize each case once per module."""
    cache: dict[str, Path] = {}

    class Lazy(dict):  # type: ignore[type-arg]
        def __missing__(self, case: str) -> Path:
            method, params, kv = CASES[case]
            out = tiny["root"] / f"q_{case}"
            quantize_checkpoint(
                hf_dir=tiny["hf"],
                canonical_dir=tiny["canonical"],
                out_dir=out,
                method=method,
                params=params,
                kv_cache=kv,
                calibration=CALIB,
            )
            self[case] = out
            return out

    return Lazy(cache)


def _hf_weights(hf_dir: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(hf_dir / "model.safetensors"), "pt") as f:
        return {k: f.get_tensor(k).float() for k in f.keys()}


def _expected_params(algo: str, row: bool, awq: bool) -> dict[str, tuple[torch.dtype, str]]:
    """param -> (dtype, shape pattern) of one quantized module."""
    i8, f32, f16, f8 = torch.int8, torch.float32, torch.float16, torch.float8_e4m3fn
    table: dict[str, dict[str, tuple[torch.dtype, str]]] = {
        "W8A16": {"weight": (i8, "out,in"), "weights_scaling_factor": (f32, "out")},
        "W4A16_AWQ": {"weight": (i8, "out/2,in"), "weights_scaling_factor": (f32, "out,in/g")},
        "W8A8_SQ_PER_CHANNEL": {
            "weight": (i8, "out,in"),
            "weights_scaling_factor": (f32, "out"),
            "activation_scaling_factor": (f32, "1"),
            "prequant_scaling_factor": (f16, "in"),
        },
        "W8A8_SQ_PER_CHANNEL_PER_TOKEN_PLUGIN": {
            "weight": (i8, "out,in"),
            "per_channel_scale": (f32, "1,out"),
        },
        "FP8": {
            "weight": (f8, "out,in"),
            "weights_scaling_factor": (f32, "1"),
            "activation_scaling_factor": (f32, "1"),
        },
        "FP8_PER_CHANNEL_PER_TOKEN": {"weight": (f8, "out,in"), "per_channel_scale": (f32, "out")},
    }
    params = dict(table[algo])
    if awq:
        params["prequant_scaling_factor"] = (f16, "in")
    if algo == "W8A8_SQ_PER_CHANNEL_PER_TOKEN_PLUGIN" and row:
        params["smoother"] = (f32, "1,in")
    return params


def _shape(pattern: str, out: int, inp: int) -> tuple[int, ...]:
    sizes = {"out": out, "in": inp, "out/2": out // 2, "in/g": inp // GROUP, "1": 1}
    return tuple(sizes[p] for p in pattern.split(","))


@pytest.mark.parametrize("case", [c for c in CASES if c != "kv_only"])
def test_checkpoint_has_the_format_tensors(
    case: str, quantized: dict[str, Path], tiny: dict[str, Path]
) -> None:
    ckpt = quantized[case]
    config = read_config(ckpt)
    algo = config["quantization"]["quant_algo"]
    canonical = read_config(tiny["canonical"])
    assert config["quantization"]["exclude_modules"] == ["lm_head", "transformer.vocab_embedding"]
    assert config["forge"]["quantization"]["method"] == CASES[case][0]
    assert {k: v for k, v in config.items() if k not in ("quantization", "forge")} == {
        k: v for k, v in canonical.items() if k not in ("quantization", "forge")
    }
    targets = linear_targets(_hf_config(tiny["hf"]))
    with CheckpointReader(ckpt) as reader, CheckpointReader(tiny["canonical"]) as base:
        names = set(reader.names())
        for target in targets:
            out_f, in_f = base.shape(f"{target.module}.weight")
            row = target.kind in ("attention.dense", "mlp.proj")
            expected = _expected_params(algo, row, awq=case == "awq")
            stored = {
                n.removeprefix(target.module + ".")
                for n in names
                if n.startswith(target.module + ".")
            }
            assert stored == set(expected), target.module
            for param, (dtype, pattern) in expected.items():
                tensor = reader.get(f"{target.module}.{param}")
                assert tensor.dtype == dtype, f"{target.module}.{param}"
                assert tuple(tensor.shape) == _shape(pattern, out_f, in_f), (
                    f"{target.module}.{param}"
                )
        # Everything else is the canonical tensor, untouched (norms are folded for the plugin).
        replaced = {f"{t.module}.weight" for t in targets}
        for name in base.names():
            if name not in replaced and not name.endswith("norm.weight"):
                assert torch.equal(reader.get(name), base.get(name)), name


def _hf_config(hf_dir: Path) -> dict[str, Any]:
    import json

    return json.loads((hf_dir / "config.json").read_text())


@pytest.mark.parametrize("case", [c for c in CASES if c != "kv_only"])
def test_dequantized_weights_are_close_to_hf(
    case: str, quantized: dict[str, Path], tiny: dict[str, Path]
) -> None:
    hf = _hf_weights(tiny["hf"])
    with CheckpointReader(quantized[case]) as reader, CheckpointReader(tiny["canonical"]) as base:
        for target in linear_targets(_hf_config(tiny["hf"])):
            original = torch.cat([hf[f"{s}.weight"] for s in target.sources], dim=0)
            effective = _unsmoothed(reader, base, target.module, target.layer, target.kind)
            rel = float((effective - original).norm() / original.norm())
            assert rel < WEIGHT_TOL[case], (target.module, rel)


def _unsmoothed(
    reader: CheckpointReader, base: CheckpointReader, module: str, layer: int, kind: str
) -> torch.Tensor:
    """The dequantized weight with any smoothing undone, comparable to the HF weight."""
    weight = dequantized_weight(reader, module)
    assert weight is not None
    if reader.has(f"{module}.prequant_scaling_factor"):
        return weight * reader.get(f"{module}.prequant_scaling_factor").float()
    if reader.has(f"{module}.smoother"):
        return weight / reader.get(f"{module}.smoother").float()
    norm = {
        "attention.qkv": "input_layernorm",
        "mlp.fc": "post_layernorm",
        "mlp.gate": "post_layernorm",
    }
    if reader.has(f"transformer.layers.{layer}.{norm.get(kind, '')}.scale_to_int"):
        name = f"transformer.layers.{layer}.{norm[kind]}.weight"
        return weight * (reader.get(name).float() / base.get(name).float())
    return weight


@pytest.fixture(scope="module")
def eval_ids() -> torch.Tensor:
    return torch.randint(0, 256, (2, 20), generator=torch.Generator().manual_seed(7))


@pytest.fixture(scope="module")
def float_logits(tiny: dict[str, Path], eval_ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return load_hf_model(tiny["hf"])(input_ids=eval_ids).logits


@pytest.mark.parametrize("case", list(CASES))
def test_fake_quant_logits_stay_near_float(
    case: str, quantized: dict[str, Path], eval_ids: torch.Tensor, float_logits: torch.Tensor
) -> None:
    fake = FakeQuantForward(quantized[case])
    try:
        logits = fake.logits(eval_ids)
    finally:
        fake.close()
    rel = float((logits - float_logits).norm() / float_logits.norm())
    assert 0 < rel < LOGIT_TOL[case]


def _engine_logits(ckpt: Path, out: Path, ids: torch.Tensor) -> np.ndarray:
    """Logits of the engine ``forge build`` makes, run by the runtime verify uses."""
    from trtllm_forge.engine.backends import BuildOptions, build_engine
    from trtllm_forge.engine.runtime import OrtEngine

    options = BuildOptions(max_batch_size=2, max_input_len=32, max_seq_len=64)
    build_engine("onnxruntime", ckpt, out, options)
    engine = OrtEngine.load(out, threads=1)
    return np.stack([engine.score(row.tolist()) for row in ids])


@pytest.mark.parametrize("case", list(CASES))
def test_engine_matches_fake_quant(
    case: str, quantized: dict[str, Path], tiny: dict[str, Path], eval_ids: torch.Tensor
) -> None:
    """The shipped runtime computes what the checkpoint means (ORT's QDQ fusions would swap
    in integer kernels for weight-only layers and refuse FP8 graphs)."""
    got = _engine_logits(quantized[case], tiny["root"] / f"engine_{case}", eval_ids)
    fake = FakeQuantForward(quantized[case])
    try:
        want = fake.logits(eval_ids).numpy()
    finally:
        fake.close()
    rel = float(np.linalg.norm(got - want) / np.linalg.norm(want))
    assert rel < ORT_TOL.get(case, 1e-5)


def test_kv_cache_scales_come_from_post_rope_ranges(
    quantized: dict[str, Path], tiny: dict[str, Path]
) -> None:
    from trtllm_forge.quant.calibration import load_calibration

    data = load_calibration(CALIB, tiny["hf"])
    ranges = kv_ranges(load_hf_model(tiny["hf"]), data.batches(8))
    with (
        CheckpointReader(quantized["int4_wo"]) as int8_kv,
        CheckpointReader(quantized["fp8"]) as fp8_kv,
    ):
        for layer, (k, v) in ranges.items():
            prefix = f"transformer.layers.{layer}.attention."
            assert int8_kv.get(prefix + "k_cache_scaling_factor").item() == pytest.approx(k / 127)
            assert int8_kv.get(prefix + "kv_cache_scaling_factor").item() == pytest.approx(
                max(k, v) / 127
            )
            # FP8 KV scales are raised to 1.0 at least (ModelOpt's convention).
            assert fp8_kv.get(prefix + "kv_cache_scaling_factor").item() == max(
                1.0, max(k, v) / 448
            )
    assert read_config(quantized["kv_only"])["quantization"] == {
        "quant_algo": None,
        "kv_cache_quant_algo": "INT8",
        "group_size": 128,
        "has_zero_point": False,
        "pre_quant_scale": False,
        "exclude_modules": None,
    }


def test_exclude_patterns_keep_whole_fused_layers_unquantized(tiny: dict[str, Path]) -> None:
    out = tiny["root"] / "q_excluded"
    summary = quantize_checkpoint(
        hf_dir=tiny["hf"],
        canonical_dir=tiny["canonical"],
        out_dir=out,
        method="int8_wo",
        exclude=["lm_head", "*mlp.proj", "model.layers.0.self_attn.k_proj"],
    )
    excluded = [
        "transformer.layers.0.attention.qkv",
        "transformer.layers.0.mlp.proj",
        "transformer.layers.1.mlp.proj",
    ]
    assert summary["excluded_modules"] == excluded
    assert read_config(out)["quantization"]["exclude_modules"] == [
        "lm_head",
        "transformer.vocab_embedding",
        *excluded,
    ]
    with CheckpointReader(out) as reader, CheckpointReader(tiny["canonical"]) as base:
        for module in excluded:
            assert torch.equal(reader.get(f"{module}.weight"), base.get(f"{module}.weight"))
            assert not reader.has(f"{module}.weights_scaling_factor")
        assert reader.get("transformer.layers.1.attention.qkv.weight").dtype == torch.int8


@pytest.mark.parametrize(
    ("kwargs", "code", "fragment"),
    [
        ({"method": "int8_wo", "exclude": ["*mlp.down"]}, ExitCode.RECIPE, "matches no module"),
        (
            {"method": "awq", "params": {"group_size": 128}},
            ExitCode.RECIPE,
            "not a multiple of group_size",
        ),
        ({"method": "int8_wo", "kv_cache": "int4"}, ExitCode.RECIPE, "kv_cache"),
        (
            {
                "method": "smoothquant",
                "params": {"activations": "per_token"},
                "exclude": ["*mlp.proj"],
            },
            ExitCode.RECIPE,
            "per_token",
        ),
        ({"method": "mxfp8"}, ExitCode.RECIPE, "unknown quantization method 'mxfp8'"),
    ],
)
def test_bad_requests_fail_before_loading_weights(
    kwargs: dict[str, Any], code: ExitCode, fragment: str, tmp_path: Path
) -> None:
    hf = make_tiny_hf("llama", tmp_path / "hf")  # hidden 64: group 128 cannot fit
    with pytest.raises(ForgeError) as err:
        quantize_checkpoint(
            hf_dir=hf, canonical_dir=tmp_path / "missing", out_dir=tmp_path / "out", **kwargs
        )
    assert err.value.code == code
    assert fragment in err.value.message


def test_recipe_adapter_splits_the_quantize_section(tiny: dict[str, Path]) -> None:
    from trtllm_forge.quant.api import method_params
    from trtllm_forge.quant.api import quantize_checkpoint as from_recipe
    from trtllm_forge.recipe.schema import Calibration, Gptq

    spec = Gptq(
        method="gptq", group_size=64, damping=0.05, calibration=Calibration(samples=2, seq_len=16)
    )
    params = {"group_size": 64, "damping": 0.05, "act_order": False, "quantize_lm_head": False}
    assert method_params(spec) == params  # quantize_lm_head: gptq's option since issue 20
    summary = from_recipe(
        hf_dir=tiny["hf"],
        canonical_dir=tiny["canonical"],
        out_dir=tiny["root"] / "q_recipe",
        spec=spec,
    )
    assert summary["method"] == "gptq"
    assert summary["calibration"]["samples"] == 2 and summary["calibration"]["seq_len"] == 16
    assert summary["params"] == params
    assert summary["quantization"]["quant_algo"] == "W4A16_AWQ"


def test_trtllm_export_dequantizes_w8a16_only(quantized: dict[str, Path]) -> None:
    from safetensors.torch import load_file

    from trtllm_forge.quant.trtllm_compat import trtllm_build_tensors

    w8 = quantized["int8_wo"]
    tensors = load_file(w8 / "rank0.safetensors")
    out = trtllm_build_tensors(tensors, read_config(w8)["quantization"], torch.float16)
    module = "transformer.layers.1.mlp.proj"
    assert f"{module}.weights_scaling_factor" not in out
    assert out[f"{module}.weight"].dtype == torch.float16
    with CheckpointReader(w8) as reader:
        expected = dequantized_weight(reader, module)
    assert expected is not None
    assert torch.allclose(out[f"{module}.weight"].float(), expected, rtol=1e-3, atol=1e-6)
    awq = quantized["awq"]
    tensors = load_file(awq / "rank0.safetensors")
    assert (
        trtllm_build_tensors(tensors, read_config(awq)["quantization"], torch.float16).keys()
        == tensors.keys()
    )


def test_awq_with_one_group_per_row(tmp_path: Path) -> None:
    """in_features == group_size: ModelOpt's block amax has the numel of a per-channel one."""
    hf = make_tiny_hf("llama", tmp_path / "hf", with_tokenizer=True)  # hidden 64
    convert_hf_checkpoint(hf, tmp_path / "canonical", dtype="float16")
    quantize_checkpoint(
        hf_dir=hf,
        canonical_dir=tmp_path / "canonical",
        out_dir=tmp_path / "q",
        method="awq",
        params={"group_size": 64},
        calibration=CalibrationSpec(samples=2, seq_len=16),
    )
    with CheckpointReader(tmp_path / "q") as reader:
        assert reader.shape("transformer.layers.0.attention.qkv.weights_scaling_factor") == (128, 1)
        assert reader.shape("transformer.layers.0.mlp.proj.weights_scaling_factor") == (64, 2)
