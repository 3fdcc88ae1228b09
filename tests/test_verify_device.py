"""verify.device: `cpu` keys as before the field existed, `cuda` is its own verify key and,
on a machine without a CUDA GPU or onnxruntime-gpu, exits 4 before any stage runs, naming
what to install (real CLI, real tiny model)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import onnxruntime
import pytest
import torch

from tests.helpers import assert_clean_error, forge, write_recipe
from trtllm_forge.errors import ExitCode, ForgeError

CUDA_READY = torch.cuda.is_available() and (
    "CUDAExecutionProvider" in onnxruntime.get_available_providers()
)
NO_CUDA = pytest.mark.skipif(CUDA_READY, reason="needs a machine that cannot verify on CUDA")


@pytest.fixture
def model(tmp_path: Path, tiny_models: dict[str, Path]) -> Path:
    dst = tmp_path / "model"
    shutil.copytree(tiny_models["llama"], dst)
    return dst


def _recipe(tmp_path: Path, model: Path, name: str, **verify: Any) -> Path:
    sections: dict[str, Any] = {"source": {"path": str(model)}, "convert": {"dtype": "float32"}}
    if verify:
        sections["verify"] = {"max_new_tokens": 2, "max_text_tokens": 16, **verify}
    return write_recipe(tmp_path / f"{name}.yaml", **sections)


@NO_CUDA
def test_cuda_verify_without_gpu_exits_4_before_any_work(tmp_path: Path, model: Path) -> None:
    recipe = _recipe(tmp_path, model, "cuda", device="cuda")
    run = forge("build", str(recipe))
    assert_clean_error(run, int(ExitCode.DEPENDENCY), "verify.device is cuda", "hint:")
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        assert "onnxruntime-gpu" in run.err + run.out
    plan = forge("plan", str(recipe), "--json").json()["stages"]
    assert plan[0]["stage"] == "fetch" and plan[0]["status"] == "miss"  # nothing was built
    # Stopping before verify needs no GPU.
    assert forge("build", str(recipe), "--until", "convert").code == 0


@NO_CUDA
def test_library_verify_on_cuda_raises_before_loading(tmp_path: Path) -> None:
    from trtllm_forge.engine.verify import verify_engine

    with pytest.raises(ForgeError) as caught:
        verify_engine(
            tmp_path / "no-engine", tmp_path / "no-reference", prompts_token_ids=[[1, 2]],
            texts_token_ids=[], max_new_tokens=1, gates={}, device="cuda",
        )  # fmt: skip
    assert caught.value.code == ExitCode.DEPENDENCY
    assert "verify.device: cpu" in (caught.value.hint or "")


def test_verify_key_changes_for_cuda_only(tmp_path: Path, model: Path) -> None:
    built = forge("build", str(_recipe(tmp_path, model, "base")), "--until", "build")
    assert built.code == 0, built.err

    def verify_key(name: str, **verify: Any) -> str:
        run = forge("plan", str(_recipe(tmp_path, model, name, **verify)), "--json")
        assert run.code == 0, run.err
        (stage,) = [s for s in run.json()["stages"] if s["stage"] == "verify"]
        assert stage["key"], stage
        return str(stage["key"])

    default = verify_key("default", enabled=True)
    assert verify_key("explicit", device="cpu") == default
    assert verify_key("cuda", device="cuda") != default  # plannable without a GPU


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_hf_target_needs_torch_cuda_only_and_cpu_needs_nothing() -> None:
    from trtllm_forge.engine.verify import require_device

    require_device("cpu", "onnxruntime")  # the default asks nothing of the machine
    with pytest.raises(ForgeError) as caught:
        require_device("cuda", "hf")  # a Hugging Face folder runs on torch alone
    assert caught.value.code == ExitCode.DEPENDENCY
    assert "sees no CUDA GPU" in caught.value.message
    assert "onnxruntime" not in caught.value.message + str(caught.value.hint)
