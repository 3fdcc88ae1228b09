"""Mixture-of-experts checkpoints (Mixtral, Qwen2-MoE, Qwen3-MoE): what trtllm-build
cannot take, and quantization of each expert from the tokens routed to it."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from tests.helpers import write_recipe
from tests.tinymodels import TINY_DEFAULTS
from trtllm_forge.errors import ExitCode, ForgeError
from trtllm_forge.recipe.load import load_recipe

MOE_CONFIGS: dict[str, dict[str, Any]] = {
    "MixtralForCausalLM": {"model_type": "mixtral", "num_local_experts": 4},
    "Qwen3MoeForCausalLM": {"model_type": "qwen3_moe", "num_experts": 4},
    "Qwen2MoeForCausalLM": {
        "model_type": "qwen2_moe",
        "num_experts": 4,
        "shared_expert_intermediate_size": 48,
    },
}


def _moe_config(arch: str) -> dict[str, Any]:
    config = {**TINY_DEFAULTS, "architectures": [arch], **MOE_CONFIGS[arch]}
    return config | {"num_experts_per_tok": 2, "moe_intermediate_size": 32}


@pytest.mark.parametrize("arch", list(MOE_CONFIGS))
def test_trtllm_build_is_refused_at_plan_time(tmp_path: Path, arch: str) -> None:
    """forge's expert layout is not TensorRT-LLM's fused one: build.backend trtllm and
    `forge export trtllm-ckpt` stop before any work (exit 2, at the recipe's source),
    while the ONNX backends take the same model."""
    from trtllm_forge.pipeline.preflight import check_model, check_trtllm_export

    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(_moe_config(arch)))
    for backend, check in (
        ("trtllm", lambda loaded: check_model(loaded, _moe_config(arch))),
        ("onnxruntime", check_trtllm_export),
    ):
        recipe = write_recipe(
            tmp_path / f"{backend}.yaml",
            source={"path": "m"},
            convert={"dtype": "float16"},
            build={"backend": backend},
        )
        with pytest.raises(ForgeError) as info:
            check(load_recipe(recipe))
        assert info.value.code == ExitCode.RECIPE, backend
        assert "trtllm-build" in info.value.message and "fused" in info.value.message
        location = info.value.location
        assert location is not None and location.line > 0
    onnx = write_recipe(tmp_path / "onnx.yaml", source={"path": "m"})
    check_model(load_recipe(onnx), _moe_config(arch))  # no refusal


# -- quantization of each expert from its routed tokens ---------------------------------

IDS = torch.randint(3, 250, (2, 20), generator=torch.Generator().manual_seed(3))
# One calibration token: each layer routes it to top-2 of 4 experts, so two go without.
ONE_TOKEN = torch.tensor([[17]])


@pytest.fixture(scope="module")
def mixtral(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from tests.tinymodels import make_tiny_hf
    from trtllm_forge.checkpoint.convert import convert_hf_checkpoint

    root = tmp_path_factory.mktemp("mixtral")
    # Each expert 64 wide: at TP=2 a rank's share of proj's input is one INT4 group of 32.
    hf = make_tiny_hf("mixtral", root / "hf", intermediate_size=64)
    convert_hf_checkpoint(hf, root / "canonical", dtype="float32")
    return {"root": root, "hf": hf, "canonical": root / "canonical"}


def _quantized(mixtral: dict[str, Path], method: str) -> Path:
    """The tiny Mixtral quantized with ``method`` (INT4 groups of 32), calibrated (when the
    method calibrates) on ONE_TOKEN; made once per module."""
    from trtllm_forge.quant.quantize import quantize_checkpoint

    out = mixtral["root"] / f"q_{method}"
    if not out.exists():
        quantize_checkpoint(
            hf_dir=mixtral["hf"],
            canonical_dir=mixtral["canonical"],
            out_dir=out,
            method=method,
            params={"group_size": 32},
            calibration=ONE_TOKEN,
        )
    return out


def _routed(hf: Path, ids: torch.Tensor) -> dict[str, int]:
    """Tokens transformers' own router sends to each expert (checkpoint names)."""
    from trtllm_forge.quant.quantize import load_hf_model

    model = load_hf_model(hf)
    with torch.no_grad():
        out = model(input_ids=ids, output_router_logits=True)
    top_k, counts = model.config.num_experts_per_tok, {}
    for layer, logits in enumerate(out.router_logits):
        chosen = torch.topk(logits.softmax(-1), top_k, dim=-1).indices.reshape(-1)
        for e in range(model.config.num_local_experts):
            name = f"model.layers.{layer}.block_sparse_moe.experts.{e}"
            counts[name] = int((chosen == e).sum())
    return counts


def test_unfused_experts_compute_what_transformers_does(mixtral: dict[str, Path]) -> None:
    """Per-expert linears under the checkpoint's names give transformers' logits, and each
    expert counts exactly the tokens transformers' router sends it."""
    from trtllm_forge.checkpoint.convert import load_hf_config
    from trtllm_forge.quant.calibration import from_tokens
    from trtllm_forge.quant.moe import count_routed, unfuse_experts
    from trtllm_forge.quant.quantize import load_hf_model

    model = load_hf_model(mixtral["hf"])
    with torch.no_grad():
        want = model(input_ids=IDS).logits
    experts = unfuse_experts(model, load_hf_config(mixtral["hf"]))
    assert experts is not None
    modules = dict(model.named_modules())
    assert isinstance(modules["model.layers.1.mlp.experts.3.w2"], nn.Linear)
    with torch.no_grad():
        got = model(input_ids=IDS).logits
    assert float((got - want).abs().max() / want.abs().max()) < 1e-6
    assert count_routed(model, experts, from_tokens(IDS)) == _routed(mixtral["hf"], IDS)


@pytest.mark.parametrize("method", ["int4_wo", "awq", "gptq"])
def test_int4_experts_tp2_engine(mixtral: dict[str, Path], method: str) -> None:
    """INT4 on every expert (4 experts, top-2), TP=2 splitting each expert's intermediate
    size: the engine computes the checkpoint's fake quant at TP=1 and TP=2, close to the
    float model. Calibrated methods name the experts calibration never reached (one token:
    two per layer) and quantize those from their weights alone."""
    from tests.engine_support import quantized_logits_check
    from tests.test_quant_methods import _engine_logits
    from trtllm_forge.checkpoint.io import read_config
    from trtllm_forge.checkpoint.shard import shard_checkpoint

    root, out = mixtral["root"], _quantized(mixtral, method)
    info = read_config(out)["forge"]["quantization"]
    if method == "int4_wo":  # no calibration: nothing to report
        assert "experts" not in info
    else:
        routed = _routed(mixtral["hf"], ONE_TOKEN)
        starved = sorted(n for n, c in routed.items() if c == 0)
        assert info["experts"] == {"routed_tokens": routed, "without_tokens": starved}
        assert len(starved) == 4  # 2 of 4 in each of 2 layers
        rtn = load_file(_quantized(mixtral, "int4_wo") / "rank0.safetensors")
        tensors = load_file(out / "rank0.safetensors")
        for name in starved:  # round-to-nearest from the weights: int4_wo's very integers
            layer, expert = re.findall(r"\d+", name)
            for linear in ("fc", "gate", "proj"):
                key = f"transformer.layers.{layer}.mlp.experts.{expert}.{linear}.weight"
                assert torch.equal(tensors[key], rtn[key]), key
    vs_float, vs_fake = quantized_logits_check(mixtral["hf"], out, root / f"onnx_{method}", IDS)
    assert 0 < vs_float < 0.6  # the Llama INT4 tolerance (tests/test_quant_methods.py)
    assert vs_fake < 1e-4
    shard_checkpoint(out, root / f"{method}_tp2", tp=2, pp=1)
    tp1 = _engine_logits(out, root / f"onnx_{method}", IDS)
    tp2 = _engine_logits(root / f"{method}_tp2", root / f"onnx_{method}_tp2", IDS)
    assert float(np.abs(tp2 - tp1).max() / np.abs(tp1).max()) < 1e-5


class _Log:
    """A Progress that keeps what it is told (the build output's lines)."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def log(self, message: str) -> None:
        self.lines.append(message)

    def task(self, description: str, total: float | None = None) -> Any:
        from trtllm_forge.context import NullProgress

        return NullProgress().task(description, total)


@pytest.mark.parametrize("arch", ["qwen3_moe", "qwen2_moe"])
def test_qwen_moe_experts_awq_and_gptq(tmp_path: Path, arch: str) -> None:
    """Qwen3-MoE (top-k not renormalized) and Qwen2-MoE (plus a shared expert, a dense
    MLP every token reaches): AWQ and GPTQ calibrate every routed expert from its tokens
    (64 calibration tokens reach all four), the engine computes the checkpoint's fake quant;
    with one calibration token the starved experts are named in the build output."""
    from tests.engine_support import quantized_logits_check
    from tests.tinymodels import make_tiny_hf
    from trtllm_forge.checkpoint.convert import convert_hf_checkpoint
    from trtllm_forge.checkpoint.io import read_config
    from trtllm_forge.quant.quantize import quantize_checkpoint

    hf = make_tiny_hf(arch, tmp_path / "hf", shared_expert_intermediate_size=64)
    convert_hf_checkpoint(hf, tmp_path / "canonical", dtype="float32")
    calibration = torch.randint(3, 250, (2, 32), generator=torch.Generator().manual_seed(0))
    for method in ("awq", "gptq"):
        out = tmp_path / method
        quantize_checkpoint(
            hf_dir=hf,
            canonical_dir=tmp_path / "canonical",
            out_dir=out,
            method=method,
            params={"group_size": 32},
            calibration=calibration,
        )
        experts = read_config(out)["forge"]["quantization"]["experts"]
        assert experts["without_tokens"] == []
        assert len(experts["routed_tokens"]) == 8  # 4 experts x 2 layers
        assert sum(experts["routed_tokens"].values()) == 2 * 64 * 2  # layers x tokens x top-k
        vs_float, vs_fake = quantized_logits_check(hf, out, tmp_path / f"onnx_{method}", IDS)
        assert 0 < vs_float < 0.6  # the Llama INT4 tolerance (tests/test_quant_methods.py)
        assert vs_fake < 1e-4
    log = _Log()
    quantize_checkpoint(
        hf_dir=hf,
        canonical_dir=tmp_path / "canonical",
        out_dir=tmp_path / "starved",
        method="gptq",
        params={"group_size": 32},
        calibration=ONE_TOKEN,
        progress=log,
    )
    starved = read_config(tmp_path / "starved")["forge"]["quantization"]["experts"]
    assert len(starved["without_tokens"]) == 4
    warning = next(line for line in log.lines if "received no calibration token" in line)
    assert all(name in warning for name in starved["without_tokens"])


@pytest.mark.parametrize("arch", list(MOE_CONFIGS))
def test_quantized_hf_folder_is_refused_at_plan_time(tmp_path: Path, arch: str) -> None:
    """The Hugging Face writers quantize one linear per HF module; transformers loads the
    experts fused, so a quantized MoE folder is refused before any work (exit 2)."""
    from trtllm_forge.pipeline.preflight import check_model

    recipe = write_recipe(
        tmp_path / "r.yaml",
        source={"path": "m"},
        quantize={"method": "fp8"},
        build={"backend": "hf", "format": "modelopt"},
    )
    with pytest.raises(ForgeError) as info:
        check_model(load_recipe(recipe), _moe_config(arch))
    assert info.value.code == ExitCode.RECIPE and "fused 3-D" in info.value.message
    assert info.value.location is not None and info.value.location.line > 0


def test_fp8_expert_ranges_come_from_routed_tokens(mixtral: dict[str, Path]) -> None:
    """Each expert's FP8 activation range (ModelOpt's max calibration) is the largest
    |input| over the tokens transformers' router sends it, not over every token."""
    from trtllm_forge.quant import layout
    from trtllm_forge.quant.quantize import load_hf_model, quantize_checkpoint

    out = mixtral["root"] / "q_fp8"
    quantize_checkpoint(
        hf_dir=mixtral["hf"],
        canonical_dir=mixtral["canonical"],
        out_dir=out,
        method="fp8",
        calibration=IDS,
    )
    model = load_hf_model(mixtral["hf"])
    inputs: dict[int, torch.Tensor] = {}
    for i, layer in enumerate(model.model.layers):
        layer.mlp.register_forward_pre_hook(
            lambda _m, args, i=i: inputs.__setitem__(i, args[0].reshape(-1, args[0].shape[-1]))
        )
    with torch.no_grad():
        routers = model(input_ids=IDS, output_router_logits=True).router_logits
    tensors = load_file(out / "rank0.safetensors")
    below_global = 0
    for i, logits in enumerate(routers):
        chosen = torch.topk(logits.softmax(-1), 2, dim=-1).indices
        for e in range(4):
            routed = inputs[i][(chosen == e).any(dim=-1)]
            want = routed.abs().max()
            scale = tensors[f"transformer.layers.{i}.mlp.experts.{e}.fc.activation_scaling_factor"]
            assert torch.allclose(scale * layout.FP8_MAX, want, rtol=1e-5), (i, e)
            below_global += int(want < inputs[i].abs().max())
    assert below_global > 0  # routing changes the ranges here, so the check can fail


def test_tp_must_split_every_expert(tmp_path: Path) -> None:
    """TP splits each routed expert (moe_intermediate_size) and the shared expert like a
    dense MLP: a tp dividing neither is refused at plan time, the hint offering only tps
    that fit (a dense intermediate_size of 128 would have let tp=4 through)."""
    from trtllm_forge.pipeline.preflight import check_model

    config = _moe_config("Qwen2MoeForCausalLM") | {"moe_intermediate_size": 34}
    for tp, fits in ((2, True), (4, False)):
        recipe = write_recipe(tmp_path / "r.yaml", source={"path": "m"}, parallel={"tp": tp})
        if fits:
            check_model(load_recipe(recipe), config)
            continue
        with pytest.raises(ForgeError) as info:
            check_model(load_recipe(recipe), config)
        assert "moe_intermediate_size 34" in info.value.message
        assert info.value.hint is not None and "[1, 2]" in info.value.hint


@pytest.mark.slow
def test_forge_build_int4_awq_tp2_reports_starved_experts(tmp_path: Path) -> None:
    """`forge build` of the tiny Mixtral with int4 AWQ at TP=2 on 8 calibration tokens:
    verify's gates pass against transformers, and the experts calibration never reached
    are named both in the build output and in the calibrate artifact's metadata."""
    from tests.helpers import forge
    from tests.tinymodels import make_tiny_hf

    make_tiny_hf("mixtral", tmp_path / "m", intermediate_size=64, with_tokenizer=True)
    recipe = write_recipe(
        tmp_path / "r.yaml",
        source={"path": "m"},
        convert={"dtype": "float16"},
        quantize={"method": "awq", "group_size": 32, "calibration": {"samples": 1, "seq_len": 8}},
        parallel={"tp": 2},
    )
    run = forge("build", str(recipe))
    assert run.code == 0, run.err
    manifests = list(Path(os.environ["FORGE_HOME"]).glob("artifacts/calibrate/*/manifest.json"))
    experts = json.loads(manifests[0].read_text())["info"]["experts"]
    assert sum(experts["routed_tokens"].values()) == 2 * 8 * 2  # layers x tokens x top-k
    starved = experts["without_tokens"]
    assert starved == sorted(n for n, c in experts["routed_tokens"].items() if c == 0)
    assert starved  # 8 tokens of the built-in corpus (seed 0) miss an expert of this model
    warning = [line for line in run.err.splitlines() if "received no calibration token" in line]
    assert len(warning) == 1
    assert all(name in warning[0] for name in starved)


# The Llama logit tolerances of tests/test_quant_methods.py (SmoothQuant, FP8, INT4).
OTHER_METHODS = {
    "smoothquant": ({"activations": "per_tensor"}, 0.15),
    "fp8_block": ({"block_size": 32}, 0.2),
    "w4a8_awq": ({"group_size": 32}, 0.6),
}


@pytest.mark.parametrize("method", list(OTHER_METHODS))
def test_other_methods_on_experts(mixtral: dict[str, Path], method: str) -> None:
    """SmoothQuant (a pre-quant scale per expert linear), FP8 blocks and W4A8 AWQ on every
    expert: the engine computes the checkpoint's fake quant, close to the float model."""
    from tests.engine_support import quantized_logits_check
    from trtllm_forge.quant.quantize import quantize_checkpoint

    params, tolerance = OTHER_METHODS[method]
    out = mixtral["root"] / f"q_{method}"
    quantize_checkpoint(
        hf_dir=mixtral["hf"],
        canonical_dir=mixtral["canonical"],
        out_dir=out,
        method=method,
        params=params,
        calibration=IDS,
    )
    onnx = mixtral["root"] / f"onnx_{method}"
    vs_float, vs_fake = quantized_logits_check(mixtral["hf"], out, onnx, IDS)
    assert 0 < vs_float < tolerance
    assert vs_fake < 1e-4


def test_kv_cache_only_on_moe(mixtral: dict[str, Path]) -> None:
    """An int8 KV cache without weight quantization (method none) on the MoE model: the
    experts stay float, the engine computes the checkpoint's fake quant."""
    from tests.engine_support import quantized_logits_check
    from trtllm_forge.checkpoint.io import read_config
    from trtllm_forge.quant.quantize import quantize_checkpoint

    out = mixtral["root"] / "q_kv"
    quantize_checkpoint(
        hf_dir=mixtral["hf"],
        canonical_dir=mixtral["canonical"],
        out_dir=out,
        method="none",
        kv_cache="int8",
        calibration=IDS,
    )
    assert read_config(out)["quantization"]["kv_cache_quant_algo"] == "INT8"
    assert load_file(out / "rank0.safetensors")[
        "transformer.layers.0.mlp.experts.2.fc.weight"
    ].is_floating_point()
    vs_float, vs_fake = quantized_logits_check(mixtral["hf"], out, mixtral["root"] / "onnx_kv", IDS)
    assert 0 < vs_float < 0.05 and vs_fake < 1e-4


def test_hub_moe_export_is_refused_before_convert(tmp_path: Path) -> None:
    """A hub source's config.json is known only after fetch: `forge export trtllm-ckpt` of
    a Mixtral refuses it there (exit 2), before convert or calibrate run."""
    from tests.helpers import assert_clean_error, forge, hub_cache
    from tests.tinymodels import make_tiny_hf

    hf = make_tiny_hf("mixtral", tmp_path / "m", intermediate_size=64, with_tokenizer=True)
    files = {p.name: p.read_bytes() for p in hf.iterdir() if p.is_file()}
    hub_cache(tmp_path / "hub", "acme/tiny-mixtral", files)
    recipe = write_recipe(
        tmp_path / "r.yaml", source={"hf": "acme/tiny-mixtral"}, convert={"dtype": "float16"}
    )
    home = tmp_path / "home"
    env = {"HF_HUB_CACHE": str(tmp_path / "hub"), "FORGE_HOME": str(home)}
    run = forge("export", "trtllm-ckpt", str(recipe), str(tmp_path / "out"), env=env)
    assert_clean_error(run, 2, "TensorRT-LLM")
    assert (home / "artifacts" / "fetch").is_dir()
    assert not (home / "artifacts" / "convert").exists()
    assert not (tmp_path / "out").exists()
