"""Property-based fuzzing of recipe files.

Hypothesis generates structurally valid YAML — near-valid recipes with a few
mutations (wrong types and values, unknown keys, deletions, deep nesting, huge
numbers, unicode) and arbitrary documents. The property: loading and the
static checks either accept the recipe (which then round-trips through the
schema) or raise a ForgeError with exit code 2 located at ``file:line:col`` —
never anything else. Most examples run in-process for speed; a few hundred
also go through the real CLI (`forge recipe check`), which must agree.
"""

from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.reliability import tracing
from tests.reliability.harness import forge, record
from trtllm_forge.errors import ExitCode, ForgeError
from trtllm_forge.pipeline.preflight import NAMED_FILES, check_sources, check_static
from trtllm_forge.recipe.load import load_recipe
from trtllm_forge.recipe.schema import QUANT_METHODS, Recipe

pytestmark = pytest.mark.reliability

FLOOR = 10_000  # what the tier promises per run (docs/reliability.md): the variable only raises it
EXAMPLES = max(FLOOR, int(os.environ.get("FORGE_FUZZ_EXAMPLES", FLOOR)))
CLI_EXAMPLES = int(os.environ.get("FORGE_FUZZ_CLI_EXAMPLES", "300"))
TRACE_EVERY = 10  # of the CLI runs, these also go under strace (30 of 300)
LOCATED = re.compile(r"\.yaml:\d+:\d+")

FIELD_NAMES = [
    "schema_version",
    "name",
    "source",
    "hf",
    "revision",
    "path",
    "gguf",
    "allow_pickle",
    "convert",
    "dtype",
    "quantize",
    "method",
    "kv_cache",
    "exclude",
    "calibration",
    "file",
    "samples",
    "seq_len",
    "seed",
    "group_size",
    "alpha",
    "activations",
    "damping",
    "act_order",
    "granularity",
    "parallel",
    "tp",
    "pp",
    "build",
    "backend",
    "max_batch_size",
    "max_input_len",
    "max_seq_len",
    "plugins",
    "opt_level",
    "workspace_gb",
    "verify",
    "enabled",
    "prompts",
    "max_new_tokens",
    "texts",
    "text_file",
    "max_text_tokens",
    "gates",
    "min_token_agreement",
    "min_top1",
    "max_kl",
    "max_ppl_ratio",
    "max_rel_logit_diff",
    "gemm_plugin",
    "gpt_attention_plugin",
]
WORDS = [
    "float16",
    "bfloat16",
    "float32",
    "int8",
    "fp8",
    "none",
    "onnxruntime",
    "tensorrt",
    "trtllm",
    "per_tensor",
    "per_token",
    "per_channel_per_token",
    "auto",
    "yes",
    "no",
    "on",
    "off",
    "~",
    "null",
    "1",
    "0x1F",
    "1e3",
    ".inf",
    "-.nan",
    "2024-01-01",
    "org/name",
    "../../etc/passwd",
    "/abs/path",
    "a\x00b",
    "",
    " ",
    "😀",
    "名前",
    *QUANT_METHODS,
]

text = st.text(st.characters(exclude_categories=("Cs",)), max_size=30)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-300, 300),
    st.integers(min_value=-(2**200), max_value=2**200),
    st.floats(allow_nan=True, allow_infinity=True),
    text,
    st.sampled_from(WORDS),
)
keys = st.one_of(st.sampled_from(FIELD_NAMES), text, st.integers(-3, 3), st.booleans())
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
    max_leaves=12,
)


@st.composite
def valid_recipes(draw: st.DrawFn) -> dict[str, Any]:
    source = draw(
        st.sampled_from(
            [
                {"path": "model"},
                {"hf": "org/model"},
                {"hf": "org/model", "revision": "main"},
                {"gguf": "m.gguf"},
            ]
        )
    )
    method = draw(st.sampled_from(QUANT_METHODS))
    quantize: dict[str, Any] = {"method": method}
    if method in ("int4_wo", "awq", "gptq"):
        quantize["group_size"] = draw(st.sampled_from([32, 64, 128]))
    if method == "smoothquant":
        quantize["alpha"] = draw(st.floats(0, 1))
    quantize["kv_cache"] = draw(st.sampled_from(["none", "int8", "fp8"]))
    max_input = draw(st.integers(1, 4096))
    return {
        "schema_version": 1,
        "name": draw(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True)),
        "source": source,
        "convert": {"dtype": draw(st.sampled_from(["float32", "float16", "bfloat16"]))},
        "quantize": quantize,
        "parallel": {"tp": draw(st.integers(1, 8)), "pp": draw(st.integers(1, 4))},
        "build": {
            "backend": draw(st.sampled_from(["onnxruntime", "tensorrt", "trtllm"])),
            "max_input_len": max_input,
            "max_seq_len": max_input + draw(st.integers(1, 4096)),
        },
        "verify": {
            "max_new_tokens": draw(st.integers(1, 64)),
            "gates": {"min_token_agreement": draw(st.floats(0, 1))},
        },
    }


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _paths(v, (*prefix, i))
    return out


def _parent(doc: Any, path: tuple[Any, ...]) -> Any:
    for part in path[:-1]:
        doc = doc[part]
    return doc


@st.composite
def mutated(draw: st.DrawFn) -> Any:
    doc: Any = draw(valid_recipes())
    for _ in range(draw(st.integers(0, 4))):
        targets = [p for p in _paths(doc) if p]
        if not targets or not isinstance(doc, dict):
            break
        path = draw(st.sampled_from(targets))
        parent = _parent(doc, path)
        op = draw(st.sampled_from(["set", "set", "delete", "add", "nest"]))
        if op == "set":
            parent[path[-1]] = draw(values)
        elif op == "delete":
            del parent[path[-1]]
        elif op == "add" and isinstance(parent, dict):
            parent[draw(keys)] = draw(values)
        elif op == "nest":
            value = parent[path[-1]]
            for _ in range(draw(st.integers(1, 60))):
                value = draw(st.sampled_from([[value], {"k": value}]))
            parent[path[-1]] = value
    return doc


documents = st.one_of(mutated(), mutated(), mutated(), values)


def outcome(path: Path) -> int:
    """Exit code the recipe deserves; asserts the error contract on the way."""
    try:
        loaded = load_recipe(path)
        check_static(loaded)
        check_sources(loaded)  # what `forge recipe check` runs too
    except ForgeError as err:
        assert err.location is not None and err.location.file == str(path), str(err)
        assert err.location.line >= 1 and err.location.col >= 1 and err.message.strip()
        if err.code == ExitCode.SOURCE:  # preflight: a file the recipe names is not there
            assert err.location.field in (*NAMED_FILES, "source.path"), str(err)
            return 5
        assert err.code == ExitCode.RECIPE, f"exit {int(err.code)}: {err}"
        return 2
    again = Recipe.model_validate(loaded.recipe.model_dump(mode="json"))
    assert again == loaded.recipe
    return 0


def test_fuzzed_recipes_are_valid_or_located_recipe_errors(tmp_path: Path) -> None:
    file = tmp_path / "recipe.yaml"
    seen: list[tuple[str, int]] = []

    @settings(
        max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(documents)
    def prop(doc: Any) -> None:
        text_ = yaml.safe_dump(doc, allow_unicode=True, sort_keys=False)
        file.write_text(text_, encoding="utf-8")
        with tracing.python_writes() as wrote:  # forge's own code only, not hypothesis' caches
            seen.append((text_, outcome(file)))
        writes.update(wrote)

    writes: set[str] = set()
    prop()
    assert tracing.outside(writes, tmp_path) == [], "checking a recipe wrote outside its folder"
    valid = sum(1 for _, code in seen if code == 0)
    cli, traced = _through_cli(tmp_path, seen)
    record(
        "fuzz",
        {
            "recipes": len(seen),
            "valid": valid,
            "rejected": len(seen) - valid,
            "cli_recipes": cli,
            "cli_traced": traced,
            "requested": EXAMPLES,
        },
    )
    assert len(seen) >= EXAMPLES >= FLOOR
    assert 0 < valid < len(seen)  # the generator reaches both sides of the property


def _through_cli(tmp_path: Path, seen: list[tuple[str, int]]) -> tuple[int, int]:
    """A spread of the generated recipes through the real `forge recipe check`; every
    TRACE_EVERY-th under strace, which must see no write outside the recipe's folder and
    $FORGE_HOME. Returns (recipes checked, recipes traced)."""
    step = max(1, len(seen) // CLI_EXAMPLES)
    chosen = seen[::step][:CLI_EXAMPLES]
    home = tmp_path / "home"
    traced = [i for i in range(len(chosen)) if i % TRACE_EVERY == 0] if tracing.available() else []

    def check(item: tuple[int, tuple[str, int]]) -> str | None:
        i, (text_, want) = item
        recipe = tmp_path / f"cli{i}" / "recipe.yaml"
        recipe.parent.mkdir()
        recipe.write_text(text_, encoding="utf-8")
        args = ("recipe", "check", str(recipe))
        if i in traced:
            run, written = tracing.traced_forge(home, *args, timeout=300, cwd=recipe.parent)
            if tracing.outside(written, home, recipe.parent):
                return f"wrote {tracing.outside(written, home, recipe.parent)} checking:\n{text_}"
        else:
            run = forge(home, *args, timeout=180)
        if run.code != want or "Traceback" in run.text:
            return f"exit {run.code} (in-process {want}) for:\n{text_}\n{run.text}"
        if want in (2, 5) and not LOCATED.search(run.err):
            return f"unlocated error: {run.err}"
        return None

    with ThreadPoolExecutor(max_workers=2) as pool:
        problems = [p for p in pool.map(check, enumerate(chosen)) if p]
    assert not problems, "\n\n".join(problems[:5])
    return len(chosen), len(traced)
