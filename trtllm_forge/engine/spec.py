"""What a TensorRT-LLM checkpoint directory says: the model and the per-rank layout.

The lowering, the runtime and the inspectors all read a checkpoint through
:func:`read_checkpoint`, so there is one place that knows the config.json keys
(docs/trtllm-checkpoint.md §1) and the rank numbering (§4 there: r = pp_rank·tp + tp_rank).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trtllm_forge.errors import ExitCode, ForgeError, recipe_error, source_error

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
class ModelSpec:
    """The model-level facts of a Llama-family checkpoint (all sizes are global, not per rank)."""

    architecture: str
    dtype: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_size: int
    intermediate_size: int
    norm_epsilon: float
    rotary_base: float
    rotary_scaling: dict[str, Any] | None
    max_position_embeddings: int | None
    hidden_act: str
    attn_bias: bool
    mlp_bias: bool
    use_parallel_embedding: bool
    embedding_sharding_dim: int
    quantization: dict[str, Any]
    sliding_window: int | None = None  # Mistral-style local attention (forge extra)
    # Decoder variants (flags written by models/gpt_common.py; defaults = Llama).
    position_embedding_type: str = "rope_gpt_neox"
    rotary_dim: int | None = None  # channels of a head that rope rotates; None = all
    norm_type: str = "rmsnorm"  # or "layernorm" (weight + bias)
    mlp_type: str = "gated"  # or "plain": proj(act(fc(x)))
    parallel_residual: bool = False  # h + attn(ln1 h) + mlp(ln2 h), NeoX / GPT-J
    embedding_multiplier: float = 1.0  # token embedding scale (Gemma: sqrt(hidden))
    alibi_bias_max: float = 8.0  # ALiBi slope exponent cap (MPT's alibi_bias_max; BLOOM 8)
    # Gemma 2 (TRT-LLM keys): q·k scale query_pre_attn_scalar**-0.5, tanh soft-caps on the
    # attention scores and the logits, sandwich norms around both branches; the window
    # applies only to sliding_window_layers (global indices) when that is set.
    query_pre_attn_scalar: float | None = None
    attn_logit_softcapping: float | None = None
    final_logit_softcapping: float | None = None
    inter_layernorms: bool = False
    sliding_window_layers: tuple[int, ...] | None = None
    # Qwen3 / Gemma 3: each query and key head is RMS-normalized (attention.q_layernorm,
    # attention.k_layernorm, [head_size]) before rope.
    qk_layernorm: bool = False
    # Gemma 3: the sliding-window layers' rope base (unscaled); None = one rope for all.
    rope_local_base_freq: float | None = None
    # Mixture of experts (TensorRT-LLM's moe block): experts per layer, experts per
    # token; 0 = a dense MLP.
    moe_num_experts: int = 0
    moe_top_k: int = 0
    moe_renormalize: bool = True  # top-k weights rescaled to sum to 1 (normalization_mode 1)
    # Qwen2-MoE: a shared expert of this intermediate size, gated by sigmoid(x · g); 0 = none.
    moe_shared_intermediate: int = 0

    @property
    def attention_scale(self) -> float:
        return 1.0 / math.sqrt(float(self.query_pre_attn_scalar or self.head_size))

    def layer_window(self, layer: int) -> int | None:
        """Sliding window of global layer ``layer`` (None: full attention)."""
        listed = self.sliding_window_layers
        return None if listed is not None and layer not in listed else self.sliding_window

    @property
    def quant_algo(self) -> str | None:
        algo = self.quantization.get("quant_algo")
        return None if algo in (None, "NO_QUANT") else str(algo)

    @property
    def kv_cache_quant_algo(self) -> str | None:
        algo = self.quantization.get("kv_cache_quant_algo")
        return None if algo is None else str(algo)


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


def read_checkpoint(path: Path) -> Checkpoint:
    """Parse ``config.json`` and the rank files' tensor names of a checkpoint dir."""
    path = Path(path)
    config_path = path / "config.json"
    if not config_path.is_file():
        raise source_error(
            f"{path} is not a TensorRT-LLM checkpoint: config.json is missing",
            hint="pass the output directory of the convert or build stage",
        )
    config = json.loads(config_path.read_text())
    model = parse_model_spec(config)
    tp, pp = _mapping(config)
    check_parallel(model, tp, pp)
    ranks = _rank_layouts(path, tp, pp, model.num_layers)
    return Checkpoint(path=path, config=config, model=model, ranks=ranks)


def parse_model_spec(config: dict[str, Any]) -> ModelSpec:
    """Read the model fields of a TensorRT-LLM config.json (docs/trtllm-checkpoint.md §1)."""
    arch, rope = _supported(config)
    hidden = int(config["hidden_size"])
    heads = int(config["num_attention_heads"])
    forge = config.get("forge") or {}
    head_size = int(config.get("head_size") or forge.get("head_dim") or hidden // heads)
    return ModelSpec(
        architecture=arch,
        dtype=str(config.get("dtype", "float32")),
        vocab_size=int(config["vocab_size"]),
        hidden_size=hidden,
        num_layers=int(config["num_hidden_layers"]),
        num_heads=heads,
        num_kv_heads=int(config.get("num_key_value_heads") or heads),
        head_size=head_size,
        intermediate_size=int(config.get("intermediate_size") or 4 * hidden),
        norm_epsilon=float(config.get("norm_epsilon", 1e-5)),
        rotary_base=float(config.get("rotary_base", 10000.0)),
        rotary_scaling=_rotary_scaling(config.get("rotary_scaling")),
        max_position_embeddings=config.get("max_position_embeddings"),
        hidden_act=str(config.get("hidden_act", "silu")),
        attn_bias=bool(config.get("attn_bias", False)),
        mlp_bias=bool(config.get("mlp_bias", False)),
        use_parallel_embedding=bool(config.get("use_parallel_embedding", False)),
        embedding_sharding_dim=int(config.get("embedding_sharding_dim", 0)),
        quantization=dict(config.get("quantization") or {}),
        position_embedding_type=rope,
        rotary_dim=_rotary_dim(config, head_size),
        embedding_multiplier=float(config.get("embedding_multiplier") or 1.0),
        alibi_bias_max=float(config.get("alibi_bias_max") or 8.0),
        query_pre_attn_scalar=_optional_float(config.get("query_pre_attn_scalar")),
        attn_logit_softcapping=_optional_float(config.get("attn_logit_softcapping")),
        final_logit_softcapping=_optional_float(config.get("final_logit_softcapping")),
        inter_layernorms=bool(config.get("inter_layernorms", False)),
        rope_local_base_freq=_optional_float(config.get("rope_local_base_freq")),
        **_forge_fields(forge),
        **_moe_fields(config.get("moe") or {}),
    )


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


def _rotary_dim(config: dict[str, Any], head_size: int) -> int | None:
    """Partial rotary (GPT-J, GPT-NeoX): an even number of channels within a head."""
    rotary_dim = config.get("rotary_embedding_dim")
    if rotary_dim is None:
        return None
    if not (0 < int(rotary_dim) <= head_size and int(rotary_dim) % 2 == 0):
        raise recipe_error(
            f"rotary_embedding_dim {rotary_dim} must be even and <= head_size {head_size}"
        )
    return int(rotary_dim)


def _forge_fields(forge: dict[str, Any]) -> dict[str, Any]:
    """What forge's own ``forge`` block adds: the decoder layout TensorRT-LLM infers from
    the architecture name, which the lowering needs spelled out."""
    sliding = forge.get("sliding_window")
    return {
        "sliding_window": int(sliding) if sliding else None,
        "norm_type": str(forge.get("norm_type", "rmsnorm")),
        "mlp_type": str(forge.get("mlp_type", "gated")),
        "parallel_residual": bool(forge.get("parallel_residual", False)),
        "sliding_window_layers": _optional_layers(forge.get("sliding_window_layers")),
        "qk_layernorm": bool(forge.get("qk_layernorm", False)),
    }


def _moe_fields(moe: dict[str, Any]) -> dict[str, Any]:
    """The ``moe`` block of a mixture-of-experts model (zeros: a dense model)."""
    return {
        "moe_num_experts": int(moe.get("num_experts") or 0),
        "moe_top_k": int(moe.get("top_k") or 0),
        "moe_renormalize": bool(moe.get("normalization_mode", 1)),
        "moe_shared_intermediate": int(moe.get("shared_expert_intermediate_size") or 0),
    }


def _optional_float(value: Any) -> float | None:
    return float(value) if value else None


def _optional_layers(value: Any) -> tuple[int, ...] | None:
    return None if value is None else tuple(int(layer) for layer in value)


def _rotary_scaling(raw: Any) -> dict[str, Any] | None:
    if not raw:
        return None
    kind = raw.get("type", raw.get("rope_type"))
    if kind in (None, "default", "none"):
        return None
    return {**raw, "type": str(kind)}


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
    """The TP/PP rules (docs/trtllm-checkpoint.md §3.2, §3.6) that a lowering depends on."""
    problems = []
    if model.num_heads % tp:
        problems.append(f"num_attention_heads {model.num_heads} is not divisible by tp {tp}")
    if tp > model.num_kv_heads and tp % model.num_kv_heads:
        problems.append(
            f"tp {tp} > num_key_value_heads {model.num_kv_heads} needs tp % kv heads == 0"
        )
    if tp <= model.num_kv_heads and model.num_kv_heads % tp:
        problems.append(f"num_key_value_heads {model.num_kv_heads} is not divisible by tp {tp}")
    if pp > model.num_layers:
        problems.append(f"pp {pp} is larger than the number of layers {model.num_layers}")
    if problems:
        raise recipe_error("; ".join(problems), hint="choose a tp/pp that divides the model")


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
