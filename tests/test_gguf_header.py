"""The bounded GGUF header reader: it agrees with the gguf package on real files,
and a malformed header is a source error naming the problem, read without
allocating what the header claims (2^62 tensors, a 2^40-byte key)."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from trtllm_forge.errors import ExitCode, ForgeError
from trtllm_forge.sources.gguf_header import read_header

ROOT = Path(__file__).resolve().parents[1]
SMOLLM2_GGUF = ROOT / "bench" / ".data" / "smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"


def write_small_gguf(path: Path, arch: str = "llama") -> Path:
    """A real GGUF (the gguf package's writer): metadata of each kind, three tensors."""
    import gguf

    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(2)
    writer.add_string("general.name", "small")
    writer.add_array("tokenizer.ggml.tokens", ["a", "bb", "ccc"])
    writer.add_array("tokenizer.ggml.scores", [0.0, -1.0, -2.0])
    writer.add_tensor("token_embd.weight", np.arange(96, dtype=np.float32).reshape(3, 32))
    writer.add_tensor("output_norm.weight", np.ones(32, dtype=np.float16))
    blocks = gguf.quants.quantize(
        np.ones((2, 64), dtype=np.float32), gguf.GGMLQuantizationType.Q8_0
    )
    writer.add_tensor("output.weight", blocks, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _agrees_with_the_gguf_package(path: Path) -> None:
    import gguf

    ours, theirs = read_header(path), gguf.GGUFReader(str(path))
    assert ours.data_offset == theirs.data_offset
    expected = {t.name: (t.data_offset, int(t.n_bytes)) for t in theirs.tensors}
    assert {t.name: (ours.data_offset + t.offset, t.nbytes) for t in ours.tensors} == expected


def test_header_agrees_with_the_gguf_package(tmp_path: Path) -> None:
    path = write_small_gguf(tmp_path / "small.gguf")
    _agrees_with_the_gguf_package(path)
    header = read_header(path)
    assert header.architecture == "llama" and header.version == 3
    assert header.metadata["general.name"] == "small"
    assert header.metadata["tokenizer.ggml.tokens"] == 3  # arrays: their length only


def test_real_smollm2_header_agrees(tmp_path: Path) -> None:
    if not SMOLLM2_GGUF.is_file():
        pytest.skip("real data absent: run `python -m bench.data` first")
    _agrees_with_the_gguf_package(SMOLLM2_GGUF)


def _u64(n: int) -> bytes:
    return struct.pack("<Q", n)


def _string(text: bytes) -> bytes:
    return _u64(len(text)) + text


HEAD = b"GGUF" + struct.pack("<I", 3)
# name -> (file bytes, fragment of the message)
MALFORMED: dict[str, tuple[bytes, str]] = {
    "garbage": (b"\x00garbage" * 3, "starts with"),
    "empty": (b"", "runs past the end"),
    "magic-only": (b"GGUF", "runs past the end"),
    "unknown-version": (
        b"GGUF" + struct.pack("<I", 99) + _u64(0) * 2,
        "unsupported GGUF version 99",
    ),
    "2^62-tensors": (HEAD + _u64(1 << 62) + _u64(0), "tensor count"),
    "more-tensors-than-bytes": (HEAD + _u64(1000) + _u64(0), "more bytes than the file has"),
    "2^62-metadata": (HEAD + _u64(0) + _u64(1 << 62), "metadata count"),
    "2^40-byte-key": (HEAD + _u64(0) + _u64(1) + _u64(1 << 40) + b"\0" * 8, "more than the limit"),
    "key-past-eof": (HEAD + _u64(0) + _u64(1) + _u64(100) + b"abcdefgh", "runs past the end"),
    "key-not-utf8": (HEAD + _u64(0) + _u64(1) + _string(b"\xff\xfe") + b"\0" * 12, "not UTF-8"),
    "unknown-value-type": (
        HEAD + _u64(0) + _u64(1) + _string(b"k") + struct.pack("<I", 77) + b"\0" * 8,
        "unknown value type 77",
    ),
    "2^60-item-array": (
        HEAD + _u64(0) + _u64(1) + _string(b"k") + struct.pack("<II", 9, 4) + _u64(1 << 60),
        "the length of 'k'",
    ),
    "nested-array": (
        HEAD + _u64(0) + _u64(1) + _string(b"k") + struct.pack("<II", 9, 9) + _u64(1) + b"\0" * 16,
        "unsupported item type 9",
    ),
    "duplicate-key": (
        HEAD + _u64(0) + _u64(2) + (_string(b"k") + struct.pack("<IB", 0, 1)) * 2,
        "appears twice",
    ),
    "bad-alignment": (
        HEAD + _u64(0) + _u64(1) + _string(b"general.alignment") + struct.pack("<II", 4, 3),
        "not a power of two",
    ),
}


def _tensor(name: bytes, dims: list[int], ggml_type: int, offset: int) -> bytes:
    info = _string(name) + struct.pack("<I", len(dims)) + b"".join(_u64(d) for d in dims)
    return info + struct.pack("<I", ggml_type) + _u64(offset)


def _one_tensor(info: bytes, data: int = 64) -> bytes:
    head = HEAD + _u64(1) + _u64(0) + info
    return head + b"\0" * (-len(head) % 32) + b"\0" * data


MALFORMED.update(
    {
        "tensor-past-eof": (_one_tensor(_tensor(b"t", [1 << 40], 0, 0)), "runs past the end"),
        "tensor-5-dims": (_one_tensor(_tensor(b"t", [1] * 5, 0, 0)), "5 dimensions"),
        "tensor-0-dims": (_one_tensor(_tensor(b"t", [], 0, 0)), "0 dimensions"),
        "tensor-unknown-type": (_one_tensor(_tensor(b"t", [4], 999, 0)), "unknown ggml type"),
        "tensor-misaligned": (_one_tensor(_tensor(b"t", [4], 0, 3)), "not aligned"),
        "tensor-partial-block": (_one_tensor(_tensor(b"t", [31], 8, 0)), "invalid shape"),
        "tensor-zero-dim": (_one_tensor(_tensor(b"t", [0, 4], 0, 0)), "invalid shape"),
        "tensor-huge-name": (_one_tensor(_u64(1 << 20) + b"x" * 64), "more than the limit"),
    }
)


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_header_is_a_source_error(tmp_path: Path, case: str) -> None:
    data, fragment = MALFORMED[case]
    path = tmp_path / "bad.gguf"
    path.write_bytes(data)
    with pytest.raises(ForgeError) as info:
        read_header(path)
    assert info.value.code == ExitCode.SOURCE, info.value
    assert "bad.gguf" in info.value.message and fragment in info.value.message, info.value.message


def test_truncated_real_file_is_a_source_error(tmp_path: Path) -> None:
    """Every cut of a real file inside its header or tensor data is refused."""
    path = write_small_gguf(tmp_path / "small.gguf")
    header, data = read_header(path), path.read_bytes()
    data_end = header.data_offset + max(t.offset + t.nbytes for t in header.tensors)
    cut = tmp_path / "cut.gguf"
    for end in [*range(0, header.data_offset, 7), data_end - 1]:
        cut.write_bytes(data[:end])
        with pytest.raises(ForgeError) as info:
            read_header(cut)
        assert info.value.code == ExitCode.SOURCE
