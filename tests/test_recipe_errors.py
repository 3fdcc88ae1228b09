"""Broken recipes give `file:line:col: field: message`, a hint, the documented exit code
and never a traceback — checked through the real CLI."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.helpers import assert_clean_error, forge, hub_cache, write_recipe

LOC = re.compile(r"recipe\.yaml:\d+:\d+")


def _located(run_text: str, line: int, col: int | None = None) -> None:
    match = LOC.search(run_text)
    assert match, run_text
    want = f"recipe.yaml:{line}:" + (str(col) if col else "")
    assert want in run_text, f"{want} not in {run_text}"


@pytest.fixture
def recipe(tmp_path: Path) -> Path:
    return tmp_path / "recipe.yaml"


def test_unknown_key(recipe: Path) -> None:
    recipe.write_text("schema_version: 1\nname: t\nsource:\n  path: m\nconvert:\n  dtyp: float16\n")
    run = forge("recipe", "check", str(recipe))
    assert_clean_error(run, 2, "convert.dtyp", "unknown field", "hint")
    _located(run.err, 6, 3)


def test_wrong_type(recipe: Path) -> None:
    recipe.write_text("schema_version: 1\nname: t\nsource:\n  path: m\nparallel:\n  tp: two\n")
    run = forge("recipe", "check", str(recipe))
    assert_clean_error(run, 2, "parallel.tp", "integer")
    _located(run.err, 6, 7)


def test_bad_enum(recipe: Path) -> None:
    recipe.write_text("schema_version: 1\nname: t\nsource:\n  path: m\nquantize:\n  method: int3\n")
    run = forge("recipe", "check", str(recipe))
    assert_clean_error(run, 2, "quantize.method", "int8_wo")
    _located(run.err, 6, 11)


def test_method_specific_field_is_located_without_union_tag(recipe: Path) -> None:
    recipe.write_text(
        "schema_version: 1\nname: t\nsource:\n  path: m\nquantize:\n  method: awq\n  group_size: 100\n"
    )
    run = forge("recipe", "check", str(recipe))
    assert_clean_error(run, 2, "quantize.group_size")
    _located(run.err, 7, 15)


def test_missing_source(recipe: Path) -> None:
    recipe.write_text("schema_version: 1\nname: t\nconvert:\n  dtype: float16\n")
    run = forge("recipe", "check", str(recipe))
    assert_clean_error(run, 2, "source", "required field is missing")
    _located(run.err, 1, 1)


def test_two_sources(recipe: Path) -> None:
    recipe.write_text("schema_version: 1\nname: t\nsource:\n  path: m\n  hf: a/b\n")
    run = forge("recipe", "check", str(recipe))
    assert_clean_error(run, 2, "exactly one of")
    _located(run.err, 4, 3)


def test_bad_yaml_syntax(recipe: Path) -> None:
    recipe.write_text("schema_version: 1\nname: t\nsource:\n  path: [m\nconvert: {\n")
    run = forge("build", str(recipe))
    assert_clean_error(run, 2, "invalid YAML")
    assert LOC.search(run.err)


def test_schema_version_required(recipe: Path) -> None:
    recipe.write_text("name: t\nsource:\n  path: m\n")
    run = forge("recipe", "check", str(recipe))
    assert_clean_error(run, 2, "schema_version")


def test_yaml_alias_bomb_refused(recipe: Path) -> None:
    lines = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    lines += [
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]"
        for i in range(8)
    ]
    recipe.write_text("\n".join(lines) + "\n")
    run = forge("recipe", "check", str(recipe), timeout=30)
    assert_clean_error(run, 2, "aliases")


def test_python_tag_refused(recipe: Path) -> None:
    recipe.write_text("schema_version: 1\nname: !!python/object/apply:os.system ['echo pwned']\n")
    run = forge("recipe", "check", str(recipe))
    assert_clean_error(run, 2, "unsupported YAML")
    assert "pwned" not in run.out


def test_duplicate_key(recipe: Path) -> None:
    recipe.write_text("schema_version: 1\nname: t\nname: u\nsource:\n  path: m\n")
    run = forge("recipe", "check", str(recipe))
    assert_clean_error(run, 2, "duplicate key 'name'")
    _located(run.err, 3, 1)


def test_input_len_not_below_seq_len(recipe: Path) -> None:
    write_recipe(recipe, source={"path": "m"}, build={"max_input_len": 64, "max_seq_len": 64})
    run = forge("recipe", "check", str(recipe))
    assert_clean_error(run, 2, "max_input_len")


def test_missing_recipe_file(tmp_path: Path) -> None:
    run = forge("build", str(tmp_path / "nope.yaml"))
    assert_clean_error(run, 5, "recipe file not found")


def test_tp_not_dividing_heads(recipe: Path, tiny_models: dict[str, Path]) -> None:
    write_recipe(recipe, source={"path": str(tiny_models["llama"])}, parallel={"tp": 3})
    run = forge("build", str(recipe), "--until", "convert")
    assert_clean_error(run, 2, "parallel.tp", "does not divide", "4 attention heads")
    _located(run.err, 6)


def test_pp_larger_than_layers(recipe: Path, tiny_models: dict[str, Path]) -> None:
    write_recipe(recipe, source={"path": str(tiny_models["llama"])}, parallel={"pp": 3})
    run = forge("plan", str(recipe))
    assert_clean_error(run, 2, "parallel.pp", "2 layers")


def test_revision_not_found_offline(recipe: Path, tmp_path: Path) -> None:
    cache = tmp_path / "hub"
    hub_cache(cache, "acme/tiny", {"config.json": b'{"model_type": "llama"}'})
    write_recipe(recipe, source={"hf": "acme/tiny", "revision": "v9"})
    run = forge("build", str(recipe), "--until", "fetch", env={"HF_HUB_CACHE": str(cache)})
    assert_clean_error(run, 5, "acme/tiny", "v9")
    _located(run.err, 5)


def test_repo_not_found_offline(recipe: Path) -> None:
    write_recipe(recipe, source={"hf": "acme/absent"})
    run = forge("build", str(recipe), "--until", "fetch")
    assert_clean_error(run, 5, "acme/absent")
    _located(run.err, 4)


def test_pickle_refused(recipe: Path, tmp_path: Path) -> None:
    model = tmp_path / "pickled"
    model.mkdir()
    (model / "config.json").write_text(
        '{"architectures": ["LlamaForCausalLM"], "model_type": "llama"}'
    )
    (model / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    write_recipe(recipe, source={"path": str(model)})
    run = forge("build", str(recipe), "--until", "fetch")
    assert_clean_error(run, 2, "pytorch_model.bin", "allow_pickle")
    _located(run.err, 4)


def test_json_error_document(recipe: Path) -> None:
    recipe.write_text("schema_version: 1\nname: t\nsource:\n  path: m\nbogus: 1\n")
    run = forge("plan", str(recipe), "--json")
    assert run.code == 2
    doc = run.json()
    assert doc["ok"] is False
    assert doc["error"]["location"]["line"] == 5
    assert doc["error"]["location"]["field"] == "bogus"


def test_int4_groups_must_align_with_tp_shards(recipe: Path, tiny_models: dict[str, Path]) -> None:
    # tiny llama: hidden 64; tp=2 leaves 32 input channels per rank, not a multiple of 64
    write_recipe(
        recipe,
        source={"path": str(tiny_models["llama"])},
        quantize={"method": "int4_wo", "group_size": 64},
        parallel={"tp": 2},
    )
    run = forge("plan", str(recipe))
    assert_clean_error(run, 2, "quantize.group_size", "tp=2")


def test_missing_gguf_is_located(recipe: Path) -> None:
    write_recipe(recipe, source={"gguf": "nowhere/model.gguf"})
    run = forge("plan", str(recipe))
    assert_clean_error(run, 5, "GGUF file does not exist", "source.gguf")
    _located(run.err, 4)


def test_calibration_file_that_is_a_directory_is_located(
    recipe: Path, tiny_models: dict[str, Path]
) -> None:
    (recipe.parent / "texts").mkdir()
    write_recipe(
        recipe,
        source={"path": str(tiny_models["llama"])},
        quantize={"method": "smoothquant", "calibration": {"file": "texts"}},
    )
    run = forge("build", str(recipe), "--until", "calibrate")
    assert_clean_error(run, 5, "calibration file is not a regular file")
    _located(run.err, 8)


def test_int4_groups_that_do_not_fit_can_be_excluded(
    recipe: Path, tiny_models: dict[str, Path]
) -> None:
    """group_size 128 on the tiny llama: only mlp.proj (input 128) holds whole groups.
    Refused as is, planned once the 64-wide-input linears are excluded (the documented
    way out, used for SmolLM2 in docs/quantization.md)."""
    source = {"path": str(tiny_models["llama"])}
    quantize: dict[str, object] = {"method": "int4_wo", "group_size": 128}
    write_recipe(recipe, source=source, quantize=quantize)
    refused = forge("plan", str(recipe))
    assert_clean_error(refused, 2, "quantize.group_size", "attention.qkv", "exclude")
    quantize["exclude"] = ["lm_head", "*attention.qkv", "*attention.dense", "*mlp.fc", "*mlp.gate"]
    write_recipe(recipe, source=source, quantize=quantize)
    assert forge("plan", str(recipe)).code == 0
    quantize["exclude"] = ["*mlp.fcc"]
    write_recipe(recipe, source=source, quantize=quantize)
    typo = forge("plan", str(recipe))
    assert_clean_error(typo, 2, "matches no module")
    _located(typo.err, 9)
