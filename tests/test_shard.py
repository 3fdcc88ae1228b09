"""TP/PP sharding: per-rank shapes, exact re-assembly, and a tp-aware forward over the shards.

The re-assembly and the tp-aware forward below are written from docs/trtllm-checkpoint.md §3
independently of the sharder's tables, so they check its meaning, not its code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.tinymodels import make_tiny_hf
from trtllm_forge.checkpoint.convert import convert_hf_checkpoint
from trtllm_forge.checkpoint.forward import (
    CheckpointForward,
    apply_rope,
    causal_attention,
    rms_norm,
    rope_cos_sin,
    split_heads,
)
from trtllm_forge.checkpoint.io import CheckpointReader, read_config
from trtllm_forge.checkpoint.shard import shard_checkpoint
from trtllm_forge.errors import ExitCode, ForgeError

CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "llama": ("llama", {}),
    "qwen2": ("qwen2", {}),
    "mqa": ("llama", {"num_key_value_heads": 1}),
    "biases": ("llama", {"attention_bias": True, "mlp_bias": True}),
    "vocab250": ("llama", {"vocab_size": 250}),
    "layers3": ("qwen2", {"num_hidden_layers": 3, "tie_word_embeddings": True}),
}
LAYOUTS = [(2, 1), (1, 2), (2, 2), (4, 1), (1, 1)]


@pytest.fixture(scope="module")
def canonical(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("canonical")
    out = {}
    for name, (arch, kw) in CASES.items():
        src = make_tiny_hf(arch, root / f"hf_{name}", **kw)
        out[name] = root / name
        convert_hf_checkpoint(src, out[name], dtype="float32")
    return out


# ----------------------------------------------------------------------------- reassembly


def _heads(cfg: dict[str, Any]) -> tuple[int, int, int]:
    return cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_size"]


def _merge_qkv(parts: list[torch.Tensor], cfg: dict[str, Any], tp: int) -> torch.Tensor:
    heads, kv, size = _heads(cfg)
    kv_local = max(1, kv // tp)
    qs, ks, vs = [], [], []
    for rank, part in enumerate(parts):
        q, k, v = part.split([heads // tp * size, kv_local * size, kv_local * size])
        qs.append(q)
        replicas = max(1, tp // kv)  # ranks sharing one KV head
        if rank % replicas == 0:
            ks.append(k)
            vs.append(v)
        else:  # a replicated KV head must be an exact copy
            assert torch.equal(k, ks[-1]) and torch.equal(v, vs[-1])
    return torch.cat(qs + ks + vs)


def unshard(shard_dir: Path) -> dict[str, torch.Tensor]:
    """Rebuild the unsharded tensors from rank files, following docs/trtllm-checkpoint.md §3
    by hand."""
    cfg = read_config(shard_dir)
    tp, pp = cfg["mapping"]["tp_size"], cfg["mapping"]["pp_size"]
    starts = [int(ch[0]) for ch in torch.tensor_split(torch.arange(cfg["num_hidden_layers"]), pp)]
    out: dict[str, torch.Tensor] = {}
    with CheckpointReader(shard_dir) as reader:
        for pp_rank in range(pp):
            ranks = [pp_rank * tp + t for t in range(tp)]
            names = reader.names(ranks[0])
            assert all(reader.names(r) == names for r in ranks)
            for local in names:
                parts = [reader.get(local, r) for r in ranks]
                out[_global_name(local, starts[pp_rank])] = _merge(local, parts, cfg, tp)
    return out


def _global_name(local: str, start: int) -> str:
    bits = local.split(".")
    if bits[:2] == ["transformer", "layers"]:
        bits[2] = str(int(bits[2]) + start)
    return ".".join(bits)


def _merge(name: str, parts: list[torch.Tensor], cfg: dict[str, Any], tp: int) -> torch.Tensor:
    if ".attention.qkv." in name:
        return _merge_qkv(parts, cfg, tp)
    if name == "lm_head.weight":
        full = torch.cat(parts)
        vocab = cfg["vocab_size"]
        assert full.shape[0] == -(-vocab // tp) * tp
        assert not full[vocab:].any()  # padding rows are zeros
        return full[:vocab]
    if name.endswith(("mlp.fc.weight", "mlp.gate.weight", "mlp.fc.bias", "mlp.gate.bias")):
        return torch.cat(parts)
    if name.endswith(("attention.dense.weight", "mlp.proj.weight")):
        return torch.cat(parts, dim=1)
    for part in parts[1:]:  # norms, embeddings, row-parallel biases: replicated whole
        assert torch.equal(part, parts[0]), name
    return parts[0]


@pytest.mark.parametrize(("tp", "pp"), LAYOUTS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_reassembled_shards_equal_the_unsharded_checkpoint(
    case: str, tp: int, pp: int, canonical: dict[str, Path], tmp_path: Path
) -> None:
    summary = shard_checkpoint(canonical[case], tmp_path, tp=tp, pp=pp)
    assert summary["world_size"] == tp * pp
    assert summary["files"] == ["config.json"] + [f"rank{r}.safetensors" for r in range(tp * pp)]
    cfg = read_config(tmp_path)
    assert cfg["mapping"] == {"world_size": tp * pp, "tp_size": tp, "pp_size": pp}
    assert cfg["vocab_size"] == read_config(canonical[case])["vocab_size"]  # stays unpadded
    with CheckpointReader(canonical[case]) as reader:
        want = dict(reader.tensors())
    got = unshard(tmp_path)
    assert sorted(got) == sorted(want)
    for name, tensor in want.items():
        assert torch.equal(got[name], tensor), name


# ----------------------------------------------------------------------------- shapes


def test_rank_shapes_tp2_pp2(canonical: dict[str, Path], tmp_path: Path) -> None:
    shard_checkpoint(canonical["biases"], tmp_path, tp=2, pp=2)
    with CheckpointReader(tmp_path) as reader:
        first, last = reader.names(0), reader.names(2)
        assert "transformer.vocab_embedding.weight" in first and "lm_head.weight" not in first
        assert "lm_head.weight" in last and "transformer.ln_f.weight" in last
        assert "transformer.vocab_embedding.weight" not in last
        assert not any(".layers.1." in n for n in first + last)  # one local layer per stage
        expected = {
            "transformer.layers.0.attention.qkv.weight": (2 * 16 + 2 * 16, 64),
            "transformer.layers.0.attention.qkv.bias": (64,),
            "transformer.layers.0.attention.dense.weight": (64, 32),
            "transformer.layers.0.attention.dense.bias": (64,),  # row bias is NOT split
            "transformer.layers.0.mlp.fc.weight": (64, 64),
            "transformer.layers.0.mlp.gate.bias": (64,),
            "transformer.layers.0.mlp.proj.weight": (64, 64),
            "transformer.layers.0.mlp.proj.bias": (64,),
            "transformer.layers.0.input_layernorm.weight": (64,),
        }
        for rank in range(4):
            for name, shape in expected.items():
                assert reader.shape(name, rank) == shape, (rank, name)
        assert reader.shape("lm_head.weight", 3) == (128, 64)


def test_tp4_with_two_kv_heads_replicates_kv(canonical: dict[str, Path], tmp_path: Path) -> None:
    shard_checkpoint(canonical["llama"], tmp_path, tp=4, pp=1)
    cfg = read_config(tmp_path)
    assert cfg["num_key_value_heads"] == 2  # the original count, not the replicated one
    with CheckpointReader(canonical["llama"]) as reader:
        full = reader.get("transformer.layers.1.attention.qkv.weight")
    k_heads = full[64:96].split(16)
    with CheckpointReader(tmp_path) as reader:
        for rank in range(4):
            qkv = reader.get("transformer.layers.1.attention.qkv.weight", rank)
            assert qkv.shape == (48, 64)
            assert torch.equal(qkv[:16], full[rank * 16 : (rank + 1) * 16])
            assert torch.equal(qkv[16:32], k_heads[rank // 2])  # ranks 0,1 -> kv 0; 2,3 -> kv 1


def test_vocab_250_with_tp4_pads_lm_head(canonical: dict[str, Path], tmp_path: Path) -> None:
    shard_checkpoint(canonical["vocab250"], tmp_path, tp=4, pp=1)
    assert read_config(tmp_path)["vocab_size"] == 250
    with CheckpointReader(tmp_path) as reader:
        shapes = [reader.shape("lm_head.weight", r) for r in range(4)]
        assert shapes == [(63, 64)] * 4
        tail = reader.get("lm_head.weight", 3)
        assert not tail[-2:].any() and tail[:-2].abs().sum() > 0
        assert reader.shape("transformer.vocab_embedding.weight", 2) == (250, 64)


def test_uneven_layers_follow_tensor_split(canonical: dict[str, Path], tmp_path: Path) -> None:
    shard_checkpoint(canonical["layers3"], tmp_path, tp=1, pp=2)
    with CheckpointReader(tmp_path) as reader:
        layers = [{n.split(".")[2] for n in reader.names(r) if ".layers." in n} for r in (0, 1)]
        assert layers == [{"0", "1"}, {"0"}]  # global layers 0,1 | 2, renumbered from 0
        with CheckpointReader(canonical["layers3"]) as full:
            assert torch.equal(
                reader.get("transformer.layers.0.mlp.fc.weight", 1),
                full.get("transformer.layers.2.mlp.fc.weight"),
            )


# ----------------------------------------------------------------------------- numerics


def tp_pp_logits(shard_dir: Path, ids: torch.Tensor) -> torch.Tensor:
    """Run the model rank by rank: column outputs stay local, row outputs are summed."""
    cfg = read_config(shard_dir)
    tp, pp = cfg["mapping"]["tp_size"], cfg["mapping"]["pp_size"]
    heads, kv, size = _heads(cfg)
    eps = cfg["norm_epsilon"]
    window = cfg["forge"]["sliding_window"]
    cos, sin = rope_cos_sin(cfg, ids.shape[1])
    splits = torch.tensor_split(torch.arange(cfg["num_hidden_layers"]), pp)

    def lin(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        return x @ w.T + (0 if b is None else b)

    with CheckpointReader(shard_dir) as r:

        def get(name: str, rank: int) -> torch.Tensor | None:
            return r.get(name, rank).float() if r.has(name, rank) else None

        h = r.get("transformer.vocab_embedding.weight", 0).float()[ids]
        for pp_rank, layers in enumerate(splits):
            ranks = [pp_rank * tp + t for t in range(tp)]
            for local in range(len(layers)):
                p = f"transformer.layers.{local}."
                x = rms_norm(h, get(p + "input_layernorm.weight", ranks[0]), eps)
                partial = []
                for rank in ranks:
                    qkv = lin(
                        x,
                        get(p + "attention.qkv.weight", rank),
                        get(p + "attention.qkv.bias", rank),
                    )
                    hq, hk = heads // tp, max(1, kv // tp)
                    q, k, v = qkv.split([hq * size, hk * size, hk * size], dim=-1)
                    q = apply_rope(split_heads(q, hq, size), cos, sin)
                    k = apply_rope(split_heads(k, hk, size), cos, sin)
                    att = causal_attention(q, k, split_heads(v, hk, size), sliding_window=window)
                    partial.append(att @ get(p + "attention.dense.weight", rank).T)
                dense_bias = get(p + "attention.dense.bias", ranks[0])
                h = h + sum(partial) + (0 if dense_bias is None else dense_bias)
                x = rms_norm(h, get(p + "post_layernorm.weight", ranks[0]), eps)
                partial = []
                for rank in ranks:
                    fc = lin(x, get(p + "mlp.fc.weight", rank), get(p + "mlp.fc.bias", rank))
                    gate = lin(x, get(p + "mlp.gate.weight", rank), get(p + "mlp.gate.bias", rank))
                    act = torch.nn.functional.silu(fc) * gate
                    partial.append(act @ get(p + "mlp.proj.weight", rank).T)
                proj_bias = get(p + "mlp.proj.bias", ranks[0])
                h = h + sum(partial) + (0 if proj_bias is None else proj_bias)
        last = [(pp - 1) * tp + t for t in range(tp)]
        h = rms_norm(h, get("transformer.ln_f.weight", last[0]), eps)
        logits = torch.cat([h @ get("lm_head.weight", rank).T for rank in last], dim=-1)
    return logits[..., : cfg["vocab_size"]]


@pytest.mark.parametrize(("tp", "pp"), [(2, 1), (1, 2), (2, 2), (4, 1)])
@pytest.mark.parametrize("case", ["qwen2", "biases", "vocab250", "mqa", "layers3"])
def test_sharded_forward_equals_unsharded_forward(
    case: str, tp: int, pp: int, canonical: dict[str, Path], tmp_path: Path
) -> None:
    shard_checkpoint(canonical[case], tmp_path, tp=tp, pp=pp)
    ids = torch.randint(0, 250, (2, 12), generator=torch.Generator().manual_seed(3))
    want = CheckpointForward(canonical[case]).logits(ids)
    got = tp_pp_logits(tmp_path, ids)
    assert got.shape == want.shape
    assert float((got - want).abs().max() / want.abs().max()) < 1e-5


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("tp", "pp", "match"),
    [
        (3, 1, "num_attention_heads 4 is not divisible by tp 3"),
        (1, 3, "pp 3 is larger than the number of layers 2"),
        (0, 1, "tp and pp must be positive"),
        (8, 1, "num_attention_heads 4 is not divisible by tp 8"),
    ],
)
def test_impossible_layouts_are_recipe_errors(
    tp: int, pp: int, match: str, canonical: dict[str, Path], tmp_path: Path
) -> None:
    with pytest.raises(ForgeError, match=match) as err:
        shard_checkpoint(canonical["llama"], tmp_path, tp=tp, pp=pp)
    assert err.value.code == ExitCode.RECIPE
    assert not list(tmp_path.iterdir())  # checked before anything is written


def test_kv_heads_must_divide_or_be_divided(tmp_path: Path) -> None:
    src = make_tiny_hf(
        "llama",
        tmp_path / "hf",
        num_attention_heads=6,
        num_key_value_heads=3,
        hidden_size=48,
        intermediate_size=96,
    )
    convert_hf_checkpoint(src, tmp_path / "c", dtype="float32")
    with pytest.raises(ForgeError, match="num_key_value_heads 3 and tp 2"):
        shard_checkpoint(tmp_path / "c", tmp_path / "s", tp=2, pp=1)


def test_already_sharded_source_is_refused(canonical: dict[str, Path], tmp_path: Path) -> None:
    shard_checkpoint(canonical["llama"], tmp_path / "a", tp=2, pp=1)
    with pytest.raises(ForgeError, match="already sharded"):
        shard_checkpoint(tmp_path / "a", tmp_path / "b", tp=2, pp=1)


def test_unknown_tensor_is_named(canonical: dict[str, Path], tmp_path: Path) -> None:
    from safetensors.torch import save_file

    with CheckpointReader(canonical["llama"]) as reader:
        tensors = dict(reader.tensors())
    tensors["transformer.layers.0.attention.q_norm.weight"] = torch.ones(16)
    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_text(json.dumps(read_config(canonical["llama"])))
    save_file(tensors, str(src / "rank0.safetensors"))
    with pytest.raises(ForgeError, match=r"transformer\.layers\.0\.attention\.q_norm\.weight"):
        shard_checkpoint(src, tmp_path / "out", tp=2, pp=1)
