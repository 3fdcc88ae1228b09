"""The ONNX graphs themselves: checker, graph contract, collectives, weights, hooks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnx
import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.engine_support import random_prompts, tiny_checkpoint, tiny_engine
from trtllm_forge.engine.backends import BuildOptions, build_engine
from trtllm_forge.engine.onnx import OPSET
from trtllm_forge.engine.onnx.linear import LINEAR_LOWERINGS, dense_linear, register_linear_lowering
from trtllm_forge.engine.onnx.lower import lower_checkpoint
from trtllm_forge.engine.onnx.names import COLLECTIVE_DOMAIN
from trtllm_forge.engine.onnx.rope import rope_frequencies
from trtllm_forge.engine.runtime import load_engine
from trtllm_forge.errors import ExitCode, ForgeError


def _load(path: Path) -> onnx.ModelProto:
    return onnx.load(path, load_external_data=False)


def _io(values: list[onnx.ValueInfoProto]) -> dict[str, tuple[int, list[int | str]]]:
    return {
        v.name: (
            v.type.tensor_type.elem_type,
            [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim],
        )
        for v in values
    }


@pytest.fixture(scope="module")
def tp2pp2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Rank graphs of a tp=2 × pp=2 tiny Llama (4 layers, 1 kv head, odd vocab)."""
    root = tmp_path_factory.mktemp("tp2pp2")
    return tiny_engine(
        root, "llama", tp=2, pp=2, num_hidden_layers=4, num_key_value_heads=1, vocab_size=251
    ).engine


def test_every_rank_and_segment_passes_the_full_onnx_check(tp2pp2: Path) -> None:
    for rank in range(4):
        rank_dir = tp2pp2 / f"rank{rank}"
        onnx.checker.check_model(str(rank_dir / "model.onnx"), full_check=True)
        for segment in sorted(rank_dir.glob("segment_*.onnx")):
            onnx.checker.check_model(str(segment), full_check=True)


def test_graph_contract_per_pipeline_stage(tp2pp2: Path) -> None:
    first, last = _load(tp2pp2 / "rank0" / "model.onnx"), _load(tp2pp2 / "rank3" / "model.onnx")
    assert first.opset_import[0].version == OPSET >= 21
    f_in, f_out = _io(list(first.graph.input)), _io(list(first.graph.output))
    l_in, l_out = _io(list(last.graph.input)), _io(list(last.graph.output))
    i64, f32 = onnx.TensorProto.INT64, onnx.TensorProto.FLOAT
    assert f_in["input_ids"] == (i64, ["batch", "seq"])
    assert f_in["position_ids"] == (i64, ["batch", "seq"])
    assert f_in["attention_mask"] == (i64, ["batch", "total_seq"])
    assert f_in["past_key_values.0.key"] == (
        f32,
        ["batch", 1, "past_seq", 16],
    )  # 1 kv head per rank
    assert f_out["present.1.value"] == (f32, ["batch", 1, "total_seq", 16])
    assert f_out["hidden_states_out"] == (f32, ["batch", "seq", 64]) and "logits" not in f_out
    # The last stage takes hidden states, owns global layers 2..3 and returns unpadded logits.
    assert l_in["hidden_states_in"] == (f32, ["batch", "seq", 64]) and "input_ids" not in l_in
    assert {"past_key_values.2.key", "past_key_values.3.value"} <= set(l_in)
    assert l_out["logits"] == (f32, ["batch", "seq", 251])


def test_tp_collectives_are_explicit_custom_domain_nodes(tp2pp2: Path) -> None:
    graph = _load(tp2pp2 / "rank3" / "model.onnx").graph
    collectives = [n for n in graph.node if n.domain == COLLECTIVE_DOMAIN]
    kinds = [n.op_type for n in collectives]
    # Two all-reduces per layer (attention dense, mlp proj) and one all-gather of the logits.
    assert kinds.count("AllReduce") == 4 and kinds.count("AllGather") == 1
    for node in collectives:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert attrs["nb_rank"] == 2 and attrs["groups"] == [2, 3]
    meta = json.loads((tp2pp2 / "engine.json").read_text())
    schedule = meta["onnx"]["ranks"][3]["schedule"]
    assert [("segment" in s) for s in schedule] == [True, False] * 5 + [True]


def test_tp1_graph_has_no_collectives(tmp_path: Path) -> None:
    graph = _load(tiny_engine(tmp_path).engine / "rank0" / "model.onnx").graph
    assert not [n for n in graph.node if n.domain == COLLECTIVE_DOMAIN]


def test_weights_live_in_one_external_file_per_rank_shared_by_segments(tp2pp2: Path) -> None:
    rank_dir = tp2pp2 / "rank1"
    locations = set()
    for path in [rank_dir / "model.onnx", *rank_dir.glob("segment_*.onnx")]:
        for tensor in _load(path).graph.initializer:
            if tensor.data_location == onnx.TensorProto.EXTERNAL:
                locations.add({e.key: e.value for e in tensor.external_data}["location"])
            else:  # only small constants (shapes, scalars, rope frequencies) are inline
                assert len(tensor.raw_data) <= 64, tensor.name
    assert locations == {"model.onnx.data"}
    # Segments reference the weights by offset: the rank dir holds them once.
    weights = (rank_dir / "model.onnx.data").stat().st_size
    assert sum(p.stat().st_size for p in rank_dir.glob("segment_*.onnx")) < weights / 4


def test_lowering_refuses_a_tensor_it_does_not_use(tmp_path: Path) -> None:
    _, ckpt = tiny_checkpoint(tmp_path)
    broken = tmp_path / "extra"
    shutil.copytree(ckpt, broken)
    tensors = load_file(broken / "rank0.safetensors")
    tensors["transformer.layers.0.attention.kv_cache_scaling_factor"] = torch.ones(1)
    save_file(tensors, broken / "rank0.safetensors")
    with pytest.raises(ForgeError, match="kv_cache_scaling_factor") as err:
        lower_checkpoint(broken, tmp_path / "out")
    assert err.value.code == ExitCode.SOURCE


def _with_quant_algo(ckpt: Path, dest: Path, algo: str) -> Path:
    shutil.copytree(ckpt, dest)
    config = json.loads((dest / "config.json").read_text())
    config["quantization"]["quant_algo"] = algo
    (dest / "config.json").write_text(json.dumps(config))
    return dest


def test_unknown_quant_algo_is_a_recipe_error_naming_the_hook_table(tmp_path: Path) -> None:
    _, ckpt = tiny_checkpoint(tmp_path)
    quantized = _with_quant_algo(ckpt, tmp_path / "q", "NOT_AN_ALGO")
    with pytest.raises(ForgeError, match="no quant_algo 'NOT_AN_ALGO' lowering") as err:
        lower_checkpoint(quantized, tmp_path / "out")
    assert err.value.code == ExitCode.RECIPE


def test_linear_lowering_dispatches_through_the_hook_table(tmp_path: Path) -> None:
    _, ckpt = tiny_checkpoint(tmp_path)
    quantized = _with_quant_algo(ckpt, tmp_path / "q", "FORGE_TEST_ALGO")
    seen: list[str] = []

    def hook(ctx, site, x):  # type: ignore[no-untyped-def]
        seen.append(site.module)
        return dense_linear(ctx, site, x)

    register_linear_lowering("FORGE_TEST_ALGO", hook)
    try:
        lower_checkpoint(quantized, tmp_path / "out")
    finally:
        del LINEAR_LOWERINGS["FORGE_TEST_ALGO"]
    per_layer = ["attention.qkv", "attention.dense", "mlp.fc", "mlp.gate", "mlp.proj"]
    # lm_head is excluded by TRT-LLM's default exclude list, so it stays on the dense path.
    assert seen == [f"transformer.layers.{i}.{m}" for i in range(2) for m in per_layer]


def _shard_embedding(ckpt: Path, dest: Path, dim: int) -> Path:
    """A tp=2 checkpoint whose embedding is split like use_parallel_embedding
    (docs/trtllm-checkpoint.md §3.5)."""
    shutil.copytree(ckpt, dest)
    config = json.loads((dest / "config.json").read_text())
    config.update(use_parallel_embedding=True, embedding_sharding_dim=dim)
    (dest / "config.json").write_text(json.dumps(config))
    for rank in range(2):
        tensors = load_file(dest / f"rank{rank}.safetensors")
        table = tensors["transformer.vocab_embedding.weight"]
        if dim == 0:
            table = torch.nn.functional.pad(table, (0, 0, 0, -table.shape[0] % 2))
        tensors["transformer.vocab_embedding.weight"] = table.chunk(2, dim=dim)[rank].contiguous()
        save_file(tensors, dest / f"rank{rank}.safetensors")
    return dest


@pytest.mark.parametrize("dim", [0, 1])
def test_parallel_embedding_shards_give_the_same_tokens(tmp_path: Path, dim: int) -> None:
    _, ckpt = tiny_checkpoint(tmp_path, tp=2, vocab_size=251)
    plain = load_engine(tiny_engine(tmp_path, tp=2, vocab_size=251).engine)
    sharded = _shard_embedding(ckpt, tmp_path / f"emb{dim}", dim)
    build_engine("onnxruntime", sharded, tmp_path / f"engine-emb{dim}", BuildOptions())
    prompts = random_prompts(4, vocab=251)
    assert load_engine(tmp_path / f"engine-emb{dim}").generate(prompts, 8) == plain.generate(
        prompts, 8
    )


def test_yarn_frequencies_match_transformers() -> None:
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    scaling = {
        "rope_type": "yarn",
        "factor": 4.0,
        "original_max_position_embeddings": 32,
        "rope_theta": 10000.0,
    }
    config = LlamaConfig(
        hidden_size=64, num_attention_heads=4, max_position_embeddings=128, rope_parameters=scaling
    )
    expected, attention = ROPE_INIT_FUNCTIONS["yarn"](config, "cpu")
    rope = rope_frequencies(16, 10000.0, {**scaling, "type": "yarn"}, 128)
    assert torch.allclose(rope.inv_freq, expected, rtol=1e-6)
    assert rope.attention_factor == pytest.approx(attention)


def test_dynamic_rope_scaling_is_refused() -> None:
    with pytest.raises(ForgeError, match="dynamic") as err:
        rope_frequencies(16, 10000.0, {"type": "dynamic", "factor": 2.0}, 128)
    assert err.value.code == ExitCode.RECIPE
