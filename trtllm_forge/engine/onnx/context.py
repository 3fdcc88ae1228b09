"""What every lowering function gets: the graph, the rank's weights, the model and rank."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from onnx import TensorProto

from trtllm_forge.checkpoint.io import CheckpointReader, rank_file
from trtllm_forge.engine.onnx.graph import TORCH_TO_ONNX, GraphBuilder
from trtllm_forge.engine.onnx.shared import SharedWeights
from trtllm_forge.engine.spec import ModelSpec, RankLayout
from trtllm_forge.errors import source_error


class RankWeights:
    """One rank's tensors (read through the checkpoint reader) and which ones the lowering used.

    Every tensor must be consumed: a tensor nobody lowered (a quantization scale, a
    bias) would otherwise be dropped silently and the engine would be wrong.
    """

    def __init__(self, reader: CheckpointReader, rank: int) -> None:
        self._reader, self._rank = reader, rank
        self.file = rank_file(rank)
        self.names = set(reader.names(rank))
        self.used: set[str] = set()

    def has(self, name: str) -> bool:
        return name in self.names

    def get(self, name: str) -> torch.Tensor:
        if name not in self.names:
            raise source_error(f"{self.file}: tensor {name!r} is missing")
        self.used.add(name)
        return self._reader.get(name, self._rank)

    def use(self, name: str) -> None:
        """Mark ``name`` consumed without reading it (referenced in place, shared.py)."""
        if name not in self.names:
            raise source_error(f"{self.file}: tensor {name!r} is missing")
        self.used.add(name)

    def unused(self) -> list[str]:
        return sorted(self.names - self.used)


@dataclass
class LoweringContext:
    """One rank's lowering state, passed to every lowering function and hook."""

    graph: GraphBuilder
    weights: RankWeights
    model: ModelSpec
    layout: RankLayout
    compute_type: int = TensorProto.FLOAT
    shared: SharedWeights | None = None  # reference the rank file's bytes (shared.py)

    def constant_weight(self, name: str, tensor: torch.Tensor, *, transpose: bool = False) -> str:
        """Put a checkpoint tensor in the graph as external data and cast it to the compute type.

        The stored dtype is kept on disk (a float16 checkpoint gives a float16 data file);
        the Cast makes compute float32 on CPU. ORT folds the Cast at session start.
        """
        if transpose:
            tensor = tensor.t()
        value = self.graph.weight(name, tensor)
        return self._compute_typed(value, TORCH_TO_ONNX[tensor.dtype], name)

    def load(self, name: str, *, transpose: bool = False) -> str:
        """Read tensor ``name`` from the rank file and add it as a compute-typed weight.

        With ``shared`` set, the tensor stays in the checkpoint's layout and bytes (a
        reference into the rank file) and ``transpose`` is a Transpose node, which ONNX
        Runtime folds at session start (same matrix, no second copy on disk).
        """
        if self.shared is None:
            return self.constant_weight(name, self.weights.get(name), transpose=transpose)
        value, elem_type = self._stored(name)
        if transpose:
            value = self.graph.op("Transpose", [value], f"{name}.t", perm=[1, 0])
        return self._compute_typed(value, elem_type, name)

    def _stored(self, name: str) -> tuple[str, int]:
        """The tensor as stored: a reference when possible, else written to the data file."""
        assert self.shared is not None
        value = self.graph.fresh(name)
        proto = self.shared.proto(name, value)
        if proto is None:
            tensor = self.weights.get(name)
            self.graph.initializers.append(self.graph.weights.add(value, tensor))
            return value, TORCH_TO_ONNX[tensor.dtype]
        self.weights.use(name)
        self.graph.initializers.append(proto)
        return value, proto.data_type

    def _compute_typed(self, value: str, elem_type: int, name: str) -> str:
        if elem_type == self.compute_type:
            return value
        return self.graph.op("Cast", [value], f"{name}.f32", to=self.compute_type)
