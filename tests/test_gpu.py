"""The CUDA paths, on a machine with a CUDA GPU, torch's CUDA build and onnxruntime-gpu.

CI's machines have no GPU, so every test here is skipped there; they run on the GPU machine
(docs/engine-performance.md says how) and fail there when a CUDA path breaks:

* verify with ``verify.device: cuda`` (reference on torch's CUDA device, engine on ONNX
  Runtime's CUDAExecutionProvider) meets its gates, for the portable float32 graph and
  the ``ort`` profile in float16, int4 weight-only included;
* ``forge bench --device cuda`` reports the device and its memory, and its figures agree;
* onnxruntime-genai's CUDA provider runs a forge engine folder and generates the tokens
  forge's own runtime generates on the same device.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import onnxruntime
import pytest
import torch

from tests.helpers import forge, write_recipe

CUDA_READY = torch.cuda.is_available() and (
    "CUDAExecutionProvider" in onnxruntime.get_available_providers()
)
pytestmark = pytest.mark.skipif(not CUDA_READY, reason="needs a CUDA GPU and onnxruntime-gpu")
LIMITS = {"max_batch_size": 4, "max_input_len": 32, "max_seq_len": 64}


def _build(tmp_path: Path, model: Path, name: str, **sections: Any) -> dict[str, Any]:
    recipe = write_recipe(
        tmp_path / f"{name}.yaml",
        source={"path": str(model)},
        convert={"dtype": "float32"},
        verify={"device": "cuda", "max_new_tokens": 8, "max_text_tokens": 64},
        **sections,
    )
    run = forge("build", str(recipe), "--json")
    assert run.code == 0, run.err + run.out
    return {s["stage"]: s for s in run.json()["stages"]}


@pytest.mark.parametrize(
    ("name", "quantize", "build"),
    [
        ("portable", {"method": "none"}, {}),
        ("ort-fp16", {"method": "none"}, {"profile": "ort", "compute_dtype": "float16"}),
        (
            "ort-fp16-int4",
            {"method": "int4_wo", "group_size": 32},
            {"profile": "ort", "compute_dtype": "float16"},
        ),
    ],
)
def test_verify_on_cuda_meets_the_gates(
    tmp_path: Path, tiny_models: dict[str, Path], name: str, quantize: dict, build: dict
) -> None:
    stages = _build(
        tmp_path, tiny_models["llama"], name, quantize=quantize, build={**LIMITS, **build}
    )
    # The runtime refuses to run a cuda engine on any provider but CUDA's (engine/runtime.py),
    # so a verify that ran met its gates there.
    report = json.loads((Path(stages["verify"]["path"]) / "report.json").read_text())
    assert report.get("passed", True) and not report.get("skipped"), report


def test_bench_on_cuda_reports_device_memory(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    stages = _build(
        tmp_path,
        tiny_models["llama"],
        "bench",
        build={**LIMITS, "profile": "ort", "compute_dtype": "float16"},
    )
    engine = Path(stages["build"]["path"]) / "engine"
    run = forge(
        "bench", str(engine), "--device", "cuda", "--batch-sizes", "1,4", "--input-len", "16",
        "--output-len", "8", "--warmup", "1", "--json", "-q",
    )  # fmt: skip
    assert run.code == 0, run.err
    report = run.json()["report"]
    assert report["device"] == "cuda" and report["cuda_graph"] is True
    for scenario in report["scenarios"]:
        assert scenario["peak_device_bytes"] and scenario["peak_device_bytes"] > 0
        tokens = scenario["output_tokens_per_s"] * scenario["duration_s"]
        assert tokens == pytest.approx(scenario["output_tokens"])


def test_genai_cuda_generates_forge_runtime_tokens(
    tmp_path: Path, tiny_models: dict[str, Path]
) -> None:
    pytest.importorskip("onnxruntime_genai")
    from trtllm_forge.bench.runners import open_runner

    stages = _build(tmp_path, tiny_models["llama"], "genai", build=LIMITS)
    engine = Path(stages["build"]["path"]) / "engine"
    prompts = [[5, 17, 33, 99, 120, 7, 8, 9]]
    forge = open_runner("forge", engine, device="cuda")
    forge_tokens = list(forge.stream(prompts, 12))
    forge.close()
    genai = open_runner("genai", engine, device="cuda")
    assert genai.device == "cuda"
    assert list(genai.stream(prompts, 12)) == forge_tokens
    genai.close()


def test_cuda_graph_decode_gives_the_uncaptured_tokens(
    tmp_path: Path, tiny_models: dict[str, Path]
) -> None:
    """The ort profile's decode steps replayed as CUDA graphs (engine/graph_step.py) give the
    tokens of the same engine run step by step, across batch sizes and reused caches."""
    from trtllm_forge.engine.runtime import OrtEngine

    stages = _build(
        tmp_path,
        tiny_models["llama"],
        "graph",
        build={**LIMITS, "profile": "ort", "compute_dtype": "float16"},
    )
    engine_dir = Path(stages["build"]["path"]) / "engine"
    graphed = OrtEngine.load(engine_dir, device="cuda", cuda_graph=True)
    plain = OrtEngine.load(engine_dir, device="cuda", cuda_graph=False)
    assert graphed.bound is not None and graphed.bound.graphs
    batches = [[[5, 17, 33, 99, 120, 7, 8, 9], [40, 41], [3, 4, 5, 6]], [[11, 12, 13]]]
    for prompts in batches * 2:  # the second pass replays graphs captured by the first
        assert graphed.generate(prompts, 20) == plain.generate(prompts, 20)
