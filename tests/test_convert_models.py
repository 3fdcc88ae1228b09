"""Model families: config validation, dims, the tensor table and the plugin registry."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from trtllm_forge.errors import ExitCode, ForgeError
from trtllm_forge.models import REGISTRY, FamilyRegistry, family_for, model_dims
from trtllm_forge.models.llama import rope_settings

BASE: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 128,
    "vocab_size": 256,
    "max_position_embeddings": 128,
}


def test_model_dims() -> None:
    assert model_dims(BASE) == {
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "num_hidden_layers": 2,
        "vocab_size": 256,
        "hidden_size": 64,
        "head_size": 16,
        "intermediate_size": 128,
    }
    no_kv = {k: v for k, v in BASE.items() if k != "num_key_value_heads"}
    assert model_dims(no_kv)["num_key_value_heads"] == 4


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ({"hidden_size": 10**12}, "hidden_size = 1000000000000 exceeds"),
        ({"num_hidden_layers": 10**5}, "num_hidden_layers = 100000 exceeds"),
        ({"vocab_size": 10**9}, "vocab_size = 1000000000 exceeds"),
        ({"vocab_size": 0}, "vocab_size must be positive"),
        ({"num_attention_heads": -4}, "num_attention_heads must be positive"),
        ({"intermediate_size": 0}, "intermediate_size must be positive"),
        ({"hidden_size": 65}, "not divisible by num_attention_heads"),
        ({"num_key_value_heads": 3}, "not a multiple of num_key_value_heads 3"),
        ({"num_hidden_layers": "2"}, "must be an integer"),
        ({"max_position_embeddings": 0}, "max_position_embeddings = 0 is out of range"),
    ],
)
def test_absurd_configs_fail_fast(override: dict[str, Any], match: str) -> None:
    with pytest.raises(ForgeError, match=match) as err:
        family_for({**BASE, **override})
    assert err.value.code == ExitCode.SOURCE


def test_head_dim_lifts_the_divisibility_rule() -> None:
    config = {**BASE, "hidden_size": 60, "head_dim": 16}
    assert model_dims(config)["head_size"] == 16
    assert family_for(config).trtllm_config(config, dtype="float16")["head_size"] == 16


def test_unsupported_features_are_reported() -> None:
    with pytest.raises(ForgeError, match="hidden_act 'gelu'"):
        family_for({**BASE, "hidden_act": "gelu"})
    with pytest.raises(ForgeError, match="rope scaling type 'yarn'"):
        family_for({**BASE, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}})
    with pytest.raises(ForgeError, match="quantization_config"):
        family_for({**BASE, "quantization_config": {"quant_method": "awq"}})
    with pytest.raises(ForgeError, match="no 'architectures'"):
        family_for({k: v for k, v in BASE.items() if k != "architectures"})


def test_rope_settings_read_both_config_generations() -> None:
    old = {"rope_theta": 500000.0, "rope_scaling": {"type": "linear", "factor": 4.0}}
    new = {"rope_parameters": {"rope_theta": 500000.0, "rope_type": "linear", "factor": 4.0}}
    for cfg in (old, new):
        theta, scaling = rope_settings(cfg)
        assert theta == 500000.0
        assert scaling == {"type": "linear", "rope_type": "linear", "factor": 4.0}
    assert rope_settings({"rope_parameters": {"rope_theta": 1e6, "rope_type": "default"}}) == (
        1e6,
        None,
    )
    assert rope_settings({}) == (10000.0, None)


def test_tensor_table_is_complete_for_qwen2() -> None:
    config = {**BASE, "architectures": ["Qwen2ForCausalLM"]}
    plan = family_for(config).tensor_plan(config)
    targets = {rule.target for rule in plan.rules}
    assert "transformer.layers.1.attention.qkv.bias" in targets
    assert "transformer.layers.1.attention.dense.bias" not in targets
    qkv = next(r for r in plan.rules if r.target == "transformer.layers.0.attention.qkv.weight")
    assert qkv.fusion == "concat_rows"
    assert qkv.sources == tuple(f"model.layers.0.self_attn.{p}_proj.weight" for p in "qkv")
    fc = next(r for r in plan.rules if r.target == "transformer.layers.0.mlp.fc.weight")
    assert fc.sources == ("model.layers.0.mlp.gate_proj.weight",)  # fc is the activated branch


def test_unknown_architecture_suggests_a_close_name() -> None:
    with pytest.raises(ForgeError, match="did you mean LlamaForCausalLM") as err:
        REGISTRY.get("LLamaForCausalLM")
    assert "Qwen2ForCausalLM" in (err.value.hint or "")


def _write_plugin(root: Path, body: str) -> None:
    """A real installed distribution (dist-info on sys.path) exposing one entry point."""
    (root / "forge_demo_plugin.py").write_text(textwrap.dedent(body))
    info = root / "forge_demo_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: forge-demo-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[trtllm_forge.plugins]\ndemo = forge_demo_plugin:register\n"
    )


PLUGIN = """
    from trtllm_forge.models.llama import LlamaFamily

    class DemoFamily(LlamaFamily):
        name = "demo"
        architectures = ("DemoForCausalLM",)

    def register(registry):
        if registry.kind == "models":
            registry.register(DemoFamily())
"""


def test_plugin_family_is_loaded_from_an_entry_point(tmp_path: Path) -> None:
    _write_plugin(tmp_path, PLUGIN)
    script = textwrap.dedent(
        f"""
        import sys, json
        sys.path.insert(0, {str(tmp_path)!r})
        from trtllm_forge.models import FamilyRegistry
        registry = FamilyRegistry()
        family = registry.get("DemoForCausalLM")
        print(json.dumps([family.name, "DemoForCausalLM" in registry.names()]))
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == ["demo", True]


def test_broken_plugin_is_a_dependency_error(tmp_path: Path) -> None:
    _write_plugin(tmp_path, "def register(registry):\n    raise RuntimeError('boom')\n")
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(tmp_path)!r})
        from trtllm_forge.errors import ForgeError
        from trtllm_forge.models import FamilyRegistry
        from trtllm_forge.models.llama import LlamaFamily
        registry = FamilyRegistry()
        registry.register(LlamaFamily())
        # A built-in lookup never loads plugins, so a broken plugin cannot break it.
        print(registry.get("LlamaForCausalLM").name, end=" ")
        try:
            registry.get("NopeForCausalLM")
        except ForgeError as exc:
            print(int(exc.code), exc.message)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("llama 4 plugin 'demo'")
    assert "boom" in out.stdout


def test_duplicate_architecture_is_refused() -> None:
    from trtllm_forge.models.llama import LlamaFamily

    registry = FamilyRegistry(plugin_group=None)
    registry.register(LlamaFamily())
    with pytest.raises(ForgeError, match="registered twice"):
        registry.register(LlamaFamily())


def test_models_package_does_not_import_torch() -> None:
    script = "import sys, trtllm_forge.models; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
