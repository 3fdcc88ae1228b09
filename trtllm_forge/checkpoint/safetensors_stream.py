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

import errno
import json
import os
import struct
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
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
ITEMSIZE: dict[str, int] = {
    name: torch.empty((), dtype=dt).element_size() for dt, name in TORCH_TO_ST.items()
}

# Bytes per read when data has to pass through Python. Measured on the 1B
# bench shape: moving bytes through a buffer that stays in the CPU cache
# (1-2 MiB) was several times faster than through a 32 MiB one, which is
# copied in and out of memory twice.
BLOCK_BYTES = 1 << 20
CAST_BLOCK_BYTES = 2 << 20
# iovecs per writev call (POSIX guarantees at least 16; Linux allows 1024).
_IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 16


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
        # Unbuffered: tensors are large and go straight to the descriptor.
        self._file = open(self.path, "wb", buffering=0)  # noqa: SIM115 - closed in __exit__
        _write_all(self._file.fileno(), memoryview(self._header()))
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
        spec = self._expect(name)
        if tensor.dtype != spec.dtype or tuple(tensor.shape) != spec.shape:
            raise RuntimeError(
                f"{name}: got {tensor.dtype} {tuple(tensor.shape)}, "
                f"declared {spec.dtype} {spec.shape}"
            )
        with self.tensor(name) as sink:
            sink.write(tensor_bytes(tensor))

    @contextmanager
    def tensor(self, name: str) -> Iterator[TensorSink]:
        """Append the next tensor from raw pieces (bytes, file ranges, zeros) without
        building it in memory. Its pieces must add up to exactly its declared size."""
        spec = self._expect(name)
        assert self._file is not None
        sink = TensorSink(self._file.fileno())
        yield sink
        if sink.written != spec.nbytes:
            raise RuntimeError(f"{name}: wrote {sink.written} bytes, declared {spec.nbytes}")
        self._next += 1
        point("safetensors.tensor_written")  # crash tests kill here, mid-file

    def _expect(self, name: str) -> TensorSpec:
        if self._file is None:
            raise RuntimeError("StreamingWriter.write called outside its with-block")
        if self._next >= len(self.order) or self.order[self._next] != name:
            expected = self.order[self._next] if self._next < len(self.order) else "nothing"
            raise RuntimeError(f"wrote {name!r} out of order; expected {expected!r}")
        return self._specs[name]


class TensorSink:
    """Where one tensor's bytes go, in order: buffers, ranges of other files, zeros."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self.written = 0

    def write(self, data: memoryview | bytes) -> None:
        view = memoryview(data).cast("B")
        _write_all(self._fd, view)
        self.written += len(view)

    def write_views(self, views: list[memoryview]) -> None:
        """Append several byte ranges with one ``writev`` per batch (no joining copy)."""
        for start in range(0, len(views), _IOV_MAX):
            batch = views[start : start + _IOV_MAX]
            total = sum(len(v) for v in batch)
            done = os.writev(self._fd, batch)
            if done < total:  # a short write: finish the rest one range at a time
                _write_all(self._fd, memoryview(b"".join(batch))[done:])
            self.written += total

    def copy(self, src_fd: int, offset: int, length: int) -> None:
        """Append ``length`` bytes of another file, copied by the kernel (no Python buffer)."""
        copy_range(src_fd, self._fd, offset, length)
        self.written += length

    def zeros(self, length: int) -> None:
        block = bytes(min(length, BLOCK_BYTES))
        left = length
        while left:
            n = min(left, len(block))
            self.write(memoryview(block)[:n])
            left -= n


def _write_all(fd: int, view: memoryview) -> None:
    while len(view):
        view = view[os.write(fd, view) :]


# -- reading raw tensor bytes ----------------------------------------------------
@dataclass(frozen=True)
class StoredTensor:
    """Where a tensor's bytes are in a safetensors file."""

    dtype: str  # safetensors dtype name, e.g. "F16"
    shape: tuple[int, ...]
    offset: int  # absolute file offset of the first byte
    nbytes: int


def read_layout(path: Path) -> dict[str, StoredTensor]:
    """Name -> :class:`StoredTensor` from a safetensors header (no tensor data is read).

    Meant for files already opened once with ``safe_open``, which validates them;
    the checks here only guard against reading outside a tensor.
    """
    with open(path, "rb") as fh:
        (length,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(length))
        size = os.fstat(fh.fileno()).st_size
    base = 8 + length
    out: dict[str, StoredTensor] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        start, end = (int(x) for x in entry["data_offsets"])
        shape = tuple(int(d) for d in entry["shape"])
        numel = 1
        for dim in shape:
            numel *= dim
        if end - start != numel * ITEMSIZE[entry["dtype"]] or base + end > size:
            raise ValueError(f"{path.name}: tensor {name} has inconsistent data offsets")
        out[name] = StoredTensor(entry["dtype"], shape, base + start, end - start)
    return out


def pread_exact(fd: int, buffer: memoryview, offset: int) -> None:
    """Fill ``buffer`` from ``fd`` at ``offset`` (a short read is an error, not EOF data)."""
    view = buffer.cast("B")
    while len(view):
        n = os.preadv(fd, [view], offset)
        if n == 0:
            raise OSError(errno.EIO, "file ended before the tensor's last byte")
        view, offset = view[n:], offset + n


# errno values meaning "copy_file_range cannot do this pair of files"; fall back to read/write.
_NO_KERNEL_COPY = {
    errno.EXDEV,
    errno.ENOSYS,
    errno.EINVAL,
    errno.EOPNOTSUPP,
    errno.EPERM,
    errno.ETXTBSY,
}
_kernel_copy = hasattr(os, "copy_file_range")


def copy_range(src_fd: int, dst_fd: int, offset: int, length: int) -> None:
    """Append ``length`` bytes of ``src_fd`` at ``offset`` to ``dst_fd`` at its position.

    ``copy_file_range`` moves the bytes inside the kernel, like ``cp``: measured on
    the 1B bench shape, half the CPU of reading them into a buffer and writing
    them out. Where the kernel or filesystem cannot, a cache-sized buffer is used.
    """
    global _kernel_copy
    while length and _kernel_copy:
        try:
            n = os.copy_file_range(src_fd, dst_fd, length, offset)
        except OSError as exc:
            if exc.errno not in _NO_KERNEL_COPY:
                raise
            _kernel_copy = False
            break
        if n == 0:
            raise OSError(errno.EIO, "file ended before the tensor's last byte")
        offset, length = offset + n, length - n
    buffer = memoryview(bytearray(min(length, BLOCK_BYTES)))
    while length:
        n = min(length, len(buffer))
        pread_exact(src_fd, buffer[:n], offset)
        _write_all(dst_fd, buffer[:n])
        offset, length = offset + n, length - n


def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """The tensor's raw little-endian bytes, without a copy when already contiguous on CPU."""
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    if flat.numel() == 0:
        return memoryview(b"")
    array: Any = flat.view(torch.uint8).numpy()
    return memoryview(array).cast("B")
