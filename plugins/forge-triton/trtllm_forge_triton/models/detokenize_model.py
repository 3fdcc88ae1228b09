"""Triton Python-backend ``postprocessing`` model of the classic TensorRT-LLM ensemble
(written as ``postprocessing/1/model.py``): token ids out of ``tensorrt_llm`` to text.

Inputs ``TOKENS_BATCH`` ([batch, beam, tokens] int32) and ``SEQUENCE_LENGTH``
([batch, beam] int32); output ``OUTPUT`` ([batch, beam] string). Needs ``transformers``.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        from transformers import AutoTokenizer

        config = json.loads(args["model_config"])
        tokenizer_dir = config["parameters"]["tokenizer_dir"]["string_value"]
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)

    def execute(self, requests: list[Any]) -> list[Any]:
        return [self._one(request) for request in requests]

    def _one(self, request: Any) -> Any:
        tokens = pb_utils.get_input_tensor_by_name(request, "TOKENS_BATCH").as_numpy()
        lengths = pb_utils.get_input_tensor_by_name(request, "SEQUENCE_LENGTH").as_numpy()
        texts = np.empty(lengths.shape, dtype=np.object_)
        for index in np.ndindex(*lengths.shape):
            ids = tokens[index][: int(lengths[index])].tolist()
            texts[index] = self.tokenizer.decode(ids, skip_special_tokens=True).encode()
        return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("OUTPUT", texts)])
