"""Mixture-of-experts checkpoints (Mixtral, Qwen2-MoE, Qwen3-MoE): what trtllm-build
cannot take, and quantization of each expert from the tokens routed to it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

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
