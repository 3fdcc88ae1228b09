"""A minimal stand-in for Triton's ``triton_python_backend_utils`` module.

No Triton server installs on these machines, so the tests run forge's Triton
Python models (their ``initialize``/``execute``) with this module in
``sys.modules`` instead. It carries only what those models call, with the
semantics Triton documents: named numpy-backed tensors, responses holding output
tensors or an error, response senders for decoupled models with the
COMPLETE_FINAL flag, and the model-config helper. It is not Triton: it proves the
models' logic and interface names, not Triton's scheduling.
"""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass, field
from typing import Any

import numpy as np

TRITONSERVER_RESPONSE_COMPLETE_FINAL = 1


class TritonModelException(Exception):
    pass


class TritonError:
    def __init__(self, message: str) -> None:
        self._message = message

    def message(self) -> str:
        return self._message


class Tensor:
    def __init__(self, name: str, array: np.ndarray) -> None:
        self._name = name
        self._array = np.asarray(array)

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array


class InferenceResponse:
    def __init__(self, output_tensors: list[Tensor], error: TritonError | None = None) -> None:
        self.output_tensors = output_tensors
        self.error = error


@dataclass
class Sender:
    """What a decoupled model's ``request.get_response_sender()`` returns."""

    sent: list[tuple[InferenceResponse | None, int]] = field(default_factory=list)

    def send(self, response: InferenceResponse | None = None, flags: int = 0) -> None:
        if self.sent and self.sent[-1][1] & TRITONSERVER_RESPONSE_COMPLETE_FINAL:
            raise TritonModelException("response sent after the final flag")
        self.sent.append((response, flags))


class Request:
    def __init__(self, **inputs: np.ndarray) -> None:
        self.inputs = {name: Tensor(name, value) for name, value in inputs.items()}
        self.sender = Sender()

    def get_response_sender(self) -> Sender:
        return self.sender


def get_input_tensor_by_name(request: Request, name: str) -> Tensor | None:
    return request.inputs.get(name)


def get_output_tensor_by_name(response: InferenceResponse, name: str) -> Tensor | None:
    return next((t for t in response.output_tensors if t.name() == name), None)


def using_decoupled_model_transaction_policy(config: dict[str, Any]) -> bool:
    return bool(config.get("model_transaction_policy", {}).get("decoupled"))


def install() -> types.ModuleType:
    """Make ``import triton_python_backend_utils`` resolve to this module."""
    module = sys.modules[__name__]
    sys.modules["triton_python_backend_utils"] = module
    return module
