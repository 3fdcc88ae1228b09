"""Quantized Hugging Face folders: TensorRT-LLM's ``llmapi`` Python-backend model.

    <dest>/tensorrt_llm/config.pbtxt     backend python, decoupled; text_input, streaming,
                                         sampling_param_* → text_output
    <dest>/tensorrt_llm/1/model.yaml     the LLM API arguments: model, backend pytorch,
                                         tensor/pipeline parallel sizes, triton_config
    <dest>/tensorrt_llm/1/hf/            the quantized checkpoint (ModelOpt or compressed-tensors)

``1/model.py`` is TensorRT-LLM's own (triton_backend/all_models/llmapi/tensorrt_llm/1/
model.py of the release you serve with); forge does not ship a copy of it: docs/deploy.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from trtllm_forge.exporters import ExportSource, materialize
from trtllm_forge_triton.pbtxt import Io, model_config, write_config

NAME = "tensorrt_llm"  # the name TensorRT-LLM's clients and docs use for this model


def write_llmapi_model(source: ExportSource, dest: Path) -> dict[str, Any]:
    version = dest / NAME / "1"
    materialize(source.files, version / "hf")
    max_batch = int(source.build.get("max_batch_size") or 1)
    settings = {
        # Relative to Triton's working directory is fragile: the LLM API gets the absolute
        # path of the folder this repository holds; move the repository, rerun the export.
        "model": str((version / "hf").resolve()),
        "backend": "pytorch",
        "tensor_parallel_size": source.tp,
        "pipeline_parallel_size": source.pp,
        "max_batch_size": max_batch,
        "max_seq_len": int(source.build.get("max_seq_len") or 0) or None,
        "triton_config": {"max_batch_size": 0, "decoupled": True},
    }
    (version / "model.yaml").write_text(
        "# TensorRT-LLM LLM API arguments for the llmapi Triton model (written by forge)\n"
        + yaml.safe_dump({k: v for k, v in settings.items() if v is not None}, sort_keys=False)
    )
    write_config(dest / NAME, _config())
    return {"layout": "llmapi", "models": [NAME], "needs": "TensorRT-LLM's llmapi 1/model.py"}


def _config() -> str:
    optional = [
        Io("streaming", "TYPE_BOOL", (1,), optional=True),
        Io("sampling_param_max_tokens", "TYPE_INT32", (1,), optional=True),
        Io("sampling_param_temperature", "TYPE_FP32", (1,), optional=True),
        Io("sampling_param_top_k", "TYPE_INT32", (1,), optional=True),
        Io("sampling_param_top_p", "TYPE_FP32", (1,), optional=True),
        Io("sampling_param_seed", "TYPE_UINT64", (1,), optional=True),
        Io("sampling_param_exclude_input_from_output", "TYPE_BOOL", (1,), optional=True),
    ]
    return model_config(
        name=NAME,
        backend="python",
        max_batch_size=0,
        decoupled=True,
        inputs=[Io("text_input", "TYPE_STRING", (1,)), *optional],
        outputs=[Io("text_output", "TYPE_STRING", (1,))],
        instance_kind="KIND_MODEL",  # the LLM API places its own ranks on the GPUs
    )
