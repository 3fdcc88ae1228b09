"""Cross-field rules between a recipe's settings and the model they apply to, each
written once.

The edge checks them before any work and points at the recipe field: the recipe schema
(the build lengths) and pipeline/preflight.py (tensor and pipeline parallelism against
the model's sizes). Library entry points that a caller may reach without a recipe —
checkpoint/shard.py, engine/spec.py, engine/backends/options.py — ask the same rule, so
both can never disagree on what is allowed. A rule says which part of the model does not
fit; :class:`Misfit` words it for a recipe's reader or for a checkpoint's (whose
config.json keys a library caller knows). Plain numbers in, so every layer may use it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Misfit:
    """Which of the model's sizes a tensor- or pipeline-parallel split does not fit."""

    part: str  # "heads", "kv_heads", "layers", or a width's config.json name
    size: int  # the model's size of that part
    degree: int  # the tp (or, for layers, pp) asked for

    def for_recipe(self) -> str:
        """In the words of the recipe's parallel section (pipeline/preflight.py)."""
        tp = f"tp={self.degree}"
        if self.part == "heads":
            return f"{tp} does not divide the model's {self.size} attention heads"
        if self.part == "kv_heads":
            return (
                f"{tp} and the model's {self.size} key/value heads are incompatible "
                "(one must divide the other)"
            )
        if self.part == "layers":
            return f"pp={self.degree} is larger than the model's {self.size} layers"
        if self.part == "intermediate_size":
            return f"{tp} does not divide the model's intermediate size {self.size}"
        return f"{tp} does not divide the model's {self.part} {self.size}"

    def for_checkpoint(self) -> str:
        """In the words of a TensorRT-LLM checkpoint's config.json (shard, engine)."""
        if self.part == "heads":
            return f"num_attention_heads {self.size} is not divisible by tp {self.degree}"
        if self.part == "kv_heads":
            return (
                f"num_key_value_heads {self.size} and tp {self.degree}: one must divide the "
                "other (KV heads are replicated when tp > kv heads)"
            )
        if self.part == "layers":
            return f"pp {self.degree} is larger than the number of layers {self.size}"
        return f"{self.part} {self.size} is not divisible by tp {self.degree}"


def tp_misfit(
    tp: int, *, heads: int, kv_heads: int, widths: Mapping[str, int] | None = None
) -> Misfit | None:
    """The first size tensor parallelism of ``tp`` cannot split, or None.

    Query heads split evenly across ranks; key/value heads split, or are replicated when
    there are fewer than ranks, so one of kv_heads and tp divides the other
    (docs/trtllm-checkpoint.md §3.2). Each MLP width in ``widths`` (``intermediate_size``,
    a mixture-of-experts model's expert widths) splits evenly too.
    """
    if heads % tp:
        return Misfit("heads", heads, tp)
    if kv_heads and tp % kv_heads and kv_heads % tp:
        return Misfit("kv_heads", kv_heads, tp)
    for name, size in (widths or {}).items():
        if size % tp:
            return Misfit(name, size, tp)
    return None


def pp_misfit(pp: int, *, layers: int) -> Misfit | None:
    """Pipeline parallelism gives every stage at least one layer (§3.6 there)."""
    return Misfit("layers", layers, pp) if pp > layers else None


def valid_tps(*, heads: int, kv_heads: int, widths: Mapping[str, int] | None = None) -> list[int]:
    """Every tp no rule of :func:`tp_misfit` refuses (what a hint may offer)."""
    return [
        tp
        for tp in range(1, heads + 1)
        if heads % tp == 0 and tp_misfit(tp, heads=heads, kv_heads=kv_heads, widths=widths) is None
    ]


def lengths_problem(max_input_len: int, max_seq_len: int) -> str | None:
    """A prompt of max_input_len tokens leaves room to generate within max_seq_len."""
    if not 0 < max_input_len < max_seq_len:
        return (
            f"max_input_len ({max_input_len}) must be positive and below "
            f"max_seq_len ({max_seq_len})"
        )
    return None
