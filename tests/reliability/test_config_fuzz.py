"""Fuzzed config.json values (issue 17): types, ranges and contradictions in a
real model's config.json are either accepted or refused with a ForgeError
(exit 2 or 5) by the checks that run before any work — never another exception,
never a hang. A sample also goes through the real CLI (`forge recipe check`,
which runs the same checks on a local model) under strace.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.reliability import tracing
from tests.reliability.harness import forge, record, tiny_recipe
from tests.tinymodels import RECIPE_ARCHES
from trtllm_forge.errors import ExitCode, ForgeError
from trtllm_forge.pipeline.preflight import check_model
from trtllm_forge.recipe.load import load_recipe

pytestmark = pytest.mark.reliability

FLOOR = 5_000  # what the tier promises per run (docs/reliability.md)
EXAMPLES = max(FLOOR, int(os.environ.get("FORGE_CONFIG_FUZZ_EXAMPLES", FLOOR)))
CLI_EXAMPLES = 20
FAMILIES = sorted(RECIPE_ARCHES)

# Values of every JSON type, the edges of each range, and huge or negative sizes.
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.sampled_from([0, 1, -1, 2, 3, 7, 64, 2**31, 2**63, 10**30, -(10**12)]),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["llama", "LlamaForCausalLM", "Gemma3ForCausalLM", "silu", "gelu", ""]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=8,
)


def _configs(base: dict[str, dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
    @st.composite
    def mutated(draw: st.DrawFn) -> dict[str, Any]:
        config = json.loads(json.dumps(base[draw(st.sampled_from(FAMILIES))]))
        keys = sorted(config)
        for _ in range(draw(st.integers(1, 5))):
            op = draw(st.sampled_from(["set", "set", "delete", "add", "contradict"]))
            if op == "set":
                config[draw(st.sampled_from(keys))] = draw(values)
            elif op == "delete":
                config.pop(draw(st.sampled_from(keys)), None)
            elif op == "add":
                config[
                    draw(
                        st.sampled_from(
                            [
                                "head_dim",
                                "text_config",
                                "num_key_value_heads",
                                "rope_scaling",
                                "sliding_window",
                                "auto_map",
                            ]
                        )
                    )
                ] = draw(values)
            else:  # sizes that disagree with each other
                a, b = draw(
                    st.sampled_from(
                        [
                            ("num_key_value_heads", "num_attention_heads"),
                            ("head_dim", "hidden_size"),
                            ("hidden_size", "num_attention_heads"),
                            ("intermediate_size", "hidden_size"),
                        ]
                    )
                )
                config[a] = (config.get(b) if isinstance(config.get(b), int) else 8) * draw(
                    st.sampled_from([3, 5, 0, -1])
                ) + draw(st.integers(0, 1))
        return config

    return mutated()


@pytest.fixture(scope="module")
def base(recipe_models: Path) -> dict[str, dict[str, Any]]:
    return {
        name: json.loads((recipe_models / name / "config.json").read_text()) for name in FAMILIES
    }


def test_fuzzed_configs_are_accepted_or_refused(
    base: dict[str, dict[str, Any]], recipe_models: Path, tmp_path: Path
) -> None:
    model = tmp_path / "model"
    model.mkdir()
    recipe = tiny_recipe(tmp_path / "recipe.yaml", model)
    loaded = load_recipe(recipe)
    outcomes = {"accepted": 0, "exit 2": 0, "exit 5": 0}
    refused: list[dict[str, Any]] = []
    writes: set[str] = set()

    @settings(
        max_examples=EXAMPLES, deadline=2000, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(_configs(base))
    def prop(config: dict[str, Any]) -> None:
        try:
            with tracing.python_writes() as wrote:
                check_model(loaded, config)
            writes.update(wrote)
        except ForgeError as err:
            assert err.code in (ExitCode.RECIPE, ExitCode.SOURCE), str(err)
            assert err.message.strip(), config
            outcomes[f"exit {int(err.code)}"] += 1
            if len(refused) < CLI_EXAMPLES:
                refused.append(config)
            return
        outcomes["accepted"] += 1

    prop()
    assert writes == set(), f"checking a config wrote {sorted(writes)[:5]}"
    cli = _through_cli(tmp_path, recipe_models / "llama", refused)
    record("config_fuzz", {"cases": sum(outcomes.values()), **outcomes, "cli": cli})
    assert sum(outcomes.values()) >= EXAMPLES >= FLOOR
    assert outcomes["accepted"] > 0 and outcomes["exit 5"] > 0


def _through_cli(tmp_path: Path, weights: Path, configs: list[dict[str, Any]]) -> int:
    """Refused configs in a real model folder through `forge recipe check`."""
    home = tmp_path / "home"
    for i, config in enumerate(configs):
        model = tmp_path / f"cli{i}" / "model"
        shutil.copytree(weights, model)
        (model / "config.json").write_text(json.dumps(config))
        recipe = tiny_recipe(model.parent / "recipe.yaml", model)
        args = ("recipe", "check", str(recipe))
        if tracing.available():
            run, written = tracing.traced_forge(home, *args, timeout=120, cwd=model.parent)
            assert tracing.outside(written, home, model.parent) == [], "wrote outside FORGE_HOME"
        else:
            run = forge(home, *args, timeout=120, cwd=model.parent)
        assert run.code in (2, 5) and "Traceback" not in run.text, (config, run.text)
    return len(configs)
