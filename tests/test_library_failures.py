"""A library failing inside a stage is a dependency error (exit 4), not a forge bug.

The model here is a real transformers model class, registered for ``llama`` through
transformers' public ``AutoModelForCausalLM.register`` (what users do for custom
classes), whose attention projections are a Linear subclass that refuses subclassing —
so ModelOpt, which quantizes a module by deriving a new class from it, really raises
inside ``mtq.quantize`` during the calibrate stage. The CLI runs in a subprocess so the
registration stays there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from helpers import Run, assert_clean_error, write_recipe
from tinymodels import make_tiny_hf

from trtllm_forge.thirdparty import tested_versions as lock_versions

_REGISTER_AND_RUN = """
import sys
from torch import nn
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM


class SealedLinear(nn.Linear):
    def __init_subclass__(cls, **kwargs):
        raise TypeError("SealedLinear cannot be subclassed")


class SealedLlamaForCausalLM(LlamaForCausalLM):
    def __init__(self, config):
        super().__init__(config)
        for layer in self.model.layers:
            old = layer.self_attn.q_proj
            layer.self_attn.q_proj = SealedLinear(old.in_features, old.out_features, bias=False)


AutoModelForCausalLM.register(LlamaConfig, SealedLlamaForCausalLM, exist_ok=True)
from trtllm_forge.cli import main

sys.argv = ["forge", *sys.argv[1:]]
main()
"""


def _forge_with_sealed_llama(*args: str) -> Run:
    proc = subprocess.run(
        [sys.executable, "-c", _REGISTER_AND_RUN, *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ),
    )
    return Run(proc.returncode, proc.stdout, proc.stderr)


def _fp8_recipe(tmp_path: Path) -> Path:
    model = make_tiny_hf("llama", tmp_path / "model", with_tokenizer=True)
    return write_recipe(
        tmp_path / "r.yaml",
        source={"path": str(model)},
        quantize={"method": "fp8", "calibration": {"samples": 4, "seq_len": 32}},
    )


def test_modelopt_failure_in_calibrate_is_exit_4_naming_library_version_and_class(
    tmp_path: Path,
) -> None:
    recipe = _fp8_recipe(tmp_path)
    run = _forge_with_sealed_llama("build", str(recipe), "--until", "calibrate")
    version = lock_versions()["nvidia-modelopt"]
    assert_clean_error(
        run,
        4,
        f"nvidia-modelopt {version} failed while running the calibrate stage",
        "model SealedLlamaForCausalLM",
        "SealedLinear",
        "TypeError: SealedLinear cannot be subclassed",
    )
    assert "hint:" in run.err
    # Nothing half-written: the calibrate stage left no artifact.
    home = Path(os.environ["FORGE_HOME"])
    assert not list((home / "artifacts").glob("calibrate/*"))

    # -v shows the library's traceback; --json carries the dependency kind.
    verbose = _forge_with_sealed_llama("-v", "build", str(recipe), "--until", "calibrate", "--json")
    assert verbose.code == 4
    assert "Traceback" in verbose.err and "modelopt" in verbose.err
    error = json.loads(verbose.out)["error"]
    assert error["kind"] == "dependency" and "nvidia-modelopt" in error["message"]


def test_tested_versions_match_the_lock() -> None:
    """trtllm_forge/data/tested_versions.json is what `make lock` derived from the lock."""
    lock = Path(__file__).resolve().parents[1] / "requirements" / "lock.txt"
    pins = {}
    for line in lock.read_text().splitlines():
        if "==" in line and not line.startswith((" ", "#")):
            name, version = line.split("==", 1)
            pins[name.strip().lower()] = version.split()[0].rstrip("\\").strip()
    assert lock_versions() == pins
    assert {"transformers", "nvidia-modelopt", "onnx", "onnxruntime", "torch"} <= set(pins)
