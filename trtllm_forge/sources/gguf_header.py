"""A bounded reader of a GGUF file's header: metadata and tensor table, checked
against the file's own size before any library allocates from it.

The `gguf` package and transformers trust the header: a count of 2^62 tensors, a
2^40-byte key or a garbage file ends in a MemoryError, a ``struct.error`` or a hang,
reported as an internal error. Here every count and length is checked against
sanity limits and against the bytes left in the file before anything is read, so a
malformed file is a source error (exit 5) naming the file and the field, and only
a header that describes a file which could exist reaches the libraries.

Layout (https://github.com/ggml-org/ggml/blob/master/docs/gguf.md, versions 2 and 3):
magic ``GGUF``, u32 version, u64 tensor count, u64 metadata count; each metadata
entry is a string key, a u32 value type and the value; each tensor is a string
name, u32 dims, u64 per dim, u32 ggml type, u64 offset into the aligned data
section. Strings are a u64 length then UTF-8 bytes. All little-endian.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from trtllm_forge.errors import recipe_error, source_error

MAGIC = b"GGUF"
VERSIONS = (2, 3)  # what the gguf package and transformers read
MAX_TENSORS = 1 << 16  # the largest llama.cpp models hold a few thousand
MAX_METADATA = 1 << 16
MAX_KEY_BYTES = 1 << 16  # the spec caps keys at 65535 bytes
MAX_NAME_BYTES = 1 << 10  # ggml's own cap is 64
MAX_STRING_BYTES = 1 << 26  # a chat template or a merges entry; never near this
MAX_ARRAY_ITEMS = 1 << 24  # vocabularies hold a few hundred thousand
MAX_DIMS = 4  # GGML_MAX_DIMS
DEFAULT_ALIGNMENT = 32

# value type id -> struct format of a scalar (8: string, 9: array)
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?"}
_SCALARS.update({10: "<Q", 11: "<q", 12: "<d"})
_STRING, _ARRAY = 8, 9

# GGUF ``general.architecture`` -> the HF class forge converts it as. Only names that
# transformers' GGUF loader reads (its GGUF_CONFIG_MAPPING) and a forge family covers.
HF_ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "falcon": "FalconForCausalLM",
    "bloom": "BloomForCausalLM",
    "gpt2": "GPT2LMHeadModel",
    "gemma2": "Gemma2ForCausalLM",
}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    ggml_type: int
    offset: int  # from the start of the data section
    nbytes: int


@dataclass(frozen=True)
class GgufHeader:
    version: int
    metadata: dict[str, Any]  # arrays are kept as their length only (vocabularies are big)
    tensors: tuple[TensorInfo, ...] = field(default=())
    data_offset: int = 0  # where the aligned data section starts

    @property
    def architecture(self) -> str | None:
        value = self.metadata.get("general.architecture")
        return value if isinstance(value, str) else None


class _Malformed(Exception):
    """One header problem; read_header adds the file name and the hint."""


def read_header(path: Path) -> GgufHeader:
    """Parse and check ``path``'s header against its size.

    Raises:
        ForgeError: SOURCE naming the file and what is wrong with it.
    """
    try:
        with path.open("rb") as handle:
            size = path.stat().st_size
            return _Reader(handle, size).header()
    except _Malformed as exc:
        raise source_error(
            f"{path.name} is not a GGUF file forge can read: {exc}",
            hint="the file is damaged or truncated, or was not written by llama.cpp's "
            "converters; download or convert it again",
        ) from None
    except OSError as exc:
        raise source_error(
            f"cannot read GGUF file {path}: {exc.strerror or exc}", hint="check source.gguf"
        ) from None


def hf_architecture(header: GgufHeader, path: Path) -> str:
    """The HF class forge converts this GGUF as; an architecture forge cannot convert
    is a recipe problem (exit 2), found from the header before anything is dequantized."""
    arch = header.architecture
    if arch in HF_ARCHITECTURES:
        return HF_ARCHITECTURES[arch]
    raise recipe_error(
        f"{path.name}: GGUF architecture {arch!r} is not one forge can convert",
        hint=f"supported GGUF architectures: {', '.join(sorted(HF_ARCHITECTURES))}",
    )


class _Reader:
    """Reads forward through the header; never reads past ``size`` or a limit."""

    def __init__(self, handle: BinaryIO, size: int) -> None:
        self.handle = handle
        self.size = size
        self.pos = 0

    def header(self) -> GgufHeader:
        magic = self._take(4, "the magic number")
        if magic != MAGIC:
            raise _Malformed(f"it starts with {magic!r}, not b'GGUF'")
        version = self._scalar("<I", "the version")
        if version not in VERSIONS:
            raise _Malformed(f"unsupported GGUF version {version} (forge reads {VERSIONS})")
        tensors = self._count(MAX_TENSORS, "tensor count", item_bytes=8 + 4 + 8 + 4 + 8)
        entries = self._count(MAX_METADATA, "metadata count", item_bytes=8 + 4)
        metadata = self._metadata(entries)
        alignment = self._alignment(metadata)
        if tensors == 0:  # metadata alone is no model (and its data section lies past EOF)
            raise _Malformed("it holds no tensors")
        infos = [self._tensor_info(i) for i in range(tensors)]
        data_offset = -(-self.pos // alignment) * alignment
        return GgufHeader(
            version, metadata, self._placed(infos, alignment, data_offset), data_offset
        )

    # -- primitives ----------------------------------------------------------
    def _take(self, n: int, what: str) -> bytes:
        if n > self.size - self.pos:
            raise _Malformed(f"{what} runs past the end of the file (at byte {self.pos})")
        data = self.handle.read(n)
        if len(data) != n:  # the file shrank while being read
            raise _Malformed(f"{what} runs past the end of the file (at byte {self.pos})")
        self.pos += n
        return data

    def _skip(self, n: int, what: str) -> None:
        if n > self.size - self.pos:
            raise _Malformed(f"{what} runs past the end of the file (at byte {self.pos})")
        self.handle.seek(n, 1)
        self.pos += n

    def _scalar(self, fmt: str, what: str) -> Any:
        return struct.unpack(fmt, self._take(struct.calcsize(fmt), what))[0]

    def _count(self, limit: int, what: str, *, item_bytes: int) -> int:
        """A u64 count, within ``limit`` and within what the rest of the file can hold."""
        count = int(self._scalar("<Q", what))
        if count > limit:
            raise _Malformed(f"{what} {count} is larger than the limit {limit}")
        if count * item_bytes > self.size - self.pos:
            raise _Malformed(f"{what} {count} needs more bytes than the file has left")
        return count

    def _string(self, limit: int, what: str) -> str:
        length = int(self._scalar("<Q", f"{what} length"))
        if length > limit:
            raise _Malformed(f"{what} is {length} bytes long, more than the limit {limit}")
        try:
            return self._take(length, what).decode("utf-8")
        except UnicodeDecodeError:
            raise _Malformed(f"{what} is not UTF-8") from None

    # -- metadata ------------------------------------------------------------
    def _metadata(self, entries: int) -> dict[str, Any]:
        metadata: dict[str, Any] = {}
        for index in range(entries):
            key = self._string(MAX_KEY_BYTES, f"metadata key #{index}")
            if key in metadata:
                raise _Malformed(f"metadata key {key!r} appears twice")
            kind = self._scalar("<I", f"the type of {key!r}")
            metadata[key] = self._value(kind, key)
        return metadata

    def _value(self, kind: int, key: str) -> Any:
        if kind in _SCALARS:
            return self._scalar(_SCALARS[kind], f"the value of {key!r}")
        if kind == _STRING:
            return self._string(MAX_STRING_BYTES, f"the value of {key!r}")
        if kind == _ARRAY:
            return self._array(key)
        raise _Malformed(f"metadata {key!r} has unknown value type {kind}")

    def _array(self, key: str) -> int:
        """Skip an array's items (checking each string's length); return its length."""
        kind = self._scalar("<I", f"the item type of {key!r}")
        if kind in _SCALARS:
            width = struct.calcsize(_SCALARS[kind])
            count = self._count(MAX_ARRAY_ITEMS, f"the length of {key!r}", item_bytes=width)
            self._skip(count * width, f"the items of {key!r}")
            return count
        if kind == _STRING:
            count = self._count(MAX_ARRAY_ITEMS, f"the length of {key!r}", item_bytes=8)
            for _ in range(count):
                length = int(self._scalar("<Q", f"an item of {key!r}"))
                if length > MAX_STRING_BYTES:
                    raise _Malformed(f"an item of {key!r} is {length} bytes long")
                self._skip(length, f"an item of {key!r}")
            return count
        # Nested arrays appear in no model llama.cpp writes; refusing them bounds the work.
        raise _Malformed(f"metadata {key!r} is an array of unsupported item type {kind}")

    def _alignment(self, metadata: dict[str, Any]) -> int:
        value = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
        if (
            not isinstance(value, int)
            or isinstance(value, bool)
            or value <= 0
            or value & (value - 1)
        ):
            raise _Malformed(f"general.alignment {value!r} is not a power of two")
        if value > 1 << 16:
            raise _Malformed(f"general.alignment {value} is larger than {1 << 16}")
        return value

    # -- tensors -------------------------------------------------------------
    def _tensor_info(self, index: int) -> tuple[str, tuple[int, ...], int, int]:
        name = self._string(MAX_NAME_BYTES, f"tensor name #{index}")
        dims = self._scalar("<I", f"the dimension count of {name!r}")
        if not 1 <= dims <= MAX_DIMS:
            raise _Malformed(f"tensor {name!r} has {dims} dimensions (1 to {MAX_DIMS} allowed)")
        shape = tuple(int(self._scalar("<Q", f"a dimension of {name!r}")) for _ in range(dims))
        ggml_type = self._scalar("<I", f"the type of {name!r}")
        offset = self._scalar("<Q", f"the offset of {name!r}")
        return name, shape, ggml_type, offset

    def _placed(
        self, infos: list[tuple[str, tuple[int, ...], int, int]], alignment: int, data_offset: int
    ) -> tuple[TensorInfo, ...]:
        """Each tensor's bytes lie inside the file, aligned, and no name repeats."""
        sizes = _quant_sizes()
        seen: set[str] = set()
        out = []
        for name, shape, ggml_type, offset in infos:
            if name in seen:
                raise _Malformed(f"tensor {name!r} appears twice")
            seen.add(name)
            if ggml_type not in sizes:
                raise _Malformed(f"tensor {name!r} has unknown ggml type {ggml_type}")
            block, type_size = sizes[ggml_type]
            elements = 1
            for dim in shape:
                elements *= dim
            if elements == 0 or shape[0] % block:
                raise _Malformed(f"tensor {name!r} has an invalid shape {list(shape)}")
            nbytes = elements // block * type_size
            if offset % alignment:
                raise _Malformed(f"tensor {name!r} is not aligned to {alignment} bytes")
            if data_offset + offset + nbytes > self.size:
                raise _Malformed(
                    f"tensor {name!r} ({nbytes} bytes at {offset}) runs past the end of the file"
                )
            out.append(TensorInfo(name, shape, ggml_type, offset, nbytes))
        return tuple(out)


def _quant_sizes() -> dict[int, tuple[int, int]]:
    """ggml type id -> (block size in elements, block size in bytes), from the gguf package."""
    try:
        from gguf.constants import GGML_QUANT_SIZES
    except ImportError:  # the caller's own check names the missing package
        return {0: (1, 4), 1: (1, 2), 30: (1, 2)}  # F32, F16, BF16
    return {int(kind): (int(block), int(size)) for kind, (block, size) in GGML_QUANT_SIZES.items()}


__all__ = ["GgufHeader", "TensorInfo", "hf_architecture", "read_header"]
