"""The config of a Baichuan 2 checkpoint, read once into :class:`BaichuanSettings`
(models/baichuan.py describes the model and the 7B/13B rule; torch-free, so the family
table and forge's own model, models/baichuan_model.py, share it without importing each
other)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from trtllm_forge.models import gpt_common
from trtllm_forge.models.base import model_dims, text_config

_BAICHUAN1_VOCAB = 64000
_ROPE_BASE = 10000.0  # fixed in the 7B checkpoints' code; no config key sets it
_DEFAULT_MAX_LENGTH = 4096  # the checkpoints' model_max_length when config.json omits it


@dataclass(frozen=True)
class BaichuanSettings:
    """The config of a Baichuan 2 checkpoint, read once."""

    layers: int
    hidden: int
    heads: int
    head_dim: int
    ffn: int
    vocab: int
    eps: float
    alibi: bool
    max_positions: int
    rope_base: float = _ROPE_BASE


def baichuan_settings(hf_config: Mapping[str, Any]) -> BaichuanSettings:
    """Parse (and check) a Baichuan 2 config.json."""
    cfg = text_config(hf_config)
    dims = model_dims(cfg)
    if dims["vocab_size"] == _BAICHUAN1_VOCAB:
        raise gpt_common.unsupported("Baichuan 1 (vocab_size 64000: its LM head is not a NormHead)")
    if dims["num_key_value_heads"] != dims["num_attention_heads"]:
        raise gpt_common.unsupported("Baichuan with num_key_value_heads (W_pack has every head)")
    if cfg.get("hidden_act", "silu") != "silu":
        raise gpt_common.unsupported(f"Baichuan hidden_act {cfg.get('hidden_act')!r}")
    if cfg.get("tie_word_embeddings"):
        raise gpt_common.unsupported("Baichuan with tie_word_embeddings")
    alibi = cfg.get("max_position_embeddings") is None
    positions = cfg.get("model_max_length") if alibi else cfg.get("max_position_embeddings")
    return BaichuanSettings(
        layers=dims["num_hidden_layers"],
        hidden=dims["hidden_size"],
        heads=dims["num_attention_heads"],
        head_dim=dims["head_size"],
        ffn=dims["intermediate_size"],
        vocab=dims["vocab_size"],
        eps=float(cfg.get("rms_norm_eps", 1e-6)),
        alibi=alibi,
        max_positions=int(positions or _DEFAULT_MAX_LENGTH),
    )
