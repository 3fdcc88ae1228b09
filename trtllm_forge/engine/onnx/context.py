"""What every lowering function gets: the graph, the rank's weights, the model and rank."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import torch
from onnx import TensorProto
from safetensors import safe_open

from trtllm_forge.engine.onnx.graph import TORCH_TO_ONNX, GraphBuilder
from trtllm_forge.engine.spec import ModelSpec, RankLayout
from trtllm_forge.errors import source_error


class RankWeights:
    """Reads one rank file lazily and remembers which tensors the lowering consumed.

    Every tensor must be consumed: a tensor nobody lowered (a quantization scale, a
    bias) would otherwise be dropped silently and the engine would be wrong.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._file = safe_open(str(self.path), framework="pt")
        self.names: set[str] = set(self._file.keys())  # type: ignore[no-untyped-call]
        self.used: set[str] = set()

    def has(self, name: str) -> bool:
        return name in self.names

    def get(self, name: str) -> torch.Tensor:
        if name not in self.names:
            raise source_error(f"{self.path.name}: tensor {name!r} is missing")
        self.used.add(name)
        tensor: torch.Tensor = self._file.get_tensor(name)  # type: ignore[no-untyped-call]
        return tensor

    def unused(self) -> list[str]:
        return sorted(self.names - self.used)

    def __enter__(self) -> RankWeights:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._file = None  # type: ignore[assignment]  # safe_open has no close(); drop the handle


@dataclass
class LoweringContext:
    """One rank's lowering state, passed to every lowering function and hook."""

    graph: GraphBuilder
    weights: RankWeights
    model: ModelSpec
    layout: RankLayout
    compute_type: int = TensorProto.FLOAT

    def constant_weight(self, name: str, tensor: torch.Tensor, *, transpose: bool = False) -> str:
        """Put a checkpoint tensor in the graph as external data and cast it to the compute type.

        The stored dtype is kept on disk (a float16 checkpoint gives a float16 data file);
        the Cast makes compute float32 on CPU. ORT folds the Cast at session start.
        """
        if transpose:
            tensor = tensor.t()
        value = self.graph.weight(name, tensor)
        if TORCH_TO_ONNX[tensor.dtype] == self.compute_type:
            return value
        return self.graph.op("Cast", [value], f"{name}.f32", to=self.compute_type)

    def load(self, name: str, *, transpose: bool = False) -> str:
        """Read tensor ``name`` from the rank file and add it as a compute-typed weight."""
        return self.constant_weight(name, self.weights.get(name), transpose=transpose)
