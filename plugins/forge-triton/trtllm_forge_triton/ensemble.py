"""trtllm recipes (TensorRT-LLM <= 1.2): the classic ensemble around ``trtllm-build`` engines.

    <dest>/ensemble/config.pbtxt          text_input, max_tokens, stream → text_output
    <dest>/preprocessing/                 Python model: tokenizer (models/tokenize_model.py)
    <dest>/tensorrt_llm/config.pbtxt      backend tensorrtllm, inflight_fused_batching
    <dest>/tensorrt_llm/1/checkpoint/     forge's per-rank checkpoint (trtllm-build's input)
    <dest>/tensorrt_llm/1/build.sh        the recipe's trtllm-build command → 1/engine/
    <dest>/postprocessing/                Python model: detokenizer (models/detokenize_model.py)
    <dest>/tokenizer/                     the model's tokenizer files

The template fields TensorRT-LLM's fill_template.py used to substitute are filled
from the recipe: max batch size, engine dir, batching strategy, KV-cache memory
fraction, queue delay and decoupled mode (streaming).
"""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path
from typing import Any

from trtllm_forge.api import copy_checkpoint
from trtllm_forge.exporters import ExportSource
from trtllm_forge_triton.pbtxt import Io, model_config, write_config

MODELS = Path(__file__).parent / "models"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "tokenizer.model", "vocab.json", "merges.txt", "config.json",
                   "generation_config.json")  # fmt: skip

KV_CACHE_FRACTION = 0.9
QUEUE_DELAY_US = 0


def write_ensemble(source: ExportSource, dest: Path) -> dict[str, Any]:
    fields = _template_fields(source, dest)
    tokenizer = _copy_tokenizer(source.tokenizer, dest / "tokenizer")
    engine = dest / "tensorrt_llm" / "1"
    copy_checkpoint(source.files, engine / "checkpoint")  # config + ranks, not the manifest
    _write_build_script(source, engine)
    _python_model(dest, "preprocessing", "tokenize_model.py", _preprocessing(fields, tokenizer))
    _python_model(dest, "postprocessing", "detokenize_model.py", _postprocessing(fields, tokenizer))
    write_config(dest / "tensorrt_llm", _tensorrt_llm(fields))
    write_config(dest / "ensemble", _ensemble(fields))
    (dest / "ensemble" / "1").mkdir(exist_ok=True)  # Triton wants a version dir, even empty
    return {
        "layout": "ensemble",
        "models": ["ensemble", "preprocessing", "tensorrt_llm", "postprocessing"],
        "template_fields": fields,
        "needs": f"run {engine / 'build.sh'} on the GPU host (trtllm-build) first",
    }


def _template_fields(source: ExportSource, dest: Path) -> dict[str, Any]:
    return {
        "triton_max_batch_size": int(source.build.get("max_batch_size") or 1),
        "engine_dir": str((dest / "tensorrt_llm" / "1" / "engine").resolve()),
        "batching_strategy": "inflight_fused_batching",
        "kv_cache_free_gpu_mem_fraction": KV_CACHE_FRACTION,
        "max_queue_delay_microseconds": QUEUE_DELAY_US,
        "decoupled_mode": True,  # streaming responses, as the other layouts
    }


def _copy_tokenizer(src: Path, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copyfile(src / name, dest / name)
    return dest.resolve()


def _write_build_script(source: ExportSource, engine: Path) -> None:
    from trtllm_forge.engine.backends import BuildOptions
    from trtllm_forge.engine.backends.trtllm import trtllm_build_argv

    build = source.build
    known = ("max_batch_size", "max_input_len", "max_seq_len", "opt_level", "workspace_gb")
    options = BuildOptions(
        **{k: build[k] for k in known if build.get(k) is not None},
        plugins=dict(build.get("plugins") or {}),
    )
    argv = trtllm_build_argv(Path("checkpoint"), Path("engine"), options)
    script = (
        "#!/bin/sh\n# Build the engine this Triton model serves (TensorRT-LLM <= 1.2, on the GPU host).\n"
        'set -e\ncd "$(dirname "$0")"\n' + shlex.join(argv) + "\n"
    )
    path = engine / "build.sh"
    path.write_text(script)
    path.chmod(0o755)


def _python_model(dest: Path, name: str, code: str, config: str) -> None:
    write_config(dest / name, config)
    (dest / name / "1").mkdir(exist_ok=True)
    shutil.copyfile(MODELS / code, dest / name / "1" / "model.py")


def _preprocessing(f: dict[str, Any], tokenizer: Path) -> str:
    return model_config(
        name="preprocessing",
        backend="python",
        max_batch_size=f["triton_max_batch_size"],
        inputs=[Io("QUERY", "TYPE_STRING", (1,)), Io("REQUEST_OUTPUT_LEN", "TYPE_INT32", (1,))],
        outputs=[
            Io("INPUT_ID", "TYPE_INT32", (-1,)),
            Io("REQUEST_INPUT_LEN", "TYPE_INT32", (1,)),
            Io("REQUEST_OUTPUT_LEN", "TYPE_INT32", (1,)),
            Io("OUT_END_ID", "TYPE_INT32", (1,)),
            Io("OUT_PAD_ID", "TYPE_INT32", (1,)),
        ],
        instance_kind="KIND_CPU",
        parameters={"tokenizer_dir": str(tokenizer)},
    )


def _postprocessing(f: dict[str, Any], tokenizer: Path) -> str:
    return model_config(
        name="postprocessing",
        backend="python",
        max_batch_size=f["triton_max_batch_size"],
        inputs=[
            Io("TOKENS_BATCH", "TYPE_INT32", (-1, -1)),
            Io("SEQUENCE_LENGTH", "TYPE_INT32", (-1,)),
        ],
        outputs=[Io("OUTPUT", "TYPE_STRING", (-1,))],
        instance_kind="KIND_CPU",
        parameters={"tokenizer_dir": str(tokenizer)},
    )


def _tensorrt_llm(f: dict[str, Any]) -> str:
    scalar = ()  # TensorRT-LLM's backend reads per-request scalars without the [1] dim
    return model_config(
        name="tensorrt_llm",
        backend="tensorrtllm",
        max_batch_size=f["triton_max_batch_size"],
        decoupled=f["decoupled_mode"],
        inputs=[
            Io("input_ids", "TYPE_INT32", (-1,)),
            Io("input_lengths", "TYPE_INT32", (1,), reshape=scalar),
            Io("request_output_len", "TYPE_INT32", (1,), reshape=scalar),
            Io("end_id", "TYPE_INT32", (1,), optional=True, reshape=scalar),
            Io("pad_id", "TYPE_INT32", (1,), optional=True, reshape=scalar),
            Io("streaming", "TYPE_BOOL", (1,), optional=True, reshape=scalar),
        ],
        outputs=[
            Io("output_ids", "TYPE_INT32", (-1, -1)),
            Io("sequence_length", "TYPE_INT32", (-1,)),
        ],
        instance_kind="KIND_CPU",  # the backend places the engine's ranks itself
        parameters={
            "gpt_model_type": f["batching_strategy"],
            "gpt_model_path": f["engine_dir"],
            "kv_cache_free_gpu_mem_fraction": str(f["kv_cache_free_gpu_mem_fraction"]),
            "batch_scheduler_policy": "guaranteed_no_evict",
        },
        extra="dynamic_batching {\n  max_queue_delay_microseconds: "
        f"{f['max_queue_delay_microseconds']}\n}}",
    )


def _ensemble(f: dict[str, Any]) -> str:
    steps = [
        _step(
            "preprocessing",
            {"QUERY": "text_input", "REQUEST_OUTPUT_LEN": "max_tokens"},
            {
                "INPUT_ID": "_ids",
                "REQUEST_INPUT_LEN": "_in_len",
                "REQUEST_OUTPUT_LEN": "_out_len",
                "OUT_END_ID": "_end_id",
                "OUT_PAD_ID": "_pad_id",
            },
        ),
        _step(
            "tensorrt_llm",
            {
                "input_ids": "_ids",
                "input_lengths": "_in_len",
                "request_output_len": "_out_len",
                "end_id": "_end_id",
                "pad_id": "_pad_id",
                "streaming": "stream",
            },
            {"output_ids": "_tokens", "sequence_length": "_seq_len"},
        ),
        _step(
            "postprocessing",
            {"TOKENS_BATCH": "_tokens", "SEQUENCE_LENGTH": "_seq_len"},
            {"OUTPUT": "text_output"},
        ),
    ]
    return model_config(
        name="ensemble",
        platform="ensemble",
        max_batch_size=f["triton_max_batch_size"],
        inputs=[
            Io("text_input", "TYPE_STRING", (1,)),
            Io("max_tokens", "TYPE_INT32", (1,)),
            Io("stream", "TYPE_BOOL", (1,), optional=True),
        ],
        outputs=[Io("text_output", "TYPE_STRING", (-1,))],
        extra="ensemble_scheduling {\n  step [\n" + ",\n".join(steps) + "\n  ]\n}",
    )


def _step(model: str, inputs: dict[str, str], outputs: dict[str, str]) -> str:
    maps = [f'      input_map {{ key: "{k}" value: "{v}" }}' for k, v in inputs.items()]
    maps += [f'      output_map {{ key: "{k}" value: "{v}" }}' for k, v in outputs.items()]
    return (
        f'    {{\n      model_name: "{model}"\n      model_version: -1\n'
        + "\n".join(maps)
        + "\n    }"
    )
