"""The byte-streaming paths behind convert, shard and digests (added for speed).

Each fast path is checked against the straightforward one it replaced: the
tensor-level reference (``read_split``, ``torch`` casts), the kernel copy
against the buffered fallback, and many small blocks against one big block. Real tiny
models and real files throughout; blocks are made tiny so that every
multi-block branch runs.
"""

from __future__ import annotations

import os
from pathlib import Path

import blake3
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from tests.tinymodels import make_tiny_hf
from trtllm_forge.checkpoint import convert, shard
from trtllm_forge.checkpoint import safetensors_stream as stream
from trtllm_forge.checkpoint.convert import convert_hf_checkpoint
from trtllm_forge.checkpoint.io import CheckpointReader
from trtllm_forge.checkpoint.safetensors_stream import StreamingWriter, TensorSpec, read_layout
from trtllm_forge.checkpoint.shard import plan_shards, read_split, shard_checkpoint
from trtllm_forge.store import digest


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_hf("llama", tmp_path_factory.mktemp("hf") / "llama", vocab_size=250)


def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_block_wise_cast_equals_torch_cast(
    tiny_hf: Path, tmp_path: Path, dtype: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        convert, "CAST_BLOCK_BYTES", 100
    )  # a few rows per block, many blocks per tensor
    convert_hf_checkpoint(tiny_hf, tmp_path / "small", dtype=dtype)
    target = getattr(torch, dtype)
    with (
        CheckpointReader(tmp_path / "small") as ours,
        safe_open(str(tiny_hf / "model.safetensors"), framework="pt") as hf,
    ):
        embed = hf.get_tensor("model.embed_tokens.weight").to(target)
        assert torch.equal(ours.get("transformer.vocab_embedding.weight"), embed)
        q, k, v = (
            hf.get_tensor(f"model.layers.1.self_attn.{n}_proj.weight").to(target) for n in "qkv"
        )
        assert torch.equal(
            ours.get("transformer.layers.1.attention.qkv.weight"), torch.cat([q, k, v])
        )
    monkeypatch.setattr(convert, "CAST_BLOCK_BYTES", 1 << 30)
    convert_hf_checkpoint(tiny_hf, tmp_path / "big", dtype=dtype)
    assert _files(tmp_path / "small") == _files(tmp_path / "big")


def test_buffered_fallback_equals_kernel_copy(
    tiny_hf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    convert_hf_checkpoint(tiny_hf, tmp_path / "kernel", dtype="float32")  # same dtype: all copies
    shard_checkpoint(tmp_path / "kernel", tmp_path / "kernel_tp2", tp=2, pp=1)
    monkeypatch.setattr(stream, "_kernel_copy", False)
    monkeypatch.setattr(stream, "BLOCK_BYTES", 64)
    convert_hf_checkpoint(tiny_hf, tmp_path / "buffered", dtype="float32")
    shard_checkpoint(tmp_path / "buffered", tmp_path / "buffered_tp2", tp=2, pp=1)
    assert _files(tmp_path / "kernel") == _files(tmp_path / "buffered")
    assert _files(tmp_path / "kernel_tp2") == _files(tmp_path / "buffered_tp2")


@pytest.mark.parametrize(("tp", "pp"), [(2, 1), (4, 1), (2, 2)])
def test_streamed_shards_equal_read_split(
    tiny_hf: Path, tmp_path: Path, tp: int, pp: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    convert_hf_checkpoint(tiny_hf, tmp_path / "ckpt", dtype="float16")
    monkeypatch.setattr(shard, "BLOCK_BYTES", 200)  # row-parallel weights span many row blocks
    shard_checkpoint(tmp_path / "ckpt", tmp_path / "out", tp=tp, pp=pp)
    with CheckpointReader(tmp_path / "ckpt") as src, CheckpointReader(tmp_path / "out") as out:
        shapes = {name: src.shape(name) for name in src.names()}
        for rank, local in plan_shards(src.config, shapes, tp=tp, pp=pp).items():
            assert out.names(rank) == sorted(local)
            for name, split in local.items():
                assert torch.equal(out.get(name, rank), read_split(src, split)), (rank, name)


def test_strided_split_of_a_3d_tensor_with_padding(tmp_path: Path) -> None:
    source = torch.arange(2 * 5 * 3, dtype=torch.int16).reshape(2, 5, 3)
    save_file({"t": source}, str(tmp_path / "src.safetensors"))
    splits = [
        shard.Split("t", (2, 4, 3), 1, ((0, 2), (4, 5)), 1),
        shard.Split("t", (2, 2, 3), 1, ((2, 4),), 0),
    ]
    specs = [TensorSpec("t", torch.int16, s.shape) for s in splits]
    with open(tmp_path / "src.safetensors", "rb") as src:
        layout = read_layout(tmp_path / "src.safetensors")
        paths = [tmp_path / f"out{i}.safetensors" for i in range(2)]
        with StreamingWriter(paths[0], specs[:1]) as w0, StreamingWriter(paths[1], specs[1:]) as w1:
            with w0.tensor("t") as s0, w1.tensor("t") as s1:
                shard._fill(src.fileno(), layout, [(splits[0], s0), (splits[1], s1)])
    expected = [
        torch.cat([source[:, 0:2], source[:, 4:5], torch.zeros(2, 1, 3, dtype=torch.int16)], dim=1),
        source[:, 2:4],
    ]
    for path, want in zip(paths, expected, strict=True):
        with safe_open(str(path), framework="pt") as fh:
            assert torch.equal(fh.get_tensor("t"), want)


def test_raw_tensor_must_match_its_declared_size(tmp_path: Path) -> None:
    specs = [TensorSpec("a", torch.float32, (4,))]
    with pytest.raises(RuntimeError, match="wrote 12 bytes, declared 16"):
        with StreamingWriter(tmp_path / "x", specs) as writer, writer.tensor("a") as sink:
            sink.write(bytes(12))
    assert not (tmp_path / "x").exists()
    with StreamingWriter(tmp_path / "y", specs) as writer, writer.tensor("a") as sink:
        sink.zeros(16)
    with safe_open(str(tmp_path / "y"), framework="pt") as fh:
        assert torch.equal(fh.get_tensor("a"), torch.zeros(4))


def test_read_layout_refuses_offsets_outside_the_file(tmp_path: Path) -> None:
    save_file({"a": torch.ones(8)}, str(tmp_path / "t.safetensors"))
    data = (tmp_path / "t.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[:-4])
    assert read_layout(tmp_path / "t.safetensors")["a"].nbytes == 32
    with pytest.raises(ValueError, match="inconsistent data offsets"):
        read_layout(tmp_path / "cut.safetensors")


@pytest.mark.parametrize("size", [0, 1, 63, 64, 65, 1000])
def test_block_digest_equals_one_shot_blake3(
    tmp_path: Path, size: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(digest, "_CHUNK", 64)
    data = os.urandom(size)
    (tmp_path / "f").write_bytes(data)
    assert digest.digest_file(tmp_path / "f") == f"blake3:{blake3.blake3(data).hexdigest()}"
