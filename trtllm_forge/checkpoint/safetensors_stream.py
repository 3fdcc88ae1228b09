"""A streaming safetensors writer: header first from known shapes, then bytes in order.

``safetensors.torch.save_file`` needs every tensor in memory at once. Converting
a 70B checkpoint that way needs 140 GB of RAM. Here the caller declares every
tensor's name, dtype and shape up front; the writer emits the header, then the
caller hands over tensors one at a time in :attr:`StreamingWriter.order` and each
is written and dropped. Peak memory is the largest single tensor the caller
builds.

The layout (8-byte little-endian header length, compact JSON header padded
with spaces to a multiple of 8, data sorted by dtype then name) matches what
the reference implementation writes, so the output is byte-identical to
``save_file`` for the same tensors (tested).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

import torch

from trtllm_forge.faults import point

# safetensors dtype names, listed in the reference implementation's enum order;
# data is laid out by descending position in this list (widest alignment first).
_DTYPE_ORDER = (
    "BOOL",
    "U8",
    "I8",
    "F8_E5M2",
    "F8_E4M3",
    "I16",
    "U16",
    "F16",
    "BF16",
    "I32",
    "U32",
    "F32",
    "F64",
    "I64",
    "U64",
)
_RANK = {name: i for i, name in enumerate(_DTYPE_ORDER)}

TORCH_TO_ST: dict[torch.dtype, str] = {
    torch.bool: "BOOL",
    torch.uint8: "U8",
    torch.int8: "I8",
    torch.float8_e5m2: "F8_E5M2",
    torch.float8_e4m3fn: "F8_E4M3",
    torch.int16: "I16",
    torch.uint16: "U16",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int32: "I32",
    torch.uint32: "U32",
    torch.float32: "F32",
    torch.float64: "F64",
    torch.int64: "I64",
    torch.uint64: "U64",
}

ST_TO_TORCH: dict[str, torch.dtype] = {name: dtype for dtype, name in TORCH_TO_ST.items()}


@dataclass(frozen=True)
class TensorSpec:
    """What will be written under ``name``: declared before any bytes exist."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        count = 1
        for dim in self.shape:
            count *= dim
        return count * torch.empty((), dtype=self.dtype).element_size()


class StreamingWriter:
    """Write one safetensors file tensor by tensor.

    Usage::

        with StreamingWriter(path, specs) as writer:
            for name in writer.order:
                writer.write(name, make_tensor(name))

    Leaving the block early (an exception) deletes the partial file.
    """

    def __init__(
        self,
        path: Path,
        specs: Iterable[TensorSpec],
        *,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        self.path = Path(path)
        self._specs = {spec.name: spec for spec in specs}
        for spec in self._specs.values():
            if spec.dtype not in TORCH_TO_ST:
                raise ValueError(f"{spec.name}: dtype {spec.dtype} cannot be stored in safetensors")
        self.order: list[str] = sorted(
            self._specs,
            key=lambda n: (-_RANK[TORCH_TO_ST[self._specs[n].dtype]], n),
        )
        # Sorted so the file is a pure function of its content (the reference writer
        # uses a hash map here, so its metadata order varies from run to run).
        self._metadata = dict(sorted(metadata.items())) if metadata else None
        self._next = 0
        self._file: BinaryIO | None = None

    def __enter__(self) -> StreamingWriter:
        self._file = open(self.path, "wb")  # noqa: SIM115 - closed in __exit__
        self._file.write(self._header())
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._file is not None
        self._file.close()
        if exc_type is not None:
            self.path.unlink(missing_ok=True)
        elif self._next != len(self.order):
            self.path.unlink(missing_ok=True)
            missing = self.order[self._next]
            raise RuntimeError(f"{self.path.name}: tensor {missing!r} was declared but not written")

    def _header(self) -> bytes:
        header: dict[str, object] = {}
        if self._metadata is not None:
            header["__metadata__"] = self._metadata
        offset = 0
        for name in self.order:
            spec = self._specs[name]
            end = offset + spec.nbytes
            header[name] = {
                "dtype": TORCH_TO_ST[spec.dtype],
                "shape": list(spec.shape),
                "data_offsets": [offset, end],
            }
            offset = end
        text = json.dumps(header, separators=(",", ":")).encode("utf-8")
        text += b" " * (-len(text) % 8)
        return struct.pack("<Q", len(text)) + text

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Append ``tensor``; it must be the next name in :attr:`order` with its declared spec."""
        if self._file is None:
            raise RuntimeError("StreamingWriter.write called outside its with-block")
        if self._next >= len(self.order) or self.order[self._next] != name:
            expected = self.order[self._next] if self._next < len(self.order) else "nothing"
            raise RuntimeError(f"wrote {name!r} out of order; expected {expected!r}")
        spec = self._specs[name]
        if tensor.dtype != spec.dtype or tuple(tensor.shape) != spec.shape:
            raise RuntimeError(
                f"{name}: got {tensor.dtype} {tuple(tensor.shape)}, "
                f"declared {spec.dtype} {spec.shape}"
            )
        self._file.write(tensor_bytes(tensor))
        self._next += 1
        point("safetensors.tensor_written")  # crash tests kill here, mid-file


def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """The tensor's raw little-endian bytes, without a copy when already contiguous on CPU."""
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    if flat.numel() == 0:
        return memoryview(b"")
    array: Any = flat.view(torch.uint8).numpy()
    return memoryview(array).cast("B")
