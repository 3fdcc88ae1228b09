"""Builders of tensor-table rows shared by every family.

Families differ in their HF module names, not in how a row is made from a name
pair: these helpers take the names and return :class:`TensorRule` rows.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence

from trtllm_forge.models.base import TensorRule

# (TRT-LLM module, HF module) pairs; every pair is copied parameter by parameter.
ModuleTable = Sequence[tuple[str, str]]
WEIGHT_AND_BIAS = ("weight", "bias")


def layer_prefixes(hf_layers: str, layers: int) -> Iterator[tuple[str, str]]:
    """``(TRT-LLM prefix, HF prefix)`` of each decoder layer; ``hf_layers`` is e.g. ``transformer.h``."""
    for i in range(layers):
        yield f"transformer.layers.{i}.", f"{hf_layers}.{i}."


def module_rules(
    dst: str, src: str, table: ModuleTable, params: Sequence[str] = WEIGHT_AND_BIAS
) -> list[TensorRule]:
    """Identity copies of ``params`` of every module pair in ``table``, under the two prefixes."""
    return [TensorRule(f"{dst}{t}.{p}", (f"{src}{s}.{p}",)) for t, s in table for p in params]


def interleaved_qkv_rules(
    dst: str, fused: str, heads: int, params: Sequence[str] = WEIGHT_AND_BIAS
) -> list[TensorRule]:
    """``attention.qkv`` from one fused HF QKV module whose rows are ``[heads, 3, d]``."""
    return [
        TensorRule(f"{dst}attention.qkv.{p}", (f"{fused}.{p}",), "qkv_interleaved", heads=heads)
        for p in params
    ]


def split_qkv_rule(dst: str, attn: str, param: str) -> TensorRule:
    """``attention.qkv`` stacked ``[q; k; v]`` from separate ``{attn}.{q,k,v}_proj`` modules."""
    sources = tuple(f"{attn}.{p}_proj.{param}" for p in "qkv")
    return TensorRule(f"{dst}attention.qkv.{param}", sources, "concat_rows")


def embedding_rules(
    embedding: str, *, tied: bool, head: str = "lm_head.weight"
) -> list[TensorRule]:
    """Token embedding and LM head; a tied head is read from the embedding table."""
    return [
        TensorRule("transformer.vocab_embedding.weight", (embedding,)),
        TensorRule("lm_head.weight", (embedding if tied else head,)),
    ]


def ignore_tied_head(
    ignored: tuple[re.Pattern[str], ...], *, tied: bool, head: str = "lm_head.weight"
) -> tuple[re.Pattern[str], ...]:
    """Some tied checkpoints also store the (identical) head; the embedding is used instead."""
    return (*ignored, re.compile(re.escape(head))) if tied else ignored
