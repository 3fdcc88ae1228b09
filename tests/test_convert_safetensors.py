"""The streaming safetensors writer and the checkpoint reader."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save_file

from trtllm_forge.checkpoint.io import CheckpointReader
from trtllm_forge.checkpoint.safetensors_stream import StreamingWriter, TensorSpec
from trtllm_forge.errors import ForgeError

_DTYPES = [
    torch.float32,
    torch.float16,
    torch.bfloat16,
    torch.int8,
    torch.uint8,
    torch.int32,
    torch.int64,
    torch.float8_e4m3fn,
    torch.bool,
    torch.float64,
]


def _stream(path: Path, tensors: dict[str, torch.Tensor], metadata: dict | None = None) -> None:
    specs = [TensorSpec(n, t.dtype, tuple(t.shape)) for n, t in tensors.items()]
    with StreamingWriter(path, specs, metadata=metadata) as writer:
        for name in writer.order:
            writer.write(name, tensors[name])


def _random(dtype: torch.dtype, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=gen).bool()
    if dtype.is_floating_point:
        return torch.randn(shape, generator=gen).to(dtype)
    return torch.randint(-100 if dtype.is_signed else 0, 100, shape, generator=gen).to(dtype)


@settings(max_examples=40, deadline=None)
@given(
    st.dictionaries(
        st.text("abcxyz._0123456789", min_size=1, max_size=12),
        st.tuples(
            st.sampled_from(range(len(_DTYPES))),
            st.lists(st.integers(0, 5), min_size=0, max_size=3),
        ),
        min_size=1,
        max_size=8,
    ),
    st.booleans(),
)
def test_bytes_identical_to_save_file(
    entries: dict[str, tuple[int, list[int]]], with_metadata: bool
) -> None:
    import tempfile

    tensors = {
        name: _random(_DTYPES[d], tuple(shape), seed)
        for seed, (name, (d, shape)) in enumerate(entries.items())
    }
    # One key only: the reference writer orders several metadata keys at random.
    metadata = {"format": "pt"} if with_metadata else None
    with tempfile.TemporaryDirectory() as tmp:
        ours, theirs = Path(tmp) / "ours", Path(tmp) / "theirs"
        _stream(ours, tensors, metadata)
        save_file(tensors, str(theirs), metadata=metadata)
        assert ours.read_bytes() == theirs.read_bytes()
        with safe_open(str(ours), framework="pt") as handle:
            for name, tensor in tensors.items():
                got = handle.get_tensor(name)
                assert got.dtype == tensor.dtype and got.shape == tensor.shape
                assert torch.equal(
                    got.reshape(-1).view(torch.uint8), tensor.reshape(-1).view(torch.uint8)
                )


def test_out_of_order_and_wrong_spec_are_refused(tmp_path: Path) -> None:
    specs = [TensorSpec("a", torch.float32, (2,)), TensorSpec("b", torch.float32, (3,))]
    with pytest.raises(RuntimeError, match="out of order"):
        with StreamingWriter(tmp_path / "x", specs) as writer:
            writer.write("b", torch.zeros(3))
    assert not (tmp_path / "x").exists()  # a failed write leaves no partial file
    with pytest.raises(RuntimeError, match=r"declared torch.float32 \(2,\)"):
        with StreamingWriter(tmp_path / "y", specs) as writer:
            writer.write("a", torch.zeros(2, dtype=torch.float16))
    with pytest.raises(RuntimeError, match="'b' was declared but not written"):
        with StreamingWriter(tmp_path / "z", specs) as writer:
            writer.write("a", torch.zeros(2))
    assert not (tmp_path / "z").exists()


def test_writer_accepts_non_contiguous_tensors(tmp_path: Path) -> None:
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    _stream(tmp_path / "t", {"t": base.T})
    with safe_open(str(tmp_path / "t"), framework="pt") as handle:
        assert torch.equal(handle.get_tensor("t"), base.T)


def test_reader_lazy_access_and_missing_rank(tmp_path: Path) -> None:
    config = {"architecture": "LlamaForCausalLM", "mapping": {"world_size": 2, "tp_size": 2}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    save_file({"w": torch.arange(6.0).reshape(2, 3)}, str(tmp_path / "rank0.safetensors"))
    with pytest.raises(ForgeError, match="rank1.safetensors is missing"):
        CheckpointReader(tmp_path)
    save_file({"w": torch.ones(2, 3)}, str(tmp_path / "rank1.safetensors"))
    with CheckpointReader(tmp_path) as reader:
        assert reader.world_size == 2
        assert reader.shape("w", rank=1) == (2, 3)
        assert torch.equal(reader.get_slice("w")[:, 1:2], torch.tensor([[1.0], [4.0]]))
        with pytest.raises(KeyError, match="nope not in rank0"):
            reader.get("nope")


def test_reader_rejects_a_dir_without_config(tmp_path: Path) -> None:
    with pytest.raises(ForgeError, match="config.json does not exist"):
        CheckpointReader(tmp_path)
