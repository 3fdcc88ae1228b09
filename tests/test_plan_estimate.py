"""`forge plan`'s pre-flight estimate (pipeline/estimate.py): what the stages to run need
against what the machine has, and exit 4 with the numbers when it cannot fit. The real
CLI in a subprocess; budgets capped through the documented FORGE_*_BUDGET variables."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from safetensors import safe_open

from tests.helpers import assert_clean_error, forge, hub_cache, write_recipe
from tests.tinymodels import make_tiny_hf
from trtllm_forge.pipeline.estimate import parse_size
from trtllm_forge.recipe.schema import Calibration

BUILD = {"backend": "onnxruntime", "max_batch_size": 2, "max_input_len": 32, "max_seq_len": 64}


def _tiny_recipe(tmp_path: Path, **quantize: object) -> tuple[Path, Path]:
    model = make_tiny_hf("llama", tmp_path / "hf", with_tokenizer=True)
    recipe = write_recipe(
        tmp_path / "r.yaml",
        source={"path": str(model)},
        convert={"dtype": "float32"},
        quantize=quantize or {"method": "none"},
        build=BUILD,
        verify={"enabled": False},
    )
    return model, recipe


def _params(model: Path) -> int:
    total = 0
    with safe_open(str(model / "model.safetensors"), framework="np") as f:
        for name in f.keys():  # noqa: SIM118 - safe_open is not a mapping
            count = 1
            for dim in f.get_slice(name).get_shape():
                count *= dim
            total += count
    return total


def test_plan_prints_the_estimate_of_a_tiny_recipe(tmp_path: Path) -> None:
    model, recipe = _tiny_recipe(tmp_path)
    run = forge("plan", str(recipe), "--json")
    assert run.code == 0, run.err
    estimate = run.json()["estimate"]
    disk = estimate["needs"]["disk"]
    # float32 convert: four bytes a parameter; the tp = 1 engine shares the shard's bytes
    # and writes the embedding table only (tied: once more, transposed for the head).
    assert disk["per_stage"]["convert"] == 4 * _params(model)
    assert 0 < disk["per_stage"]["build"] < disk["per_stage"]["convert"] / 2
    assert disk["available"] > 0 and estimate["fits"] is True
    assert estimate["needs"]["host"]["bytes"] > 0 and estimate["needs"]["host"]["stage"]
    table = forge("plan", str(recipe))
    assert table.code == 0 and "disk under FORGE_HOME" in table.out and "host memory" in table.out


def test_a_disk_budget_too_small_is_exit_4_before_any_work(tmp_path: Path) -> None:
    _, recipe = _tiny_recipe(tmp_path)
    run = forge("plan", str(recipe), env={"FORGE_DISK_BUDGET": "1K"})
    assert_clean_error(run, 4, "will not fit", "of disk under", "convert", "FORGE_DISK_BUDGET")
    assert "0.00 GB available" in run.err
    assert not (Path(os.environ["FORGE_HOME"]) / "artifacts").exists()


def test_bad_budget_value_is_exit_2(tmp_path: Path) -> None:
    _, recipe = _tiny_recipe(tmp_path)
    run = forge("plan", str(recipe), env={"FORGE_HOST_MEMORY_BUDGET": "lots"})
    assert_clean_error(run, 2, "FORGE_HOST_MEMORY_BUDGET", "not a size")


def _claims_a_1b_model(tmp_path: Path) -> Path:
    """A Llama folder whose safetensors header claims 1.1 B float16 parameters (the
    TinyLlama shape) with no data behind it: the plan reads headers only."""
    tiny = make_tiny_hf("llama", tmp_path / "tiny", with_tokenizer=True)
    folder = tmp_path / "claims-1b"
    shutil.copytree(tiny, folder, ignore=shutil.ignore_patterns("*.safetensors"))
    config = json.loads((folder / "config.json").read_text())
    dims = {"hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22}
    config.update(dims, num_attention_heads=32, num_key_value_heads=4, vocab_size=32000)
    (folder / "config.json").write_text(json.dumps(config))
    shapes = {"model.embed_tokens.weight": [32000, 2048], "lm_head.weight": [32000, 2048]}
    for i in range(22):
        p = f"model.layers.{i}"
        shapes |= {f"{p}.self_attn.q_proj.weight": [2048, 2048]}
        shapes |= {f"{p}.self_attn.{n}_proj.weight": [256, 2048] for n in ("k", "v")}
        shapes |= {f"{p}.self_attn.o_proj.weight": [2048, 2048]}
        shapes |= {f"{p}.mlp.{n}_proj.weight": [5632, 2048] for n in ("gate", "up")}
        shapes |= {f"{p}.mlp.down_proj.weight": [2048, 5632]}
    header, offset = {}, 0
    for name, shape in shapes.items():
        size = 2 * shape[0] * shape[1]
        header[name] = {"dtype": "F16", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    (folder / "model.safetensors").write_bytes(len(raw).to_bytes(8, "little") + raw)
    return folder


def test_whole_model_calibration_over_the_host_budget_names_what_would_fit(
    tmp_path: Path,
) -> None:
    folder = _claims_a_1b_model(tmp_path)
    recipe = write_recipe(
        tmp_path / "awq.yaml",
        source={"path": str(folder)},
        convert={"dtype": "float16"},
        quantize={"method": "awq", "calibration": {"samples": 8, "seq_len": 64}},
        build=BUILD,
        verify={"enabled": False},
    )
    # Whole-model AWQ holds the model in float32: 4.4 GB and the process; 4 GB is too little.
    run = forge("plan", str(recipe), env={"FORGE_HOST_MEMORY_BUDGET": "4G"})
    assert_clean_error(run, 4, "of host memory at calibrate", "4.00 GB available")
    assert "quantize.calibration.dtype: bfloat16" in run.err
    if "mode" in Calibration.model_fields:  # layer-wise calibration (quant/layerwise.py)
        assert "quantize.calibration.mode: layerwise" in run.err
    fits = forge("plan", str(recipe), "--json", env={"FORGE_HOST_MEMORY_BUDGET": "6G"})
    assert fits.code == 0, fits.err
    host = fits.json()["estimate"]["needs"]["host"]
    assert host["stage"] == "calibrate" and 4e9 < host["bytes"] <= 6e9


@pytest.mark.parametrize(
    ("text", "value"),
    [("500M", 500_000_000), ("8G", 8_000_000_000), ("1.5GB", 1_500_000_000), ("2GiB", 2 << 30)],
)
def test_parse_size(text: str, value: int) -> None:
    assert parse_size("X", text) == value


def test_gguf_source_counts_its_dequantized_fetch(tmp_path: Path) -> None:
    pytest.importorskip("gguf")
    from tests.test_fetch_gguf import write_tiny_gguf

    hf = make_tiny_hf("llama", tmp_path / "hf", with_tokenizer=True, tie_word_embeddings=False)
    write_tiny_gguf(hf, tmp_path / "tiny.gguf")
    recipe = write_recipe(
        tmp_path / "g.yaml",
        source={"gguf": "tiny.gguf"},
        convert={"dtype": "float16"},
        quantize={"method": "none"},
        build=BUILD,
        verify={"enabled": False},
    )
    run = forge("plan", str(recipe), "--json")
    assert run.code == 0, run.err
    disk = run.json()["estimate"]["needs"]["disk"]["per_stage"]
    # fetch dequantizes to float32 safetensors; convert stores float16: half of it.
    assert disk["fetch"] == 4 * _params(hf) and disk["convert"] == 2 * _params(hf)


def test_hub_model_is_sized_from_the_hf_cache(tmp_path: Path) -> None:
    """The plan's fetch key resolves a hub model in the HF cache: its headers are there."""
    tiny = make_tiny_hf("llama", tmp_path / "tiny", with_tokenizer=True)
    files = {p.name: p.read_bytes() for p in tiny.iterdir() if p.is_file()}
    hub_cache(Path(os.environ["HF_HUB_CACHE"]), "someone/tiny", files)
    recipe = write_recipe(
        tmp_path / "hub.yaml",
        source={"hf": "someone/tiny"},
        convert={"dtype": "float32"},
        quantize={"method": "none"},
        build=BUILD,
        verify={"enabled": False},
    )
    run = forge("plan", str(recipe), "--json")
    assert run.code == 0, run.err
    disk = run.json()["estimate"]["needs"]["disk"]["per_stage"]
    assert "fetch" not in disk and disk["convert"] == 4 * _params(tiny)  # referenced in place
