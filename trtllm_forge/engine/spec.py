"""What a TensorRT-LLM checkpoint directory says to the engine: the model (refused unless
the lowering implements it) and the per-rank layout.

The lowering, the runtime and the inspectors all read a checkpoint through
:func:`read_checkpoint`. The config.json keys are known in one place,
checkpoint/config.py (:class:`ModelSpec`, docs/trtllm-checkpoint.md §1); the rank
numbering here (§4 there: r = pp_rank·tp + tp_rank).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trtllm_forge.checkpoint.config import (
    ModelSpec as ModelSpec,  # re-exported: engine code reads it here
)
from trtllm_forge.checkpoint.config import model_spec, read_config
from trtllm_forge.errors import ExitCode, ForgeError, recipe_error, source_error
from trtllm_forge.rules import pp_misfit, tp_misfit

SUPPORTED_ARCHITECTURES: tuple[str, ...] = (
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "Qwen2ForCausalLM",
    "GPTForCausalLM",  # GPT-2 (and GPTBigCode, as TensorRT-LLM names them)
    "GPTNeoXForCausalLM",
    "GPTJForCausalLM",
    "GemmaForCausalLM",
    "Gemma2ForCausalLM",
)
SUPPORTED_ARCHITECTURES += ("Qwen3ForCausalLM", "Phi3ForCausalLM", "Gemma3ForCausalLM")
SUPPORTED_ARCHITECTURES += ("MixtralForCausalLM", "Qwen3MoeForCausalLM", "Qwen2MoeForCausalLM")
SUPPORTED_ARCHITECTURES += ("FalconForCausalLM", "BloomForCausalLM", "MPTForCausalLM")  # families-B
SUPPORTED_ARCHITECTURES += ("ChatGLMForCausalLM", "BaichuanForCausalLM")  # native families
# Position encodings the lowering implements (families-A: learned_absolute, rope_gptj).
SUPPORTED_POSITION_EMBEDDINGS: tuple[str, ...] = ("rope_gpt_neox", "rope_gptj", "learned_absolute")
SUPPORTED_POSITION_EMBEDDINGS += ("alibi",)  # families-B: BLOOM, MPT
_LAYER_RE = re.compile(r"^transformer\.layers\.(\d+)\.")


@dataclass(frozen=True)
class RankLayout:
    """Where one rank sits in the TP×PP grid and which global layers it holds."""

    rank: int
    tp_rank: int
    pp_rank: int
    tp_size: int
    pp_size: int
    first_layer: int  # global index of the rank's local layer 0
    num_layers: int  # layers held by this rank

    @property
    def is_first_stage(self) -> bool:
        return self.pp_rank == 0

    @property
    def is_last_stage(self) -> bool:
        return self.pp_rank == self.pp_size - 1

    @property
    def layers(self) -> range:
        return range(self.first_layer, self.first_layer + self.num_layers)


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint dir: its raw config, the model spec and every rank's layout."""

    path: Path
    config: dict[str, Any]
    model: ModelSpec
    ranks: tuple[RankLayout, ...]

    @property
    def tp_size(self) -> int:
        return self.ranks[0].tp_size

    @property
    def pp_size(self) -> int:
        return self.ranks[0].pp_size

    def rank_file(self, rank: int) -> Path:
        return self.path / f"rank{rank}.safetensors"


def heads_per_rank(model: ModelSpec, tp_size: int) -> tuple[int, int]:
    """(query heads, kv heads) on one TP rank; kv heads are duplicated when tp > kv heads."""
    return model.num_heads // tp_size, max(1, math.ceil(model.num_kv_heads / tp_size))


def padded_vocab(model: ModelSpec, tp_size: int) -> int:
    """lm_head rows after padding the vocab to a multiple of tp
    (docs/trtllm-checkpoint.md §3.4)."""
    return math.ceil(model.vocab_size / tp_size) * tp_size


def parse_model_spec(config: dict[str, Any]) -> ModelSpec:
    """The checkpoint's model, refused unless the lowering implements its architecture
    and position embedding."""
    _supported(config)
    return model_spec(config)


def _supported(config: dict[str, Any]) -> tuple[str, str]:
    """The architecture and position embedding, refused unless the lowering has them."""
    arch = str(config.get("architecture", ""))
    if arch not in SUPPORTED_ARCHITECTURES:
        raise recipe_error(
            f"the engine lowering does not support architecture {arch!r}",
            hint=f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}",
        )
    rope = config.get("position_embedding_type", "rope_gpt_neox")
    if rope not in SUPPORTED_POSITION_EMBEDDINGS:
        raise recipe_error(
            f"position_embedding_type {rope!r} is not supported "
            f"(supported: {', '.join(SUPPORTED_POSITION_EMBEDDINGS)})"
        )
    return arch, str(rope)


def read_checkpoint(path: Path) -> Checkpoint:
    """Parse ``config.json`` and the rank files' tensor names of a checkpoint dir."""
    path = Path(path)
    config_path = path / "config.json"
    if not config_path.is_file():
        raise source_error(
            f"{path} is not a TensorRT-LLM checkpoint: config.json is missing",
            hint="pass the output directory of the convert or build stage",
        )
    config = read_config(path)  # invalid JSON: a damaged checkpoint (exit 6), not a crash
    model = parse_model_spec(config)
    tp, pp = _mapping(config)
    check_parallel(model, tp, pp)
    ranks = _rank_layouts(path, tp, pp, model.num_layers)
    return Checkpoint(path=path, config=config, model=model, ranks=ranks)


def _mapping(config: dict[str, Any]) -> tuple[int, int]:
    mapping = config.get("mapping") or {}
    tp = int(mapping.get("tp_size", 1))
    pp = int(mapping.get("pp_size", 1))
    world = int(mapping.get("world_size", tp * pp))
    if world != tp * pp:
        raise source_error(
            f"checkpoint mapping is inconsistent: world_size {world} != tp {tp} × pp {pp}"
        )
    return tp, pp


def check_parallel(model: ModelSpec, tp: int, pp: int) -> None:
    """The TP/PP rules (docs/trtllm-checkpoint.md §3.2, §3.6; rules.py) that a
    lowering depends on: the heads split, or a checkpoint written elsewhere is refused."""
    misfit = tp_misfit(tp, heads=model.num_heads, kv_heads=model.num_kv_heads) or pp_misfit(
        pp, layers=model.num_layers
    )
    if misfit:
        raise recipe_error(misfit.for_checkpoint(), hint="choose a tp/pp that divides the model")


def _rank_layouts(path: Path, tp: int, pp: int, total_layers: int) -> tuple[RankLayout, ...]:
    # Layer ranges come from the files themselves (local indices restart at 0 per PP rank),
    # so both the newer and the older TRT-LLM splitting rules read correctly.
    counts = [_count_layers(path / f"rank{stage * tp}.safetensors") for stage in range(pp)]
    if sum(counts) != total_layers:
        raise source_error(
            f"checkpoint rank files hold {sum(counts)} layers, config.json says {total_layers}",
            hint="the checkpoint is incomplete or was sharded with another config",
        )
    layouts = []
    for rank in range(tp * pp):
        stage = rank // tp
        layouts.append(
            RankLayout(
                rank=rank,
                tp_rank=rank % tp,
                pp_rank=stage,
                tp_size=tp,
                pp_size=pp,
                first_layer=sum(counts[:stage]),
                num_layers=counts[stage],
            )
        )
        if not (path / f"rank{rank}.safetensors").is_file():
            raise source_error(f"checkpoint rank file rank{rank}.safetensors is missing in {path}")
    return tuple(layouts)


def _count_layers(rank_file: Path) -> int:
    indices = {int(m.group(1)) for name in tensor_names(rank_file) if (m := _LAYER_RE.match(name))}
    if indices and indices != set(range(len(indices))):
        raise source_error(
            f"{rank_file.name}: layer indices are not 0..n-1 ({sorted(indices)[:8]}…)"
        )
    return len(indices)


def tensor_names(rank_file: Path) -> list[str]:
    """Tensor names in a safetensors file, from its header only."""
    return list(read_safetensors_header(rank_file))


def read_safetensors_header(rank_file: Path) -> dict[str, dict[str, Any]]:
    """name → {dtype, shape, data_offsets} without loading any tensor data."""
    if not rank_file.is_file():
        raise source_error(f"checkpoint rank file {rank_file} is missing")
    with rank_file.open("rb") as f:
        size = int.from_bytes(f.read(8), "little")
        if size <= 0 or size > 100 * 1024 * 1024:
            raise ForgeError(ExitCode.SOURCE, f"{rank_file} is not a safetensors file")
        header = json.loads(f.read(size))
    header.pop("__metadata__", None)
    return dict(header)
