"""A small ONNX graph builder: named nodes, inline constants, external weights.

Weights always go to one external data file per rank (so a > 2 GB rank still
serializes: protobuf caps a message at 2 GB). Small constants (shapes, scalars)
stay inline so a segment file that needs them stays self-contained.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from trtllm_forge.engine.onnx import OPSET

TORCH_TO_ONNX: dict[torch.dtype, int] = {
    torch.float32: TensorProto.FLOAT,
    torch.float16: TensorProto.FLOAT16,
    torch.bfloat16: TensorProto.BFLOAT16,
    torch.int8: TensorProto.INT8,
    torch.uint8: TensorProto.UINT8,
    torch.int32: TensorProto.INT32,
    torch.int64: TensorProto.INT64,
    torch.float8_e4m3fn: TensorProto.FLOAT8E4M3FN,
}

# Large tensors start on a 64 KiB boundary so a runtime may memory-map them.
_ALIGN_SMALL = 64
_ALIGN_LARGE = 1 << 16
_LARGE = 1 << 20


class ExternalData:
    """Appends tensor bytes to one data file and makes TensorProtos that point into it."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._file = self.path.open("wb")
        self._offset = 0

    def add(self, name: str, tensor: torch.Tensor) -> TensorProto:
        if tensor.dtype not in TORCH_TO_ONNX:
            raise TypeError(f"{name}: dtype {tensor.dtype} has no ONNX equivalent here")
        raw = tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy()
        proto = TensorProto()
        proto.name = name
        proto.data_type = TORCH_TO_ONNX[tensor.dtype]
        proto.dims.extend(tensor.shape)
        self.add_raw(proto, raw.tobytes())
        return proto

    def add_raw(self, proto: TensorProto, raw: bytes) -> None:
        """Append ``raw`` (the tensor's bytes) and point ``proto`` at them, in place."""
        align = _ALIGN_LARGE if len(raw) >= _LARGE else _ALIGN_SMALL
        pad = -self._offset % align
        self._file.write(b"\0" * pad)
        self._offset += pad
        self._file.write(raw)
        proto.data_location = TensorProto.EXTERNAL
        del proto.external_data[:]
        for key, value in (
            ("location", self.path.name),
            ("offset", self._offset),
            ("length", len(raw)),
        ):
            entry = proto.external_data.add()
            entry.key, entry.value = key, str(value)
        self._offset += len(raw)

    @property
    def size(self) -> int:
        return self._offset

    def close(self) -> None:
        self._file.close()


class GraphBuilder:
    """Accumulates nodes, inputs, outputs and initializers of one graph."""

    def __init__(self, weights: ExternalData) -> None:
        self.weights = weights
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self.value_info: list[onnx.ValueInfoProto] = []
        self._used: set[str] = set()
        self._consts: dict[tuple[int, tuple[int, ...], bytes], str] = {}

    def fresh(self, hint: str) -> str:
        """A unique value name; the hint itself when still free (readable graphs)."""
        name, n = hint, 0
        while name in self._used:
            n += 1
            name = f"{hint}_{n}"
        self._used.add(name)
        return name

    def op(
        self, op_type: str, inputs: Sequence[str], hint: str, *, domain: str = "", **attrs: Any
    ) -> str:
        """Add a single-output node; returns the output name."""
        return self.op_n(op_type, inputs, [hint], domain=domain, **attrs)[0]

    def op_n(
        self,
        op_type: str,
        inputs: Sequence[str],
        hints: Sequence[str],
        *,
        domain: str = "",
        **attrs: Any,
    ) -> list[str]:
        """Add a node with several outputs, one per hint."""
        outputs = [self.fresh(h) for h in hints]
        node = helper.make_node(
            op_type,
            list(inputs),
            outputs,
            name=self.fresh(f"{hints[0]}/{op_type}"),
            domain=domain,
            **attrs,
        )
        self.nodes.append(node)
        return outputs

    def const(self, value: Any, dtype: Any = None, hint: str = "const") -> str:
        """An inline constant initializer; identical constants share one name."""
        array = np.asarray(value, dtype=dtype)
        proto_type = helper.np_dtype_to_tensor_dtype(array.dtype)
        key = (proto_type, tuple(array.shape), array.tobytes())
        if key not in self._consts:
            name = self.fresh(hint)
            self.initializers.append(numpy_helper.from_array(array, name))
            self._consts[key] = name
        return self._consts[key]

    def i64(self, *values: int) -> str:
        return self.const(list(values), np.int64, "shape")

    def scalar(self, value: float) -> str:
        return self.const(value, np.float32, "scalar")

    def weight(self, name: str, tensor: torch.Tensor) -> str:
        """An external-data initializer named after its checkpoint tensor."""
        name = self.fresh(name)
        self.initializers.append(self.weights.add(name, tensor))
        return name

    def add_input(self, name: str, elem_type: int, shape: Sequence[int | str]) -> str:
        self._used.add(name)
        self.inputs.append(helper.make_tensor_value_info(name, elem_type, list(shape)))
        return name

    def add_output(self, value: str, name: str, elem_type: int, shape: Sequence[int | str]) -> None:
        """Expose ``value`` as graph output ``name`` (renaming through Identity if needed)."""
        if value != name:
            self._used.add(name)
            self.nodes.append(
                helper.make_node("Identity", [value], [name], name=self.fresh(f"{name}/Identity"))
            )
        self.outputs.append(helper.make_tensor_value_info(name, elem_type, list(shape)))

    def annotate(self, name: str, elem_type: int, shape: Sequence[int | str] | None = None) -> None:
        """Declare a value's type where inference cannot (outputs of custom-domain nodes)."""
        self.value_info.append(
            helper.make_tensor_value_info(name, elem_type, None if shape is None else list(shape))
        )

    def model(
        self, graph_name: str, *, custom_domains: Sequence[str] = (), doc: str = ""
    ) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes,
            graph_name,
            self.inputs,
            self.outputs,
            self.initializers,
            value_info=self.value_info,
        )
        opsets = [helper.make_opsetid("", OPSET)] + [
            helper.make_opsetid(d, 1) for d in custom_domains
        ]
        model = helper.make_model(
            graph, opset_imports=opsets, producer_name="trtllm-forge", doc_string=doc
        )
        model.ir_version = 10
        return model
