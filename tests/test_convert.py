"""HF -> TensorRT-LLM conversion on real tiny transformers models.

Checks: every converted tensor equals its HF source(s) after the same cast,
the reference forward over the converted checkpoint reproduces transformers'
logits, config.json fields follow docs/trtllm-checkpoint.md §1, and broken sources fail with a
ForgeError that names the culprit.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from tests.tinymodels import make_tiny_hf
from trtllm_forge.checkpoint.convert import convert_hf_checkpoint
from trtllm_forge.checkpoint.forward import CheckpointForward
from trtllm_forge.checkpoint.io import CheckpointReader, read_config
from trtllm_forge.errors import ExitCode, ForgeError

LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 16,
}

# name -> (arch, config overrides)
CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "llama": ("llama", {}),
    "mistral": ("mistral", {}),
    "qwen2": ("qwen2", {}),
    "mha": ("llama", {"num_key_value_heads": 4}),
    "mqa": ("llama", {"num_key_value_heads": 1}),
    "tied": ("llama", {"tie_word_embeddings": True}),
    "qwen2_tied": ("qwen2", {"tie_word_embeddings": True, "num_key_value_heads": 1}),
    "rope_llama3": ("llama", {"rope_scaling": LLAMA3_ROPE, "rope_theta": 5000.0}),
    "rope_linear": ("llama", {"rope_scaling": {"rope_type": "linear", "factor": 2.0}}),
    "rope_dynamic": (
        "llama",
        {"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}, "max_position_embeddings": 8},
    ),
    "sliding_window": ("mistral", {"sliding_window": 4}),
    "biases": ("llama", {"attention_bias": True, "mlp_bias": True}),
    "head_dim": ("llama", {"head_dim": 8}),
    "bf16_source": ("qwen2", {"torch_dtype": "bfloat16"}),
}
DTYPES = ("float32", "float16", "bfloat16")


def _hf_tensors(src: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for path in sorted(src.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as handle:
            tensors.update({name: handle.get_tensor(name) for name in handle.keys()})
    return tensors


def _expected(hf: dict[str, torch.Tensor], layers: int, tied: bool) -> dict[str, torch.Tensor]:
    """The TRT-LLM tensors written out by hand from docs/trtllm-checkpoint.md §3.1
    (independent of the table)."""
    out = {
        "transformer.vocab_embedding.weight": hf["model.embed_tokens.weight"],
        "transformer.ln_f.weight": hf["model.norm.weight"],
        "lm_head.weight": hf["model.embed_tokens.weight" if tied else "lm_head.weight"],
    }
    for i in range(layers):
        p, t = f"model.layers.{i}.", f"transformer.layers.{i}."
        for kind in ("weight", "bias"):
            qkv = [hf.get(f"{p}self_attn.{x}_proj.{kind}") for x in "qkv"]
            if qkv[0] is not None:
                out[f"{t}attention.qkv.{kind}"] = torch.cat(qkv)  # type: ignore[arg-type]
            for dst, src in (
                ("attention.dense", "self_attn.o_proj"),
                ("mlp.fc", "mlp.gate_proj"),
                ("mlp.gate", "mlp.up_proj"),
                ("mlp.proj", "mlp.down_proj"),
            ):
                if f"{p}{src}.{kind}" in hf:
                    out[f"{t}{dst}.{kind}"] = hf[f"{p}{src}.{kind}"]
        out[f"{t}input_layernorm.weight"] = hf[f"{p}input_layernorm.weight"]
        out[f"{t}post_layernorm.weight"] = hf[f"{p}post_attention_layernorm.weight"]
    return out


@pytest.fixture(scope="module")
def tiny_sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf")
    return {name: make_tiny_hf(arch, root / name, **kw) for name, (arch, kw) in CASES.items()}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", sorted(CASES))
def test_converted_tensors_equal_hf_tensors(
    case: str, dtype: str, tiny_sources: dict[str, Path], tmp_path: Path
) -> None:
    src = tiny_sources[case]
    summary = convert_hf_checkpoint(src, tmp_path, dtype=dtype)
    hf_config = json.loads((src / "config.json").read_text())
    expected = _expected(_hf_tensors(src), 2, bool(hf_config.get("tie_word_embeddings")))
    torch_dtype = getattr(torch, dtype)
    with CheckpointReader(tmp_path) as reader:
        assert reader.names() == sorted(expected)
        for name, want in expected.items():
            got = reader.get(name)
            assert got.dtype == torch_dtype, name
            assert torch.equal(got, want.to(torch_dtype)), name
    assert summary["tensors"] == len(expected)
    assert summary["source_architecture"] == hf_config["architectures"][0]
    itemsize = torch.empty((), dtype=torch_dtype).element_size()
    assert summary["bytes"] == sum(t.numel() for t in expected.values()) * itemsize


@pytest.mark.parametrize("case", sorted(CASES))
def test_reference_forward_matches_transformers(
    case: str, tiny_sources: dict[str, Path], tmp_path: Path
) -> None:
    import transformers

    src = tiny_sources[case]
    convert_hf_checkpoint(src, tmp_path, dtype="float32")
    ids = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(7))
    model = transformers.AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    with torch.no_grad():
        want = model(ids).logits
    got = CheckpointForward(tmp_path).logits(ids)
    assert got.shape == want.shape == (2, 24, 256)
    assert float((got - want).abs().max() / want.abs().max()) < 1e-5


def test_sliding_window_changes_the_result(tiny_sources: dict[str, Path], tmp_path: Path) -> None:
    """Guards the sliding-window case above against being vacuous (24 tokens > window 4)."""
    convert_hf_checkpoint(tiny_sources["sliding_window"], tmp_path, dtype="float32")
    ids = torch.randint(0, 256, (1, 24), generator=torch.Generator().manual_seed(7))
    windowed = CheckpointForward(tmp_path).logits(ids)
    config = read_config(tmp_path)
    assert config["forge"]["sliding_window"] == 4
    config["forge"]["sliding_window"] = None
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert not torch.allclose(CheckpointForward(tmp_path).logits(ids), windowed, atol=1e-4)


def test_config_fields(tiny_sources: dict[str, Path], tmp_path: Path) -> None:
    convert_hf_checkpoint(tiny_sources["rope_llama3"], tmp_path / "l3", dtype="bfloat16")
    cfg = read_config(tmp_path / "l3")
    assert cfg["architecture"] == "LlamaForCausalLM"
    assert cfg["dtype"] == "bfloat16"
    assert cfg["rotary_base"] == 5000.0
    assert cfg["rotary_scaling"]["rope_type"] == "llama3"
    assert cfg["rotary_scaling"]["factor"] == 8.0
    assert "rope_theta" not in cfg["rotary_scaling"]
    assert cfg["position_embedding_type"] == "rope_gpt_neox"
    assert cfg["mapping"] == {"world_size": 1, "tp_size": 1, "pp_size": 1}
    assert cfg["quantization"]["quant_algo"] is None
    assert cfg["quantization"]["group_size"] == 128
    assert (cfg["head_size"], cfg["num_key_value_heads"], cfg["vocab_size"]) == (16, 2, 256)

    convert_hf_checkpoint(tiny_sources["qwen2"], tmp_path / "q", dtype="float16")
    qwen = read_config(tmp_path / "q")
    assert qwen["architecture"] == "Qwen2ForCausalLM"
    assert qwen["attn_bias"] is True and qwen["forge"]["dense_bias"] is False
    assert qwen["qwen_type"] == "qwen2"
    assert qwen["rotary_scaling"] is None  # HF "default" is dropped

    convert_hf_checkpoint(tiny_sources["head_dim"], tmp_path / "hd", dtype="float32")
    assert read_config(tmp_path / "hd")["head_size"] == 8


def test_sharded_hf_source_with_index(tiny_sources: dict[str, Path], tmp_path: Path) -> None:
    """A multi-file snapshot with model.safetensors.index.json converts like the single file."""
    src = tiny_sources["qwen2"]
    hf = _hf_tensors(src)
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    (sharded / "config.json").write_text((src / "config.json").read_text())
    names = sorted(hf)
    weight_map = {}
    for part in range(3):
        fname = f"model-0000{part + 1}-of-00003.safetensors"
        chunk = names[part::3]
        save_file({n: hf[n] for n in chunk}, str(sharded / fname))
        weight_map.update(dict.fromkeys(chunk, fname))
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    convert_hf_checkpoint(sharded, tmp_path / "a", dtype="float32")
    convert_hf_checkpoint(src, tmp_path / "b", dtype="float32")
    a = (tmp_path / "a" / "rank0.safetensors").read_bytes()
    assert a == (tmp_path / "b" / "rank0.safetensors").read_bytes()


def _rewrite(src: Path, dst: Path, edit: Any) -> Path:
    dst.mkdir()
    (dst / "config.json").write_text((src / "config.json").read_text())
    tensors = _hf_tensors(src)
    edit(tensors)
    save_file(tensors, str(dst / "model.safetensors"))
    return dst


def test_leftover_tensor_is_named(tiny_sources: dict[str, Path], tmp_path: Path) -> None:
    def add(t: dict[str, torch.Tensor]) -> None:
        t["model.layers.0.self_attn.q_norm.weight"] = torch.ones(16)

    src = _rewrite(tiny_sources["llama"], tmp_path / "src", add)
    with pytest.raises(ForgeError, match=r"model\.layers\.0\.self_attn\.q_norm\.weight") as err:
        convert_hf_checkpoint(src, tmp_path / "out", dtype="float32")
    assert err.value.code == ExitCode.SOURCE
    assert not (tmp_path / "out" / "rank0.safetensors").exists()


def test_missing_tensor_is_named(tiny_sources: dict[str, Path], tmp_path: Path) -> None:
    def drop(t: dict[str, torch.Tensor]) -> None:
        del t["model.layers.1.mlp.up_proj.weight"]

    src = _rewrite(tiny_sources["llama"], tmp_path / "src", drop)
    with pytest.raises(ForgeError, match=r"model\.layers\.1\.mlp\.up_proj\.weight") as err:
        convert_hf_checkpoint(src, tmp_path / "out", dtype="float32")
    assert err.value.code == ExitCode.SOURCE


def test_inv_freq_buffers_are_ignored(tiny_sources: dict[str, Path], tmp_path: Path) -> None:
    def add(t: dict[str, torch.Tensor]) -> None:
        t["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(8)

    src = _rewrite(tiny_sources["llama"], tmp_path / "src", add)
    assert convert_hf_checkpoint(src, tmp_path / "out", dtype="float32")["tensors"] == 17


def test_shape_mismatch_with_config_is_reported(
    tiny_sources: dict[str, Path], tmp_path: Path
) -> None:
    def shrink(t: dict[str, torch.Tensor]) -> None:
        t["model.layers.0.mlp.gate_proj.weight"] = t["model.layers.0.mlp.gate_proj.weight"][:64]

    src = _rewrite(tiny_sources["llama"], tmp_path / "src", shrink)
    with pytest.raises(ForgeError, match=r"transformer\.layers\.0\.mlp\.fc\.weight"):
        convert_hf_checkpoint(src, tmp_path / "out", dtype="float32")


def test_integer_source_tensor_is_rejected(tiny_sources: dict[str, Path], tmp_path: Path) -> None:
    def quantize(t: dict[str, torch.Tensor]) -> None:
        t["model.layers.0.mlp.down_proj.weight"] = torch.zeros(64, 128, dtype=torch.int8)

    src = _rewrite(tiny_sources["llama"], tmp_path / "src", quantize)
    with pytest.raises(ForgeError, match=r"down_proj\.weight has dtype I8"):
        convert_hf_checkpoint(src, tmp_path / "out", dtype="float32")


def test_unknown_architecture_lists_valid_names(
    tiny_sources: dict[str, Path], tmp_path: Path
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    config = json.loads((tiny_sources["llama"] / "config.json").read_text())
    config["architectures"] = ["RwkvForCausalLM"]  # GPTNeoX was the example until it landed
    (src / "config.json").write_text(json.dumps(config))
    with pytest.raises(ForgeError, match="LlamaForCausalLM, MistralForCausalLM") as err:
        convert_hf_checkpoint(src, tmp_path / "out", dtype="float32")
    assert "RwkvForCausalLM" in str(err.value)


def test_no_safetensors_is_a_source_error(tiny_sources: dict[str, Path], tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_text((tiny_sources["llama"] / "config.json").read_text())
    (src / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(ForgeError, match="no .safetensors") as err:
        convert_hf_checkpoint(src, tmp_path / "out", dtype="float32")
    assert err.value.code == ExitCode.SOURCE


def test_bad_dtype_is_a_recipe_error(tiny_sources: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ForgeError, match="float8") as err:
        convert_hf_checkpoint(tiny_sources["llama"], tmp_path, dtype="float8")
    assert err.value.code == ExitCode.RECIPE


def test_forward_hooks(tiny_sources: dict[str, Path], tmp_path: Path) -> None:
    convert_hf_checkpoint(tiny_sources["qwen2"], tmp_path, dtype="float32")
    ids = torch.randint(0, 256, (1, 10), generator=torch.Generator().manual_seed(5))
    plain = CheckpointForward(tmp_path).logits(ids)

    seen: list[str] = []
    kv_shapes: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = []

    def record(module: str, x: torch.Tensor) -> torch.Tensor:
        seen.append(module)
        return x

    def record_kv(layer: str, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, ...]:
        kv_shapes.append((layer, tuple(k.shape), tuple(v.shape)))
        return k, v

    hooked = CheckpointForward(tmp_path, activation_hook=record, kv_hook=record_kv).logits(ids)
    assert torch.equal(hooked, plain)
    per_layer = ["attention.qkv", "attention.dense", "mlp.fc", "mlp.gate", "mlp.proj"]
    assert sorted(seen) == sorted(
        [f"transformer.layers.{i}.{m}" for i in range(2) for m in per_layer] + ["lm_head"]
    )
    assert kv_shapes == [
        (f"transformer.layers.{i}", (1, 2, 10, 16), (1, 2, 10, 16)) for i in (0, 1)
    ]

    def zero_values(layer: str, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return k, torch.zeros_like(v)

    assert not torch.allclose(CheckpointForward(tmp_path, kv_hook=zero_values).logits(ids), plain)

    def provide(name: str) -> torch.Tensor | None:
        return torch.zeros(256, 64) if name == "lm_head.weight" else None

    zeroed = CheckpointForward(tmp_path, weight_provider=provide).logits(ids)
    assert not zeroed.any()
