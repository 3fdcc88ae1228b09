"""Quantization method registry: names, parameter validation, cache-key fields, import cost."""

from __future__ import annotations

import subprocess
import sys

import pytest

from trtllm_forge.errors import ExitCode, ForgeError
from trtllm_forge.quant import registry


def test_builtin_methods_are_registered() -> None:
    assert registry.names() == [
        "awq",
        "fp8",
        "fp8_block",
        "gptq",
        "int4_wo",
        "int8_wo",
        "none",
        "nvfp4",
        "smoothquant",
        "w4a8_awq",
    ]


def test_unknown_method_lists_valid_names_and_suggests_the_closest() -> None:
    with pytest.raises(ForgeError) as err:
        registry.get("awk")
    assert err.value.code == ExitCode.RECIPE
    assert "did you mean 'awq'" in err.value.message
    assert (
        err.value.hint is not None and "gptq" in err.value.hint and "smoothquant" in err.value.hint
    )


def test_params_get_defaults_and_map_to_quant_algo() -> None:
    assert registry.key_params("gptq", {"group_size": 64}) == {
        "method": "gptq",
        "group_size": 64,
        "damping": 0.01,
        "act_order": False,
    }
    cases = {
        ("int8_wo", ()): "W8A16",
        ("int4_wo", ()): "W4A16_AWQ",
        ("awq", ()): "W4A16_AWQ",
        ("gptq", ()): "W4A16_AWQ",
        ("smoothquant", ()): "W8A8_SQ_PER_CHANNEL",
        ("smoothquant", (("activations", "per_token"),)): "W8A8_SQ_PER_CHANNEL_PER_TOKEN_PLUGIN",
        ("fp8", ()): "FP8",
        ("fp8", (("granularity", "per_channel_per_token"),)): "FP8_PER_CHANNEL_PER_TOKEN",
        ("none", ()): None,
    }
    for (name, params), algo in cases.items():
        assert registry.validate_params(name, dict(params)).quant_algo() == algo, name
    awq = registry.validate_params("awq", {"group_size": 32}).quantization_fields()
    assert awq == {"group_size": 32, "has_zero_point": False, "pre_quant_scale": True}
    assert registry.validate_params("int4_wo", {}).quantization_fields()["pre_quant_scale"] is False


@pytest.mark.parametrize(
    ("name", "params", "fragment"),
    [
        ("awq", {"group_size": 48}, "quantize.group_size"),
        ("smoothquant", {"alpha": 1.5}, "quantize.alpha"),
        ("int8_wo", {"group_size": 64}, "quantize.group_size"),
        ("fp8", {"granularity": "per_block"}, "quantize.granularity"),
    ],
)
def test_bad_params_are_recipe_errors(name: str, params: dict[str, object], fragment: str) -> None:
    with pytest.raises(ForgeError) as err:
        registry.validate_params(name, params)
    assert err.value.code == ExitCode.RECIPE
    assert fragment in err.value.message


def test_tool_versions_name_modelopt_only_for_modelopt_methods() -> None:
    assert "nvidia-modelopt" in registry.tool_versions("awq")
    assert set(registry.tool_versions("gptq")) == {"torch", "transformers"}


def test_registry_params_targets_and_calibration_digest_do_not_import_torch() -> None:
    code = (
        "import sys\n"
        "from trtllm_forge.quant import registry, targets, calibration, api\n"
        "registry.key_params('awq', {})\n"
        "calibration.source_digest(calibration.CalibrationSpec())\n"
        "print(sorted(m for m in ('torch', 'transformers', 'modelopt') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_each_method_takes_exactly_the_fields_of_its_recipe_section() -> None:
    from trtllm_forge.recipe.schema import (
        QUANT_METHODS,
        QUANTIZE_SECTIONS,
        method_fields,
        method_name,
    )

    assert sorted(QUANT_METHODS) == registry.names()
    for section in QUANTIZE_SECTIONS:
        declared = method_fields(section)
        model = registry.get(method_name(section)).params_model
        assert list(model.model_fields) == list(declared), section.__name__
        for name, info in declared.items():
            assert model.model_fields[name].default == info.default, (section.__name__, name)
            assert model.model_fields[name].description == info.description
