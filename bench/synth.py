"""Synthetic Hugging Face Llama checkpoints of real shapes, written shard by shard.

The benchmark needs the byte volume and tensor layout of a real model, not its
values, so weights come from one random pool: each tensor is a slice of the
pool at a random offset. Only one tensor is ever in memory, so a 13.5 GB
checkpoint is written with a few hundred MB of RAM. A finished checkpoint
carries ``synth.json``; a later run whose shape and generator version match
reuses it instead of writing 13.5 GB again.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

GENERATOR_VERSION = 1
MARKER = "synth.json"
INDEX = "model.safetensors.index.json"
_POOL_ELEMENTS = 64 << 20  # 128 MiB of float16: larger than any single tensor's period matters


@dataclass(frozen=True)
class Shape:
    """The dimensions that decide a Llama checkpoint's tensors (names follow HF configs)."""

    name: str
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    vocab_size: int
    max_shard_bytes: int  # HF's save_pretrained max_shard_size, in bytes

    def tensors(self) -> Iterator[tuple[str, tuple[int, ...]]]:
        """HF tensor names and shapes, in the order save_pretrained writes them."""
        head = self.hidden_size // self.num_attention_heads
        kv_rows = self.num_key_value_heads * head
        yield "model.embed_tokens.weight", (self.vocab_size, self.hidden_size)
        for i in range(self.num_hidden_layers):
            p = f"model.layers.{i}."
            yield p + "self_attn.q_proj.weight", (self.hidden_size, self.hidden_size)
            yield p + "self_attn.k_proj.weight", (kv_rows, self.hidden_size)
            yield p + "self_attn.v_proj.weight", (kv_rows, self.hidden_size)
            yield p + "self_attn.o_proj.weight", (self.hidden_size, self.hidden_size)
            yield p + "mlp.gate_proj.weight", (self.intermediate_size, self.hidden_size)
            yield p + "mlp.up_proj.weight", (self.intermediate_size, self.hidden_size)
            yield p + "mlp.down_proj.weight", (self.hidden_size, self.intermediate_size)
            yield p + "input_layernorm.weight", (self.hidden_size,)
            yield p + "post_attention_layernorm.weight", (self.hidden_size,)
        yield "model.norm.weight", (self.hidden_size,)
        yield "lm_head.weight", (self.vocab_size, self.hidden_size)

    @property
    def nbytes(self) -> int:
        return sum(2 * _numel(shape) for _, shape in self.tensors())

    def hf_config(self) -> dict[str, object]:
        return {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "intermediate_size": self.intermediate_size,
            "vocab_size": self.vocab_size,
            "hidden_act": "silu",
            "max_position_embeddings": 4096,
            "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0,
            "tie_word_embeddings": False,
            "attention_bias": False,
            "mlp_bias": False,
            "torch_dtype": "float16",
            "bos_token_id": 1,
            "eos_token_id": 2,
        }


SHAPES: dict[str, Shape] = {
    # Llama-2-7b-hf: 6.74 B parameters, saved by HF as two shards (9.98 GB + 3.5 GB).
    "llama-7b": Shape("llama-7b", 4096, 32, 32, 32, 11008, 32000, max_shard_bytes=10_000_000_000),
    # TinyLlama-1.1B: grouped-query attention (4 KV heads), one 2.2 GB file.
    "llama-1b": Shape("llama-1b", 2048, 22, 32, 4, 5632, 32000, max_shard_bytes=5_000_000_000),
    # Llama-3-8B: 8.03 B parameters, grouped-query attention (8 KV heads), a 128256-token
    # vocabulary; HF saves it as four shards of at most 5 GB.
    "llama-8b": Shape("llama-8b", 4096, 32, 32, 8, 14336, 128256, max_shard_bytes=5_000_000_000),
}


def _numel(shape: tuple[int, ...]) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count


def plan_shards(shape: Shape) -> list[list[tuple[str, tuple[int, ...]]]]:
    """Group tensors into files like save_pretrained: start a new file when the next would overflow."""
    files: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    size = 0
    for name, dims in shape.tensors():
        nbytes = 2 * _numel(dims)
        if files[-1] and size + nbytes > shape.max_shard_bytes:
            files.append([])
            size = 0
        files[-1].append((name, dims))
        size += nbytes
    return files


def shard_name(index: int, count: int) -> str:
    return (
        "model.safetensors" if count == 1 else f"model-{index + 1:05d}-of-{count:05d}.safetensors"
    )


def is_complete(directory: Path, shape: Shape) -> bool:
    try:
        marker = json.loads((directory / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return marker == {"generator": GENERATOR_VERSION, "shape": asdict(shape)}


def ensure_checkpoint(directory: Path, shape: Shape, *, seed: int = 0) -> bool:
    """Write the checkpoint unless a complete one is there; True when it was written now."""
    if is_complete(directory, shape):
        return False
    if directory.exists():
        shutil.rmtree(directory)
    staging = directory.with_name(directory.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    _write(staging, shape, seed)
    staging.rename(directory)
    return True


def _write(directory: Path, shape: Shape, seed: int) -> None:
    import torch

    from trtllm_forge.checkpoint.safetensors_stream import StreamingWriter, TensorSpec

    gen = torch.Generator().manual_seed(seed)
    pool = (torch.randn(_POOL_ELEMENTS, generator=gen) * 0.02).to(torch.float16)
    files = plan_shards(shape)
    weight_map: dict[str, str] = {}
    for i, tensors in enumerate(files):
        fname = shard_name(i, len(files))
        specs = [TensorSpec(name, torch.float16, dims) for name, dims in tensors]
        with StreamingWriter(directory / fname, specs, metadata={"format": "pt"}) as writer:
            for name in writer.order:
                dims = dict(tensors)[name]
                writer.write(name, _from_pool(pool, dims, gen))
        weight_map.update({name: fname for name, _ in tensors})
    if len(files) > 1:
        index = {
            "metadata": {"total_size": shape.nbytes},
            "weight_map": dict(sorted(weight_map.items())),
        }
        (directory / INDEX).write_text(json.dumps(index, indent=2) + "\n")
    (directory / "config.json").write_text(json.dumps(shape.hf_config(), indent=2) + "\n")
    (directory / "generation_config.json").write_text(
        json.dumps({"bos_token_id": 1, "eos_token_id": 2}) + "\n"
    )
    marker = {"generator": GENERATOR_VERSION, "shape": asdict(shape)}
    (directory / MARKER).write_text(json.dumps(marker, indent=2) + "\n")


def _from_pool(pool: torch.Tensor, dims: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """A tensor of ``dims`` whose values are the pool read from a random offset (wrapping)."""
    import torch

    numel = _numel(dims)
    if len(dims) == 1:  # norm weights: close to one, as trained models have them
        return (1.0 + pool[:numel].float()).to(torch.float16)
    start = int(torch.randint(0, pool.numel(), (1,), generator=gen))
    pieces, need = [], numel
    while need:
        take = min(need, pool.numel() - start)
        pieces.append(pool[start : start + take])
        need -= take
        start = 0
    return torch.cat(pieces).reshape(dims)
