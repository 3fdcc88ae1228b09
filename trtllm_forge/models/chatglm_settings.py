"""The config of a ChatGLM 2/3 checkpoint, read once into :class:`ChatGLMSettings`
(models/chatglm.py describes the model; torch-free, so the family table and forge's own
model, models/chatglm_model.py, share it without importing each other)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from trtllm_forge.models import gpt_common
from trtllm_forge.models.base import model_dims, text_config

# config.json switch -> (the value forge implements, what the other value means).
# Missing keys take the defaults the checkpoints' config class gives them.
_REQUIRED: dict[str, tuple[Any, Any, str]] = {
    "rmsnorm": (True, True, "LayerNorm instead of RMSNorm"),
    "post_layer_norm": (True, True, "no final layer norm"),
    "add_bias_linear": (False, False, "biases on every linear"),
    "apply_residual_connection_post_layernorm": (False, False, "residuals after the norms"),
    "multi_query_attention": (True, False, "per-head interleaved q/k/v (no multi-query groups)"),
    "original_rope": (True, True, "the non-original rope implementation"),
    "position_encoding_2d": (False, False, "ChatGLM-6B's 2-D positions"),
}


@dataclass(frozen=True)
class ChatGLMSettings:
    """The config of a ChatGLM 2/3 checkpoint, read once."""

    layers: int
    hidden: int
    heads: int
    groups: int
    head_dim: int
    ffn: int
    vocab: int
    eps: float
    qkv_bias: bool
    rope_base: float

    @property
    def rotary_dim(self) -> int:
        return self.head_dim // 2


def chatglm_settings(hf_config: Mapping[str, Any]) -> ChatGLMSettings:
    """Parse (and check) a ChatGLM config.json; text_config maps its key names."""
    cfg = text_config(hf_config)
    for key, (wanted, default, meaning) in _REQUIRED.items():
        if bool(cfg.get(key, default)) != wanted:
            raise gpt_common.unsupported(f"ChatGLM {key} = {cfg.get(key)!r} ({meaning})")
    for key in ("pre_seq_len", "quantization_bit"):
        if cfg.get(key):
            raise gpt_common.unsupported(f"ChatGLM {key} = {cfg[key]!r}")
    _refuse_chatglm2_rope_ratio(cfg)
    dims = model_dims(cfg)
    if dims["head_size"] % 4:
        raise gpt_common.unsupported(f"kv_channels {dims['head_size']} (not a multiple of 4)")
    return ChatGLMSettings(
        layers=dims["num_hidden_layers"],
        hidden=dims["hidden_size"],
        heads=dims["num_attention_heads"],
        groups=dims["num_key_value_heads"],
        head_dim=dims["head_size"],
        ffn=dims["intermediate_size"],
        vocab=dims["vocab_size"],
        eps=float(cfg.get("layernorm_epsilon", 1e-5)),
        qkv_bias=bool(cfg.get("add_qkv_bias", False)),
        rope_base=10000.0 * float(cfg.get("rope_ratio") or 1.0),
    )


def _refuse_chatglm2_rope_ratio(cfg: Mapping[str, Any]) -> None:
    """ChatGLM3 (and GLM-4) multiply the rope base by ``rope_ratio``; ChatGLM2-6B-32k's
    code divides the positions by it instead, and no config key tells the two apart.
    forge implements the ChatGLM3 meaning and refuses a ratio in a config saved from a
    ChatGLM2 model (``_name_or_path``, the only trace of it; docs/models.md)."""
    ratio = float(cfg.get("rope_ratio") or 1.0)
    if ratio != 1.0 and "chatglm2" in str(cfg.get("_name_or_path", "")).lower():
        raise gpt_common.unsupported(
            f"ChatGLM2 rope_ratio {ratio:g} (ChatGLM2-6B-32k divides positions by it; "
            "forge implements ChatGLM3's base scaling)"
        )
