"""The GPU-user recipes in recipes/ validate and plan on a CPU machine without
downloading anything; their TensorRT/trtllm builds stop with exit 4 before any work."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.helpers import assert_clean_error, forge, hub_cache

ROOT = Path(__file__).resolve().parents[1]
REAL = ["llama2-7b-int8wo-trt.yaml", "llama2-7b-int8wo-trt-tp2.yaml", "llama2-7b-fp16-trtllm.yaml"]

# The public facts of Llama-2-7b-hf's config.json.
LLAMA2_7B_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 32,
    "vocab_size": 32000,
    "rms_norm_eps": 1e-5,
    "max_position_embeddings": 4096,
    "hidden_act": "silu",
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
    "torch_dtype": "float16",
}


@pytest.mark.parametrize("name", REAL)
def test_show_resolves_every_default(name: str) -> None:
    run = forge("recipe", "show", str(ROOT / "recipes" / name), "--json")
    assert run.code == 0, run.err
    shown = run.json()
    assert shown["source"]["hf"] == "meta-llama/Llama-2-7b-hf"
    assert shown["build"]["backend"] in ("tensorrt", "trtllm")


def _hub(tmp_path: Path, *, complete: bool) -> dict[str, str]:
    """The environment of a hub cache holding Llama-2-7b-hf's config.json and, when
    ``complete``, a weight file and a tokenizer: all a plan reads, nothing downloaded."""
    files = {"config.json": json.dumps(LLAMA2_7B_CONFIG).encode()}
    if complete:
        import torch
        from safetensors.torch import save

        from tests.tinymodels import make_tiny_tokenizer

        files["model.safetensors"] = save({"model.embed_tokens.weight": torch.zeros(2, 2)})
        make_tiny_tokenizer(tmp_path / "tokenizer")
        files.update({f.name: f.read_bytes() for f in (tmp_path / "tokenizer").iterdir()})
    hub_cache(tmp_path / "hub", "meta-llama/Llama-2-7b-hf", files)
    return {"HF_HUB_CACHE": str(tmp_path / "hub")}


@pytest.mark.parametrize("name", REAL)
def test_plan_of_a_cached_snapshot_runs_offline(name: str, tmp_path: Path) -> None:
    run = forge("plan", str(ROOT / "recipes" / name), "--json", env=_hub(tmp_path, complete=True))
    assert run.code == 0, run.err
    stages = [(s["stage"], s["status"]) for s in run.json()["stages"]]
    assert stages == [("fetch", "miss")] + [
        (stage, "pending") for stage in ("convert", "calibrate", "build", "verify")
    ]


@pytest.mark.parametrize("name", REAL)
def test_plan_without_weights_is_a_source_error(name: str, tmp_path: Path) -> None:
    # Offline with no weights cached, fetch cannot resolve a complete snapshot: the plan
    # says so as a source problem (exit 5), located at source.hf; it never downloads.
    run = forge("plan", str(ROOT / "recipes" / name), env=_hub(tmp_path, complete=False))
    assert_clean_error(run, 5, "source.hf", "meta-llama/Llama-2-7b-hf", "no weight files")


def test_tp_checked_against_real_config(tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.yaml"
    text = (
        (ROOT / "recipes" / "llama2-7b-int8wo-trt-tp2.yaml").read_text().replace("tp: 2", "tp: 3")
    )
    recipe.write_text(text)
    run = forge("plan", str(recipe), env=_hub(tmp_path, complete=True))
    assert_clean_error(run, 2, "parallel.tp", "does not divide", "32 attention heads")


@pytest.mark.skipif(
    shutil.which("trtllm-build") is not None, reason="trtllm-build is installed here"
)
def test_trtllm_backend_absent_exits_4_before_work(tmp_path: Path) -> None:
    run = forge("build", str(ROOT / "recipes" / "llama2-7b-fp16-trtllm.yaml"))
    assert_clean_error(run, 4, "trtllm-build")
    assert forge("cache", "ls", "--json").json()["artifacts"] == []


def test_tensorrt_backend_absent_exits_4_one_line_no_artifact(tmp_path: Path) -> None:
    from trtllm_forge.engine.backends import backend_unavailable

    if backend_unavailable("tensorrt") is None:  # TensorRT cannot be installed on CI machines
        pytest.skip("TensorRT and a GPU are present here")
    run = forge("build", str(ROOT / "recipes" / "llama2-7b-int8wo-trt.yaml"))
    assert_clean_error(run, 4, "TensorRT")
    error_lines = [line for line in run.err.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1
    store = forge("cache", "ls", "--json").json()
    assert store["artifacts"] == []
