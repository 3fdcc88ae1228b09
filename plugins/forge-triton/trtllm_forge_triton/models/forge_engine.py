"""Triton Python-backend model serving a forge ONNX engine (written as ``1/model.py``).

Interface: ``text_input`` (string) and optional ``max_tokens`` (int32) in, ``text_output``
(string) out. The model is decoupled: every decoded piece of text is sent as its own
response as soon as it exists, then a final empty response closes the stream, so
clients using Triton's streaming gRPC API see tokens as they come.

The engine runs through forge's own runtime (ONNX Runtime), so the Triton Python
environment needs ``trtllm-forge`` installed (docs/deploy.md). The engine and its
tokenizer files sit next to this file, in ``engine/`` (parameter ``engine_dir``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

DEFAULT_MAX_TOKENS = 64


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        from trtllm_forge.bench.runners.forge import ForgeRunner
        from trtllm_forge.sources.tokenizer import load_tokenizer

        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        here = Path(args["model_repository"]) / str(args["model_version"])
        engine = here / params.get("engine_dir", "engine")
        threads = int(params.get("intra_op_threads") or 0) or None
        self.max_tokens = int(params.get("default_max_tokens") or DEFAULT_MAX_TOKENS)
        self.runner = ForgeRunner.load(engine, threads=threads)
        self.tokenizer = load_tokenizer(engine, needed_for="the Triton model tokenizes prompts")
        if not pb_utils.using_decoupled_model_transaction_policy(config):
            raise pb_utils.TritonModelException("this model streams: it must be decoupled")

    def execute(self, requests: list[Any]) -> None:
        for request in requests:
            sender = request.get_response_sender()
            try:
                for piece in self._generate(request):
                    out = pb_utils.Tensor(
                        "text_output", np.array([piece.encode()], dtype=np.object_)
                    )
                    sender.send(pb_utils.InferenceResponse(output_tensors=[out]))
            except Exception as exc:  # one bad request must not take the model down
                error = pb_utils.TritonError(f"{type(exc).__name__}: {exc}")
                sender.send(pb_utils.InferenceResponse(output_tensors=[], error=error))
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None  # decoupled: every response went through the senders

    def _generate(self, request: Any) -> Any:
        from trtllm_forge.bench.generate import stream_text

        text = pb_utils.get_input_tensor_by_name(request, "text_input").as_numpy().reshape(-1)[0]
        prompt = text.decode() if isinstance(text, bytes) else str(text)
        limit = pb_utils.get_input_tensor_by_name(request, "max_tokens")
        max_tokens = int(limit.as_numpy().reshape(-1)[0]) if limit is not None else self.max_tokens
        return stream_text(self.runner, self.tokenizer, prompt, max_tokens)

    def finalize(self) -> None:
        self.runner = None
