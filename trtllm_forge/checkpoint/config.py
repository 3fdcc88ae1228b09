"""The TensorRT-LLM checkpoint's ``config.json``: the one reader and writer of it, and
:class:`ModelSpec`, the typed model it describes (docs/trtllm-checkpoint.md §1).

Torch-free, so inspecting or planning reads a checkpoint's config without loading torch.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trtllm_forge.errors import ExitCode, ForgeError, recipe_error

CONFIG_NAME = "config.json"


def rank_file(rank: int) -> str:
    return f"rank{rank}.safetensors"


def read_config(ckpt_dir: Path) -> dict[str, Any]:
    path = Path(ckpt_dir) / CONFIG_NAME
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise bad_checkpoint(f"{path} does not exist") from exc
    except json.JSONDecodeError as exc:
        raise bad_checkpoint(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise bad_checkpoint(f"{path} must hold a JSON object")
    return config


def write_config(ckpt_dir: Path, config: Mapping[str, Any]) -> Path:
    path = Path(ckpt_dir) / CONFIG_NAME
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return path


def world_size(config: Mapping[str, Any]) -> int:
    mapping = config.get("mapping") or {}
    tp = int(mapping.get("tp_size", 1))
    pp = int(mapping.get("pp_size", 1))
    return int(mapping.get("world_size", tp * pp))


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


def model_spec(config: Mapping[str, Any]) -> ModelSpec:
    """The model fields of a TensorRT-LLM config.json (docs/trtllm-checkpoint.md §1):
    every reader of a checkpoint's model (forward, lowering, runtime, inspect) takes them
    from here instead of the raw dict."""
    hidden = int(config["hidden_size"])
    heads = int(config["num_attention_heads"])
    forge = config.get("forge") or {}
    head_size = int(config.get("head_size") or forge.get("head_dim") or hidden // heads)
    return ModelSpec(
        architecture=str(config.get("architecture", "")),
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
        position_embedding_type=str(config.get("position_embedding_type", "rope_gpt_neox")),
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


def _rotary_dim(config: Mapping[str, Any], head_size: int) -> int | None:
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


def bad_checkpoint(message: str) -> ForgeError:
    return ForgeError(
        ExitCode.STORE,
        f"not a valid TensorRT-LLM checkpoint: {message}",
        hint="rebuild the checkpoint (the artifact may be incomplete or corrupt)",
    )
