"""Sharding rules for quantized tensor kinds (docs/trtllm-checkpoint.md §2), on synthetic
checkpoints.

Each expectation is derived from *logical* tensors (unpacked int4 values, one
scale per group) and the head/column ownership of each rank, not from the
sharder's tables: rank r's shard is unpacked and compared with the logical
slice it must own.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from trtllm_forge.checkpoint.io import CheckpointReader
from trtllm_forge.checkpoint.shard import shard_checkpoint
from trtllm_forge.errors import ForgeError

HIDDEN, HEADS, KV, HEAD, INTER, VOCAB = 64, 4, 2, 16, 128, 256
QKV_OUT = (HEADS + 2 * KV) * HEAD
GROUP = 16


def _config(algo: str | None = "W4A16_AWQ") -> dict[str, Any]:
    return {
        "architecture": "LlamaForCausalLM",
        "dtype": "float16",
        "vocab_size": VOCAB,
        "hidden_size": HIDDEN,
        "num_hidden_layers": 1,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV,
        "head_size": HEAD,
        "intermediate_size": INTER,
        "mapping": {"world_size": 1, "tp_size": 1, "pp_size": 1},
        "quantization": {"quant_algo": algo, "group_size": GROUP},
    }


def _int4(rows: int, cols: int, seed: int) -> torch.Tensor:
    return torch.randint(-8, 8, (rows, cols), generator=torch.Generator().manual_seed(seed))


def pack_out_pairs(q: torch.Tensor) -> torch.Tensor:
    """AWQ layout: out rows 2k (low nibble) and 2k+1 (high nibble) share a byte -> [out/2, in]."""
    low, high = q[0::2] & 0xF, q[1::2] & 0xF
    return (low | (high << 4)).to(torch.uint8).view(torch.int8)


def unpack_out_pairs(packed: torch.Tensor) -> torch.Tensor:
    b = packed.view(torch.uint8).to(torch.int64)
    low, high = b & 0xF, b >> 4
    signed = lambda v: torch.where(v >= 8, v - 16, v)  # noqa: E731
    return torch.stack([signed(low), signed(high)], dim=1).reshape(-1, packed.shape[1])


def pack_in_pairs(q: torch.Tensor) -> torch.Tensor:
    """NVFP4 layout: inputs 2k (low) and 2k+1 (high) share a byte -> uint8 [out, in/2]."""
    return ((q[:, 0::2] & 0xF) | ((q[:, 1::2] & 0xF) << 4)).to(torch.uint8)


def qkv_rows(rank: int, tp: int) -> list[int]:
    """Logical QKV rows owned by a tp rank: its q heads, then its (possibly shared) kv head(s)."""
    q_heads = range(rank * HEADS // tp, (rank + 1) * HEADS // tp)
    kv_heads = [rank // (tp // KV)] if tp >= KV else range(rank * KV // tp, (rank + 1) * KV // tp)
    rows = [h * HEAD + j for h in q_heads for j in range(HEAD)]
    for base in (HEADS * HEAD, (HEADS + KV) * HEAD):
        rows += [base + h * HEAD + j for h in kv_heads for j in range(HEAD)]
    return rows


@pytest.fixture()
def logical() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {
        "qkv_q": _int4(QKV_OUT, HIDDEN, 1),
        "qkv_scale": torch.rand(QKV_OUT, HIDDEN // GROUP, generator=gen),
        "qkv_pre": torch.rand(HIDDEN, generator=gen),
        "dense_q": _int4(HIDDEN, HEADS * HEAD, 2),
        "dense_scale": torch.rand(HIDDEN, HEADS * HEAD // GROUP, generator=gen),
        "dense_pre": torch.rand(HEADS * HEAD, generator=gen),
        "dense_bias": torch.rand(HIDDEN, generator=gen),
        "fc_channel": torch.rand(INTER, generator=gen),
        "proj_channel": torch.rand(HIDDEN, generator=gen),
        "proj_pre": torch.rand(INTER, generator=gen),
        "proj_fp4": _int4(HIDDEN, INTER, 3),
        "gate_fp4": _int4(INTER, HIDDEN, 4),
    }


def _write(root: Path, tensors: dict[str, torch.Tensor], algo: str | None = "W4A16_AWQ") -> Path:
    root.mkdir()
    (root / "config.json").write_text(json.dumps(_config(algo)))
    save_file(tensors, str(root / "rank0.safetensors"))
    return root


def _checkpoint(root: Path, lg: dict[str, torch.Tensor]) -> Path:
    p = "transformer.layers.0."
    return _write(
        root,
        {
            # W4A16_AWQ column + row layer
            p + "attention.qkv.weight": pack_out_pairs(lg["qkv_q"]),
            p + "attention.qkv.weights_scaling_factor": lg["qkv_scale"].half(),
            p + "attention.qkv.prequant_scaling_factor": lg["qkv_pre"].half(),
            p + "attention.qkv.activation_scaling_factor": torch.tensor([0.5]),
            p + "attention.dense.weight": pack_out_pairs(lg["dense_q"]),
            p + "attention.dense.weights_scaling_factor": lg["dense_scale"].half(),
            p + "attention.dense.prequant_scaling_factor": lg["dense_pre"].half(),
            p + "attention.dense.bias": lg["dense_bias"].half(),
            p + "attention.kv_cache_scaling_factor": torch.tensor([2.0]),
            # per-channel scales (SmoothQuant-style) on a column and a row layer
            p + "mlp.fc.weights_scaling_factor": lg["fc_channel"],
            p + "mlp.proj.weights_scaling_factor": lg["proj_channel"],
            p + "mlp.proj.prequant_scaling_factor": lg["proj_pre"].half(),
            # NVFP4-style packing along the input axis, column and row
            p + "mlp.gate.weight": pack_in_pairs(lg["gate_fp4"]),
            p + "mlp.gate.weights_scaling_factor_2": torch.tensor(3.0),
            p + "mlp.proj.weight": pack_in_pairs(lg["proj_fp4"]),
        },
    )


@pytest.mark.parametrize("tp", [2, 4])
def test_quantized_tensor_kinds_split_per_reference(
    tp: int, logical: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    lg = logical
    src = _checkpoint(tmp_path / "src", lg)
    shard_checkpoint(src, tmp_path / "out", tp=tp, pp=1)
    p = "transformer.layers.0."
    in_cols = HEADS * HEAD // tp
    with CheckpointReader(tmp_path / "out") as r:
        for rank in range(tp):

            def get(name: str, rank: int = rank) -> torch.Tensor:
                return r.get(p + name, rank)

            rows = qkv_rows(rank, tp)
            cols = slice(rank * in_cols, (rank + 1) * in_cols)
            # column layer: packed out rows and group scales follow the rank's heads
            assert torch.equal(unpack_out_pairs(get("attention.qkv.weight")), lg["qkv_q"][rows])
            assert torch.equal(
                get("attention.qkv.weights_scaling_factor"), lg["qkv_scale"][rows].half()
            )
            assert torch.equal(get("attention.qkv.prequant_scaling_factor"), lg["qkv_pre"].half())
            assert torch.equal(get("attention.qkv.activation_scaling_factor"), torch.tensor([0.5]))
            # row layer: input columns split, whole groups; bias whole
            assert torch.equal(
                unpack_out_pairs(get("attention.dense.weight")), lg["dense_q"][:, cols]
            )
            group_cols = slice(rank * in_cols // GROUP, (rank + 1) * in_cols // GROUP)
            assert torch.equal(
                get("attention.dense.weights_scaling_factor"),
                lg["dense_scale"][:, group_cols].half(),
            )
            assert torch.equal(
                get("attention.dense.prequant_scaling_factor"), lg["dense_pre"][cols].half()
            )
            assert torch.equal(get("attention.dense.bias"), lg["dense_bias"].half())
            assert torch.equal(get("attention.kv_cache_scaling_factor"), torch.tensor([2.0]))
            # per-channel scales: split with the column layer, whole on the row layer
            inter = INTER // tp
            ffn = slice(rank * inter, (rank + 1) * inter)
            assert torch.equal(get("mlp.fc.weights_scaling_factor"), lg["fc_channel"][ffn])
            assert torch.equal(get("mlp.proj.weights_scaling_factor"), lg["proj_channel"])
            assert torch.equal(get("mlp.proj.prequant_scaling_factor"), lg["proj_pre"][ffn].half())
            # input-packed weights: column splits out rows, row splits packed input bytes
            assert torch.equal(get("mlp.gate.weight"), pack_in_pairs(lg["gate_fp4"][ffn]))
            assert torch.equal(get("mlp.proj.weight"), pack_in_pairs(lg["proj_fp4"][:, ffn]))
            assert torch.equal(get("mlp.gate.weights_scaling_factor_2"), torch.tensor(3.0))


def test_group_that_straddles_a_shard_boundary_is_refused(tmp_path: Path) -> None:
    """in/tp = 32 is not a multiple of a 64-wide group: no rank can own whole groups."""
    src = _write(
        tmp_path / "src",
        {"transformer.layers.0.attention.dense.weights_scaling_factor": torch.ones(HIDDEN, 1)},
    )
    with pytest.raises(
        ForgeError, match=r"attention\.dense\.weights_scaling_factor.*multiple of 64"
    ):
        shard_checkpoint(src, tmp_path / "out", tp=2, pp=1)


def test_kernel_layout_gptq_is_refused(tmp_path: Path) -> None:
    src = _write(
        tmp_path / "src",
        {"transformer.layers.0.mlp.fc.weight": torch.zeros(INTER, HIDDEN)},
        algo="W4A16_GPTQ",
    )
    with pytest.raises(ForgeError, match="kernel layout"):
        shard_checkpoint(src, tmp_path / "out", tp=2, pp=1)


def test_unknown_parameter_kind_is_named(tmp_path: Path) -> None:
    src = _write(tmp_path / "src", {"transformer.layers.0.mlp.fc.zero": torch.zeros(8, INTER)})
    with pytest.raises(ForgeError, match=r"mlp\.fc\.zero.*'zero'"):
        shard_checkpoint(src, tmp_path / "out", tp=2, pp=1)


# ----------------------------------------------------------------------------- real quant output


def _dequant(reader: CheckpointReader, module: str, rank: int, group: int | None) -> torch.Tensor:
    """Weight-only formats as the quant writer documents them: int8 [out,in] x scale [out],
    or int4 row pairs [out/2,in] x group scales [out, in/group]."""
    q = reader.get(f"{module}.weight", rank)
    scale = reader.get(f"{module}.weights_scaling_factor", rank).float()
    if group is None:
        return q.float() * scale[:, None]
    return unpack_out_pairs(q).float() * scale.repeat_interleave(group, dim=1)


@pytest.mark.parametrize(
    ("method", "params", "group", "tp"),
    [("int8_wo", {}, None, 2), ("int8_wo", {}, None, 4), ("int4_wo", {"group_size": 32}, 32, 2)],
)
def test_quantizer_output_shards_consistently(
    method: str, params: dict[str, Any], group: int | None, tp: int, tmp_path: Path
) -> None:
    """Each rank's dequantized weight is exactly its slice of the full dequantized weight."""
    from tests.tinymodels import make_tiny_hf
    from trtllm_forge.checkpoint.convert import convert_hf_checkpoint
    from trtllm_forge.quant.quantize import quantize_checkpoint

    hf = make_tiny_hf("llama", tmp_path / "hf")
    convert_hf_checkpoint(hf, tmp_path / "c", dtype="float16")
    quantize_checkpoint(
        hf_dir=hf,
        canonical_dir=tmp_path / "c",
        out_dir=tmp_path / "q",
        method=method,
        params=params,
    )
    shard_checkpoint(tmp_path / "q", tmp_path / "s", tp=tp, pp=1)
    p = "transformer.layers.1."
    with CheckpointReader(tmp_path / "q") as full, CheckpointReader(tmp_path / "s") as shards:
        for rank in range(tp):
            ffn = slice(rank * INTER // tp, (rank + 1) * INTER // tp)
            cols = slice(rank * HIDDEN // tp, (rank + 1) * HIDDEN // tp)
            expected = {
                "attention.qkv": _dequant(full, p + "attention.qkv", 0, group)[qkv_rows(rank, tp)],
                "attention.dense": _dequant(full, p + "attention.dense", 0, group)[:, cols],
                "mlp.fc": _dequant(full, p + "mlp.fc", 0, group)[ffn],
                "mlp.gate": _dequant(full, p + "mlp.gate", 0, group)[ffn],
                "mlp.proj": _dequant(full, p + "mlp.proj", 0, group)[:, ffn],
            }
            for module, want in expected.items():
                assert torch.equal(_dequant(shards, p + module, rank, group), want), (rank, module)


def test_quantizer_groups_too_wide_for_tp_are_refused(tmp_path: Path) -> None:
    """int4 groups of 32 cannot be split 4 ways over a 64-wide input."""
    from tests.tinymodels import make_tiny_hf
    from trtllm_forge.checkpoint.convert import convert_hf_checkpoint
    from trtllm_forge.quant.quantize import quantize_checkpoint

    hf = make_tiny_hf("llama", tmp_path / "hf")
    convert_hf_checkpoint(hf, tmp_path / "c", dtype="float16")
    quantize_checkpoint(
        hf_dir=hf,
        canonical_dir=tmp_path / "c",
        out_dir=tmp_path / "q",
        method="int4_wo",
        params={"group_size": 32},
    )
    with pytest.raises(ForgeError, match=r"weights_scaling_factor.*multiple of 32"):
        shard_checkpoint(tmp_path / "q", tmp_path / "s", tp=4, pp=1)
