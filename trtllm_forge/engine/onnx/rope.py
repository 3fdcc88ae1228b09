"""Rotary-embedding inverse frequencies, with the scaling variants of HF/TRT-LLM configs.

The graph multiplies positions by these frequencies at run time, so a scaling type
is supported when its frequencies do not depend on the sequence length (linear, llama3,
yarn), or when they take one of two fixed sets by it (LongRoPE: the graph picks the
short or long set per sequence, positions.py). ``dynamic`` NTK changes with length
continuously and is refused.
Computed in float32 like transformers does, so logits agree to ~1e-6.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from trtllm_forge.checkpoint.forward import longrope_inv_freq, longrope_length, rope_inv_freq
from trtllm_forge.errors import recipe_error

SUPPORTED_SCALING = ("linear", "llama3", "yarn", "longrope")


@dataclass(frozen=True)
class Rope:
    inv_freq: torch.Tensor  # float32 [head_size // 2]
    attention_factor: float  # multiplies cos and sin (yarn, longrope); 1.0 otherwise
    # LongRoPE: inv_freq holds the short factors' set, long_inv_freq the long one, taken by
    # a sequence longer than long_after tokens.
    long_inv_freq: torch.Tensor | None = None
    long_after: int = 0


def rope_frequencies(
    head_size: int, base: float, scaling: dict[str, Any] | None, max_positions: int | None
) -> Rope:
    kind = "none" if scaling is None else scaling["type"]
    if kind in ("none", "linear", "llama3"):
        # One implementation with the float32 reference forward (checkpoint/forward.py).
        config = {"head_size": head_size, "rotary_base": base, "rotary_scaling": scaling}
        return Rope(rope_inv_freq(config, seq_len=0), 1.0)
    if scaling is not None and kind == "yarn":
        return _yarn(head_size, base, scaling, max_positions)
    if scaling is not None and kind == "longrope":
        exponents = torch.arange(0, head_size, 2, dtype=torch.int64).to(torch.float32) / head_size
        return Rope(
            longrope_inv_freq(base, exponents, scaling, long=False),
            float(scaling["attention_factor"]),
            longrope_inv_freq(base, exponents, scaling, long=True),
            longrope_length(scaling),
        )
    raise recipe_error(
        f"rotary scaling type {kind!r} is not supported by the engine lowering",
        hint=f"supported: {', '.join(SUPPORTED_SCALING)}",
    )


def _yarn(head_size: int, base: float, s: dict[str, Any], max_positions: int | None) -> Rope:
    original = float(s["original_max_position_embeddings"])
    factor = s.get("factor")
    factor = float(factor) if factor is not None else float(max_positions or original) / original

    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attention = s.get("attention_factor")
    if attention is None:
        m, m_all = s.get("mscale"), s.get("mscale_all_dim")
        attention = mscale(factor, m) / mscale(factor, m_all) if m and m_all else mscale(factor)
    beta_fast, beta_slow = float(s.get("beta_fast") or 32), float(s.get("beta_slow") or 1)

    def correction_dim(rotations: float) -> float:
        return head_size * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if s.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, head_size - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(head_size // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    pos_freqs = base ** (torch.arange(0, head_size, 2).float() / head_size)
    extrapolate = 1 - ramp
    inv_freq = (1.0 / (factor * pos_freqs)) * (1 - extrapolate) + (1.0 / pos_freqs) * extrapolate
    return Rope(inv_freq, float(attention))
