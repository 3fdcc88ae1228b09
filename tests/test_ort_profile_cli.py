"""build.profile ort through the real CLI: what it cannot lower is refused at plan time
(exit 2, located at the recipe field, naming what is missing); --device cuda without
onnxruntime-gpu or a GPU is exit 4 naming what to install."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import assert_clean_error, forge, write_recipe


@pytest.fixture(scope="module")
def gemma(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.tinymodels import make_tiny_hf

    return make_tiny_hf("gemma", tmp_path_factory.mktemp("gemma") / "hf", with_tokenizer=True)


def _line(err: str) -> int:
    return int(err.split("recipe.yaml:", 1)[1].split(":", 1)[0])


def test_a_family_the_profile_cannot_lower_is_refused_at_plan(tmp_path: Path, gemma: Path) -> None:
    recipe = write_recipe(
        tmp_path / "recipe.yaml", source={"path": str(gemma)}, build={"profile": "ort"}
    )
    run = forge("plan", str(recipe))
    assert_clean_error(run, 2, "build.profile", "GemmaForCausalLM", "LlamaForCausalLM", "portable")
    assert _line(run.err) == 6  # build: / profile: ort


@pytest.mark.parametrize(
    ("section", "value", "field", "fragment"),
    [
        ("quantize", {"method": "smoothquant"}, "quantize.method", "'smoothquant'"),
        ("quantize", {"method": "fp8"}, "quantize.method", "'fp8'"),
        ("quantize", {"method": "int8_wo", "kv_cache": "int8"}, "quantize.kv_cache", "'int8'"),
        ("parallel", {"tp": 2}, "parallel.tp", "collectives"),
    ],
)
def test_a_method_or_layout_the_profile_cannot_lower_is_refused_at_plan(
    tmp_path: Path,
    tiny_models: dict[str, Path],
    section: str,
    value: dict,
    field: str,
    fragment: str,
) -> None:
    recipe = write_recipe(
        tmp_path / "recipe.yaml",
        source={"path": str(tiny_models["llama"])},
        **{section: value},
        build={"profile": "ort"},
    )
    run = forge("plan", str(recipe))
    assert_clean_error(run, 2, field, "build.profile ort", fragment)


def test_supported_recipe_plans(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    recipe = write_recipe(
        tmp_path / "recipe.yaml",
        source={"path": str(tiny_models["qwen2"])},
        quantize={"method": "int8_wo"},
        build={"profile": "ort"},
    )
    assert forge("plan", str(recipe)).code == 0


def test_device_cuda_without_onnxruntime_gpu_exits_4(tmp_path: Path) -> None:
    """This machine has the CPU onnxruntime wheel: a forge engine asked to run on cuda
    says which package to install instead of silently running on the CPU."""
    from tests.engine_support import tiny_engine
    from trtllm_forge.engine.runtime import load_engine
    from trtllm_forge.errors import ForgeError

    built = tiny_engine(tmp_path, "llama", with_tokenizer=True)
    engine = built.engine
    with pytest.raises(ForgeError) as err:
        load_engine(engine, device="cuda")
    assert err.value.code == 4 and "onnxruntime-gpu" in (err.value.message + (err.value.hint or ""))
    run = forge(
        "run", str(engine), "--prompt", "hi", "--device", "cuda", "--tokenizer", str(built.hf)
    )
    assert_clean_error(run, 4, "onnxruntime-gpu")


def test_forge_build_with_the_ort_profile_passes_verify_and_carries_genai_files(
    tmp_path: Path, tiny_models: dict[str, Path]
) -> None:
    """The whole pipeline: int8 weight-only, ort profile, verify gates met; the engine
    folder carries genai_config.json and the snapshot's tokenizer."""
    recipe = write_recipe(
        tmp_path / "recipe.yaml",
        source={"path": str(tiny_models["llama"])},
        convert={"dtype": "float32"},
        quantize={"method": "int8_wo"},
        build={"profile": "ort", "max_input_len": 64, "max_seq_len": 128},
        verify={"max_new_tokens": 8, "gates": {"min_top1": 0.9}},
    )
    run = forge("build", str(recipe), "--json")
    assert run.code == 0, run.err
    stages = {s["stage"]: s for s in run.json()["stages"]}
    engine = Path(stages["build"]["path"]) / "engine"
    assert (engine / "genai_config.json").is_file() and (engine / "tokenizer.json").is_file()
    assert json.loads((engine / "engine.json").read_text())["onnx"]["profile"] == "ort"


def test_int8_activations_without_the_ort_profile_is_refused(
    tmp_path: Path, tiny_models: dict[str, Path]
) -> None:
    recipe = write_recipe(
        tmp_path / "recipe.yaml",
        source={"path": str(tiny_models["llama"])},
        build={"int8_activations": True},
    )
    run = forge("recipe", "check", str(recipe))
    assert_clean_error(run, 2, "build.int8_activations", "ort profile")


def test_a_quantized_lm_head_without_the_ort_profile_is_refused(
    tmp_path: Path, tiny_models: dict[str, Path]
) -> None:
    recipe = write_recipe(
        tmp_path / "recipe.yaml",
        source={"path": str(tiny_models["llama"])},
        quantize={"method": "int4_wo", "group_size": 32, "quantize_lm_head": True},
    )
    run = forge("plan", str(recipe))
    assert_clean_error(run, 2, "quantize.quantize_lm_head", "ort profile")


def test_quantize_lm_head_off_keeps_the_calibrate_key(
    tmp_path: Path, tiny_models: dict[str, Path]
) -> None:
    """The option absent or false keys as before it existed (cached artifacts stay valid);
    true is another checkpoint, so another key."""

    def calibrate_key(name: str, **head: bool) -> str:
        recipe = write_recipe(
            tmp_path / f"{name}.yaml",
            source={"path": str(tiny_models["llama"])},
            convert={"dtype": "float32"},
            quantize={"method": "awq", "group_size": 32, **head},
            build={"profile": "ort"},
        )
        run = forge("plan", str(recipe), "--until", "calibrate", "--json")
        assert run.code == 0, run.err
        stage = run.json()["stages"][2]
        assert stage["stage"] == "calibrate" and stage["key"], stage
        return str(stage["key"])

    built = forge(
        "build",
        str(
            write_recipe(
                tmp_path / "convert.yaml",
                source={"path": str(tiny_models["llama"])},
                convert={"dtype": "float32"},
            )
        ),
        "--until",
        "convert",
    )
    assert built.code == 0, built.err
    absent = calibrate_key("absent")
    assert calibrate_key("off", quantize_lm_head=False) == absent
    assert calibrate_key("on", quantize_lm_head=True) != absent
