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
from trtllm_forge.models.base import check_dtype, model_dims, text_config

# HF activation names forge's forward and lowering implement ("gelu" is the exact erf form;
# the others are the tanh approximation under different names).
SUPPORTED_ACTS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast", "relu", "silu")


def architecture(hf_config: Mapping[str, Any]) -> str:
    archs = hf_config.get("architectures") or []
    return str(archs[0]) if archs else ""


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
    """The config.json fields every family writes (reference §1.2), plus the forge flags."""
    cfg = text_config(hf_config)
    dims = model_dims(cfg)
    arch = architecture(hf_config)
    return {
        "architecture": trt_architecture,
        "dtype": check_dtype(dtype),
        "logits_dtype": "float32",
        "vocab_size": dims["vocab_size"],
        "hidden_size": dims["hidden_size"],
        "num_hidden_layers": dims["num_hidden_layers"],
        "num_attention_heads": dims["num_attention_heads"],
        "num_key_value_heads": dims["num_key_value_heads"],
        "head_size": dims["head_size"],
        "hidden_act": hidden_act,
        "intermediate_size": dims["intermediate_size"],
        "norm_epsilon": norm_epsilon,
        "position_embedding_type": position_embedding_type,
        "max_position_embeddings": cfg.get("max_position_embeddings"),
        "tie_word_embeddings": tied,
        "use_parallel_embedding": False,
        "embedding_sharding_dim": 0,
        "mapping": {"world_size": 1, "tp_size": 1, "pp_size": 1},
        "quantization": {
            "quant_algo": None,
            "kv_cache_quant_algo": None,
            "group_size": 128,
            "has_zero_point": False,
            "pre_quant_scale": False,
            "exclude_modules": None,
        },
        "forge": {
            "source_architecture": arch,
            "family": family,
            "converter_version": converter_version,
            "head_dim": dims["head_size"],
            "norm_type": norm_type,
            "mlp_type": mlp_type,
            "parallel_residual": parallel_residual,
        },
    }


def reject_prequantized(hf_config: Mapping[str, Any]) -> None:
    if text_config(hf_config).get("quantization_config"):
        raise unsupported("pre-quantized HF checkpoints (quantization_config)")


def unsupported(what: str) -> ForgeError:
    return ForgeError(
        ExitCode.SOURCE,
        f"unsupported model feature: {what}",
        hint="this model variant is not supported by forge yet",
    )
