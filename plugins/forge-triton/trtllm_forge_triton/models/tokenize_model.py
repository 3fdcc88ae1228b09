"""Triton Python-backend ``preprocessing`` model of the classic TensorRT-LLM ensemble
(written as ``preprocessing/1/model.py``): prompt text in, token ids out.

Inputs ``QUERY`` (string) and ``REQUEST_OUTPUT_LEN`` (int32); outputs ``INPUT_ID``,
``REQUEST_INPUT_LEN``, ``REQUEST_OUTPUT_LEN``, ``OUT_END_ID``, ``OUT_PAD_ID`` (int32),
the names the ensemble's ``tensorrt_llm`` step is wired to. Needs ``transformers``.
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
        self.end_id = int(self.tokenizer.eos_token_id)
        pad = self.tokenizer.pad_token_id
        self.pad_id = self.end_id if pad is None else int(pad)

    def execute(self, requests: list[Any]) -> list[Any]:
        return [self._one(request) for request in requests]

    def _one(self, request: Any) -> Any:
        queries = pb_utils.get_input_tensor_by_name(request, "QUERY").as_numpy().reshape(-1)
        out_len = pb_utils.get_input_tensor_by_name(request, "REQUEST_OUTPUT_LEN").as_numpy()
        rows = [self.tokenizer(_text(q))["input_ids"] for q in queries]
        width = max(len(r) for r in rows)
        ids = np.full((len(rows), width), self.pad_id, np.int32)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = row
        lengths = np.array([[len(r)] for r in rows], np.int32)
        column = np.ones((len(rows), 1), np.int32)
        tensors = [
            pb_utils.Tensor("INPUT_ID", ids),
            pb_utils.Tensor("REQUEST_INPUT_LEN", lengths),
            pb_utils.Tensor("REQUEST_OUTPUT_LEN", out_len.astype(np.int32).reshape(len(rows), 1)),
            pb_utils.Tensor("OUT_END_ID", column * self.end_id),
            pb_utils.Tensor("OUT_PAD_ID", column * self.pad_id),
        ]
        return pb_utils.InferenceResponse(output_tensors=tensors)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
