"""Pieces shared by the GPT-style families (GPT-2, GPT-NeoX, GPTBigCode, GPT-J, Gemma).

The decoder features these families differ in are written to ``config.json`` as
flags the reference forward and the ONNX lowering read (never the architecture
name), so a feature is implemented once for every family that uses it:

* ``position_embedding_type`` (TRT-LLM key): ``learned_absolute``, ``rope_gpt_neox``,
  ``rope_gptj``; ``rotary_embedding_dim`` (TRT-LLM key) for partial rotary.
* ``forge.norm_type``: ``layernorm`` (weight and bias) or ``rmsnorm``.
* ``forge.mlp_type``: ``plain`` (``proj(act(fc(x)))``) or ``gated``.
* ``forge.parallel_residual``: ``h + attn(ln1(h)) + mlp(ln2(h))`` (NeoX/GPT-J; a
  missing ``post_layernorm`` means the MLP reads ``ln1(h)`` too, as in GPT-J).
* ``embedding_multiplier`` (TRT-LLM Llama key): scales the token embedding (Gemma).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from trtllm_forge.errors import ExitCode, ForgeError
from trtllm_forge.models.base import Family, common_config, text_config

# HF activation names forge's forward and lowering implement ("gelu" is the exact erf form;
# the others are the tanh approximation under different names).
SUPPORTED_ACTS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast", "relu", "silu")


def activation(hf_config: Mapping[str, Any], *keys: str, default: str) -> str:
    cfg = text_config(hf_config)
    act = next((str(cfg[k]) for k in keys if cfg.get(k)), default)
    if act not in SUPPORTED_ACTS:
        raise unsupported(f"activation {act!r} (supported: {', '.join(SUPPORTED_ACTS)})")
    return act


def base_config(
    hf_config: Mapping[str, Any],
    *,
    family: str,
    trt_architecture: str,
    dtype: str,
    converter_version: int,
    hidden_act: str,
    norm_epsilon: float,
    position_embedding_type: str,
    norm_type: str,
    mlp_type: str,
    parallel_residual: bool,
    tied: bool,
) -> dict[str, Any]:
    """:func:`~trtllm_forge.models.base.common_config` plus the decoder-feature flags."""
    config = common_config(
        hf_config,
        family=family,
        trt_architecture=trt_architecture,
        dtype=dtype,
        converter_version=converter_version,
        hidden_act=hidden_act,
        norm_epsilon=norm_epsilon,
        position_embedding_type=position_embedding_type,
        tied=tied,
    )
    config["forge"].update(
        {"norm_type": norm_type, "mlp_type": mlp_type, "parallel_residual": parallel_residual}
    )
    return config


class GptStyleFamily(Family):
    """A family converted through :func:`base_config`: refuses pre-quantized checkpoints."""

    def validate(self, hf_config: Mapping[str, Any]) -> None:
        super().validate(hf_config)
        reject_prequantized(hf_config)


def reject_prequantized(hf_config: Mapping[str, Any]) -> None:
    if text_config(hf_config).get("quantization_config"):
        raise unsupported("pre-quantized HF checkpoints (quantization_config)")


def unsupported(what: str) -> ForgeError:
    return ForgeError(
        ExitCode.SOURCE,
        f"unsupported model feature: {what}",
        hint="this model variant is not supported by forge yet",
    )
