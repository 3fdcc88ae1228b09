"""Check a safetensors file's header against the file before trusting any offset in it.

A safetensors file is ``<u64 little-endian header length N><N bytes of JSON><data>``;
the JSON maps each tensor name to ``{"dtype", "shape", "data_offsets": [start,
end]}`` relative to the data section. A truncated download or a hostile file
can lie in every one of those fields. :func:`validate_safetensors` reads only
the header (never the data) and refuses, with a message naming the file and the
tensor, anything a reader would otherwise trip over later — or worse, trust:

- a header length that is absurd or runs past the end of the file;
- a header that is not UTF-8 JSON, not an object, or has malformed entries;
- unknown dtypes, negative or non-integer dims or offsets;
- ``end - start`` different from ``prod(shape) × dtype size``;
- offsets past the end of the data, overlapping tensors, or data not covered.

Pure standard library, so the check costs a ``read(8 + N)`` per file.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trtllm_forge.errors import ForgeError, source_error

# The safetensors reference reader refuses headers above 100 MB; so do we.
MAX_HEADER_BYTES = 100_000_000

# Bits per element of every dtype the safetensors format defines.
DTYPE_BITS: dict[str, int] = {
    "BOOL": 8,
    "U8": 8,
    "I8": 8,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E4M3FNUZ": 8,
    "F8_E5M2FNUZ": 8,
    "F8_E8M0": 8,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "C64": 64,
    "F64": 64,
    "I64": 64,
    "U64": 64,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
}
_HINT = "the file is truncated, corrupt or not a safetensors file; download the model again"


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]
    start: int  # byte offsets into the data section
    end: int


def validate_safetensors(path: Path) -> dict[str, TensorInfo]:
    """Tensor name → validated header entry.

    Raises:
        ForgeError: SOURCE (exit 5) naming the file and what is wrong with it.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            header_len, raw = _read_header(f, size, path.name)
    except OSError as exc:
        raise source_error(f"cannot read {path}: {exc.strerror}", hint=_HINT) from None
    header = _parse(raw, path.name)
    data_size = size - 8 - header_len
    tensors = {
        name: _entry(name, value, path.name)
        for name, value in header.items()
        if name != "__metadata__"
    }
    _check_metadata(header.get("__metadata__"), path.name)
    _check_layout(tensors, data_size, path.name)
    return tensors


def _fail(file: str, problem: str) -> ForgeError:
    return source_error(f"{file}: {problem}", hint=_HINT)


def _read_header(f: Any, size: int, file: str) -> tuple[int, bytes]:
    if size < 8:
        raise _fail(
            file, f"only {size} bytes long; a safetensors file starts with an 8-byte header length"
        )
    (header_len,) = struct.unpack("<Q", f.read(8))
    if header_len > MAX_HEADER_BYTES:
        raise _fail(
            file, f"header length {header_len} is larger than the {MAX_HEADER_BYTES}-byte limit"
        )
    if 8 + header_len > size:
        raise _fail(file, f"header length {header_len} runs past the end of the {size}-byte file")
    return header_len, f.read(header_len)


def _parse(raw: bytes, file: str) -> dict[str, Any]:
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except UnicodeDecodeError:
        raise _fail(file, "header is not UTF-8 text") from None
    except ValueError as exc:
        raise _fail(file, f"header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise _fail(file, f"header is a JSON {type(header).__name__}, not an object")
    return header


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _entry(name: str, value: Any, file: str) -> TensorInfo:
    if not isinstance(value, dict) or set(value) != {"dtype", "shape", "data_offsets"}:
        raise _fail(file, f"tensor {name!r}: entry must have exactly dtype, shape and data_offsets")
    dtype, shape, offsets = value["dtype"], value["shape"], value["data_offsets"]
    if dtype not in DTYPE_BITS:
        raise _fail(file, f"tensor {name!r} has unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        raise _fail(file, f"tensor {name!r} has an invalid shape {shape!r}")
    if not (
        isinstance(offsets, list)
        and len(offsets) == 2
        and all(_is_count(o) for o in offsets)
        and offsets[0] <= offsets[1]
    ):
        raise _fail(file, f"tensor {name!r} has invalid data_offsets {offsets!r}")
    numel = 1
    for dim in shape:
        numel *= dim  # Python ints: a lying shape cannot overflow the check
    bits = numel * DTYPE_BITS[dtype]
    if bits % 8 or offsets[1] - offsets[0] != bits // 8:
        raise _fail(
            file,
            f"tensor {name!r}: shape {shape} × {dtype} needs {bits / 8:g} bytes but "
            f"data_offsets {offsets} span {offsets[1] - offsets[0]}",
        )
    return TensorInfo(dtype, tuple(shape), offsets[0], offsets[1])


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_metadata(metadata: Any, file: str) -> None:
    if metadata is None:
        return
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise _fail(file, "__metadata__ must map strings to strings")


def _check_layout(tensors: dict[str, TensorInfo], data_size: int, file: str) -> None:
    end_of_previous, previous = 0, None
    for name, info in sorted(tensors.items(), key=lambda item: (item[1].start, item[1].end)):
        if info.end > data_size:
            raise _fail(
                file,
                f"tensor {name!r} ends at byte {info.end} of the data, past its end "
                f"({data_size} bytes): the file is truncated or its header lies",
            )
        if info.start < end_of_previous:
            raise _fail(file, f"tensors {previous!r} and {name!r} overlap")
        end_of_previous, previous = info.end, name
    if end_of_previous != data_size and tensors:
        raise _fail(
            file, f"{data_size - end_of_previous} bytes after the last tensor belong to none"
        )


__all__ = ["DTYPE_BITS", "MAX_HEADER_BYTES", "TensorInfo", "validate_safetensors"]
