"""`forge export triton` (plugins/forge-triton) for the three kinds of artifact.

Every config.pbtxt is parsed into tritonclient's ``ModelConfig``; the Python models'
code runs against a real tiny forge engine and tokenizer with a stand-in for
``triton_python_backend_utils`` (tests/triton_stub.py says what it is and is not).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import yaml
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2

from tests import triton_stub
from tests.helpers import assert_clean_error, forge, write_recipe
from trtllm_forge.errors import ForgeError


def _parse(path: Path) -> Any:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def _load_model(model_py: Path) -> ModuleType:
    triton_stub.install()
    spec = importlib.util.spec_from_file_location(
        f"triton_model_{model_py.parent.parent.name}", model_py
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _initialize(model_dir: Path) -> Any:
    """What Triton does: parse config.pbtxt, hand the model its JSON and its location."""
    config = json_format.MessageToDict(
        _parse(model_dir / "config.pbtxt"), preserving_proto_field_name=True
    )
    model = _load_model(model_dir / "1" / "model.py").TritonPythonModel()
    model.initialize(
        {
            "model_config": json.dumps(config),
            "model_repository": str(model_dir),
            "model_version": "1",
        }
    )
    return model


def _export(recipe: Path, dest: Path, home: Path) -> dict[str, Any]:
    from trtllm_forge import api
    from trtllm_forge.context import RunContext, Settings

    return api.export_triton(recipe=recipe, dest=dest, ctx=RunContext(Settings(home=home)))


def test_onnx_engine_python_model_streams_an_answer(tiny_models: dict, tmp_path: Path) -> None:  # type: ignore[type-arg]
    recipe = write_recipe(
        tmp_path / "r.yaml",
        source={"path": str(tiny_models["llama"])},
        convert={"dtype": "float32"},
        build={"max_batch_size": 2, "max_input_len": 32, "max_seq_len": 64},
    )
    doc = _export(recipe, tmp_path / "repo", tmp_path / "home")
    assert (doc["layout"], doc["models"]) == ("python", ["t"])
    config = _parse(tmp_path / "repo" / "t" / "config.pbtxt")
    assert config.backend == "python" and config.model_transaction_policy.decoupled
    assert [i.name for i in config.input] == ["text_input", "max_tokens"]
    assert [o.name for o in config.output] == ["text_output"]

    model = _initialize(tmp_path / "repo" / "t")
    request = triton_stub.Request(
        text_input=np.array([b"The quick brown fox"], dtype=np.object_),
        max_tokens=np.array([6], dtype=np.int32),
    )
    assert model.execute([request]) is None  # decoupled: answers go through the sender
    sent = request.sender.sent
    assert sent[-1] == (None, triton_stub.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
    pieces = [r.output_tensors[0].as_numpy()[0].decode() for r, _ in sent[:-1]]
    assert len(pieces) >= 2 and all(r.error is None for r, _ in sent[:-1])  # streamed

    # The same engine through forge's own `forge run` path gives the same text.
    from trtllm_forge.bench.generate import stream_text
    from trtllm_forge.bench.runners.forge import ForgeRunner
    from trtllm_forge.sources.tokenizer import load_tokenizer

    engine = tmp_path / "repo" / "t" / "1" / "engine"
    expected = "".join(
        stream_text(
            ForgeRunner.load(engine),
            load_tokenizer(engine, needed_for="t"),
            "The quick brown fox",
            6,
        )
    )
    assert "".join(pieces) == expected

    # A prompt over max_input_len is that request's error, and the stream still closes.
    long = triton_stub.Request(text_input=np.array([b"word " * 200], dtype=np.object_))
    model.execute([long])
    (error, flags), final = long.sender.sent
    assert "max_input_len" in error.error.message() and final[1] == 1


def test_trtllm_recipe_exports_the_classic_ensemble(tiny_models: dict, tmp_path: Path) -> None:  # type: ignore[type-arg]
    recipe = write_recipe(
        tmp_path / "r.yaml",
        source={"path": str(tiny_models["llama"])},
        convert={"dtype": "float16"},
        parallel={"tp": 2},
        build={"backend": "trtllm", "max_batch_size": 4, "max_input_len": 32, "max_seq_len": 64},
    )
    run = forge("export", "triton", str(recipe), str(tmp_path / "repo"), "--json",
                env={"FORGE_HOME": str(tmp_path / "home")})  # fmt: skip
    assert run.code == 0, run.err
    repo = tmp_path / "repo"
    configs = {p.parent.name: _parse(p) for p in repo.glob("*/config.pbtxt")}
    assert sorted(configs) == ["ensemble", "postprocessing", "preprocessing", "tensorrt_llm"]
    trt = configs["tensorrt_llm"]
    params = {k: v.string_value for k, v in trt.parameters.items()}
    assert trt.backend == "tensorrtllm" and trt.max_batch_size == 4
    assert trt.model_transaction_policy.decoupled
    assert params["gpt_model_type"] == "inflight_fused_batching"
    assert params["gpt_model_path"] == str((repo / "tensorrt_llm" / "1" / "engine").resolve())
    assert float(params["kv_cache_free_gpu_mem_fraction"]) == 0.9
    steps = [s.model_name for s in configs["ensemble"].ensemble_scheduling.step]
    assert steps == ["preprocessing", "tensorrt_llm", "postprocessing"]
    ckpt = repo / "tensorrt_llm" / "1" / "checkpoint"
    assert sorted(p.name for p in ckpt.iterdir()) == [
        "config.json",
        "rank0.safetensors",
        "rank1.safetensors",
    ]
    script = (repo / "tensorrt_llm" / "1" / "build.sh").read_text()
    assert (
        "trtllm-build --checkpoint_dir checkpoint --output_dir engine --max_batch_size 4" in script
    )

    # Tokenize → (what tensorrt_llm would return) → detokenize, through the real models.
    pre, post = _initialize(repo / "preprocessing"), _initialize(repo / "postprocessing")
    asked = triton_stub.Request(
        QUERY=np.array([[b"Hello world"]], dtype=np.object_),
        REQUEST_OUTPUT_LEN=np.array([[8]], dtype=np.int32),
    )
    (tokens,) = pre.execute([asked])
    ids = triton_stub.get_output_tensor_by_name(tokens, "INPUT_ID").as_numpy()
    length = triton_stub.get_output_tensor_by_name(tokens, "REQUEST_INPUT_LEN").as_numpy()
    assert ids.dtype == np.int32 and length.tolist() == [[ids.shape[1]]]
    back = triton_stub.Request(TOKENS_BATCH=ids[:, None, :], SEQUENCE_LENGTH=length)
    (text,) = post.execute([back])
    out = triton_stub.get_output_tensor_by_name(text, "OUTPUT").as_numpy()
    assert out[0, 0].decode().strip() == "Hello world"


def test_hf_checkpoint_exports_the_llmapi_model(tiny_models: dict, tmp_path: Path) -> None:  # type: ignore[type-arg]
    recipe = write_recipe(
        tmp_path / "r.yaml",
        source={"path": str(tiny_models["llama"])},
        convert={"dtype": "float16"},
        quantize={"method": "int8_wo"},
        build={"backend": "hf", "format": "modelopt", "max_batch_size": 8},
    )
    doc = _export(recipe, tmp_path / "repo", tmp_path / "home")
    model = tmp_path / "repo" / "tensorrt_llm"
    config = _parse(model / "config.pbtxt")
    assert config.backend == "python" and config.model_transaction_policy.decoupled
    assert {"text_input", "streaming", "sampling_param_max_tokens"} <= {
        i.name for i in config.input
    }
    settings = yaml.safe_load((model / "1" / "model.yaml").read_text())
    assert settings["model"] == str((model / "1" / "hf").resolve())
    assert (settings["backend"], settings["tensor_parallel_size"]) == ("pytorch", 1)
    assert settings["triton_config"] == {"max_batch_size": 0, "decoupled": True}
    hf_config = json.loads((model / "1" / "hf" / "config.json").read_text())
    assert hf_config["quantization_config"]["quant_algo"] == "W8A16"
    assert doc["layout"] == "llmapi"


def test_missing_plugin_names_the_extra_and_bad_target(tiny_models: dict, tmp_path: Path) -> None:  # type: ignore[type-arg]
    from trtllm_forge.exporters import ExporterRegistry

    with pytest.raises(ForgeError, match="not installed") as info:
        ExporterRegistry(plugin_group="trtllm_forge.no-such-group").get("triton")
    assert info.value.code == 4 and "trtllm-forge[triton]" in (info.value.hint or "")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    recipe = write_recipe(tmp_path / "r.yaml", source={"path": str(tiny_models["llama"])})
    run = forge("export", "triton", str(recipe), str(tmp_path / "full"))
    assert_clean_error(run, 2, "not empty")
