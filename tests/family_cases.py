"""The families of the conformance suite (tests/test_family_conformance.py), as data.

Per case: the tiny model (a tests/tinymodels.py arch and config overrides), whether its
engine is built, how to remove each of its features from the converted config.json
(``FEATURES``: the reference forward must then miss the family's reference by more than
``Case.bite``, so the engine tests can fail), and which converted tensors equal which HF tensors
(``EXPECTED``: ``(t, cfg) -> tensor``, ``t(name)`` an HF tensor, ``cfg`` the converted
config).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

Mutation = Callable[[dict[str, Any]], None]
Expected = Callable[[Callable[[str], torch.Tensor], dict[str, Any]], torch.Tensor]


@dataclass(frozen=True)
class Case:
    arch: str  # tests/tinymodels.py arch (make_tiny_native for NATIVE_ARCHES)
    overrides: dict[str, Any] = field(default_factory=dict)
    engine: bool = True  # False: conversion and reference forward only
    fp8_kv: bool = False  # the fp8 case quantizes the KV cache to fp8 too
    weight_check: bool = False  # also bound each dequantized linear's error
    # How far the reference must miss without a feature; 1 % where rotary or ALiBi on a
    # tiny random model moves the logits by only 1.5-3 % (still 100x the engine tests'
    # 1e-4 logit tolerance).
    bite: float = 0.05


CASES: dict[str, Case] = {
    "gpt2": Case("gpt2", weight_check=True),
    "gpt_neox": Case("gpt_neox", weight_check=True, bite=0.01),
    "gpt_bigcode": Case("gpt_bigcode", weight_check=True),
    "gptj": Case("gptj", weight_check=True, bite=0.01),
    "gemma": Case("gemma", weight_check=True),
    "gemma2": Case("gemma2", fp8_kv=True),
    # Falcon-7B: MQA, parallel attention, no biases; Falcon-40B/180B: GQA, two norms.
    "falcon-7b-like": Case("falcon", fp8_kv=True),
    "falcon-40b-like": Case(
        "falcon", {"new_decoder_architecture": True, "bias": True}, fp8_kv=True
    ),
    "falcon-sequential": Case(
        "falcon", {"multi_query": False, "parallel_attn": False, "bias": True, "num_kv_heads": 4}
    ),
    "falcon-new-one-norm": Case(
        "falcon", {"new_decoder_architecture": True, "num_ln_in_parallel_attn": 1}, engine=False
    ),
    "bloom": Case("bloom", fp8_kv=True, bite=0.01),
    "mpt": Case("mpt", fp8_kv=True),
    "qwen3": Case("qwen3"),
    "phi3": Case("phi3"),
    "gemma3": Case("gemma3"),
    "mixtral": Case("mixtral"),
    "qwen3_moe": Case("qwen3_moe"),
    "qwen2_moe": Case("qwen2_moe"),
    "chatglm": Case("chatglm"),
    "baichuan2_7b": Case("baichuan2_7b"),
    "baichuan2_13b": Case("baichuan2_13b"),
}
ENGINE_CASES = [name for name, case in CASES.items() if case.engine]


def _forge(**changes: Any) -> Mutation:
    return lambda config: config["forge"].update(changes)


def _set(**changes: Any) -> Mutation:
    return lambda config: config.update(changes)


# case -> {feature: how to remove it from the converted config.json}
FEATURES: dict[str, dict[str, Mutation]] = {
    "gpt2": {"learned_positions": _set(position_embedding_type="rope_gpt_neox")},
    "gpt_neox": {
        "partial_rotary": lambda c: c.pop("rotary_embedding_dim"),
        "parallel_residual": _forge(parallel_residual=False),
    },
    "gpt_bigcode": {"multi_query": _set(num_key_value_heads=4)},
    # GPT-J's MLP reads the attention's norm; without parallel_residual it would need a
    # second norm the checkpoint does not have.
    "gptj": {
        "pair_rotation": _set(position_embedding_type="rope_gpt_neox"),
        "partial_rotary": lambda c: c.pop("rotary_embedding_dim"),
    },
    "gemma": {"embedding_multiplier": _set(embedding_multiplier=1.0)},
    "gemma2": {
        "attn_softcap": _set(attn_logit_softcapping=None),
        "final_softcap": _set(final_logit_softcapping=None),
        "query_pre_attn_scalar": _set(query_pre_attn_scalar=None),
        "sandwich_norms": _set(inter_layernorms=False),
        "sliding_window": _forge(sliding_window=None),
        "window_on_every_layer": lambda c: c["forge"].pop("sliding_window_layers"),
    },
    # Falcon's parallel attention cannot be dropped from the config (the sequential
    # layout needs a second norm the checkpoint does not have); its KV grouping can.
    "falcon-7b-like": {
        "multi_query": _set(num_key_value_heads=4),
        "rope": _set(position_embedding_type="alibi"),
    },
    "falcon-40b-like": {"kv_groups": _set(num_key_value_heads=4)},
    "falcon-sequential": {"sequential": _forge(parallel_residual=True)},
    "falcon-new-one-norm": {"kv_groups": _set(num_key_value_heads=4)},
    "bloom": {"alibi": _set(position_embedding_type="rope_gpt_neox")},
    "mpt": {"alibi": _set(position_embedding_type="rope_gpt_neox")},
    "qwen3": {
        "qk_layernorm": _forge(qk_layernorm=False),
        "explicit_head_dim": lambda c: c.update(head_size=c["hidden_size"] // 4),
    },
    "phi3": {
        "partial_rotary": lambda c: c.pop("rotary_embedding_dim"),
        "sliding_window": _forge(sliding_window=None),
    },
    "gemma3": {
        "qk_layernorm": _forge(qk_layernorm=False),
        "local_rope_base": lambda c: c.pop("rope_local_base_freq"),
        "global_rope_scaling": _set(rotary_scaling=None),
        "sliding_window": _forge(sliding_window=None),
        "sandwich_norms": _set(inter_layernorms=False),
        "query_pre_attn_scalar": _set(query_pre_attn_scalar=None),
    },
    "mixtral": {
        "top_k_routing": lambda c: c["moe"].update(top_k=c["moe"]["num_experts"]),
        "renormalized_weights": lambda c: c["moe"].update(normalization_mode=0),
    },
    "qwen3_moe": {
        "qk_layernorm": _forge(qk_layernorm=False),
        "top_k_routing": lambda c: c["moe"].update(top_k=1),
        "weights_not_renormalized": lambda c: c["moe"].update(normalization_mode=1),
    },
    "qwen2_moe": {
        "shared_expert": lambda c: c["moe"].update(shared_expert_intermediate_size=0),
        "renormalized_weights": lambda c: c["moe"].update(normalization_mode=0),
    },
    "chatglm": {
        "half_rotary": lambda c: c.pop("rotary_embedding_dim"),
        "pair_rotation": _set(position_embedding_type="rope_gpt_neox"),
        "multi_query_groups": _set(num_key_value_heads=4),
        "rope_base": _set(rotary_base=10.0),
    },
    # 7B and 13B share the architecture name; the config class picks rope or ALiBi.
    "baichuan2_7b": {"rope": _set(position_embedding_type="alibi")},
    "baichuan2_13b": {"alibi": _set(position_embedding_type="rope_gpt_neox")},
}


def _copy(hf: str) -> Expected:
    return lambda t, cfg: t(hf)


def _transposed(hf: str) -> Expected:
    return lambda t, cfg: t(hf).T


def _plus_one(hf: str) -> Expected:
    return lambda t, cfg: t(hf) + 1


def _cat(*hf: str) -> Expected:
    return lambda t, cfg: torch.cat([t(name) for name in hf])


def _rows(hf: str, start: int, stop: int) -> Expected:
    return lambda t, cfg: t(hf)[start:stop]


def _per_head_qkv(hf: str) -> Expected:
    """[heads, 3, d, ...] rows (GPT-NeoX, BLOOM) -> [3, heads, d, ...] rows."""

    def expected(t: Callable[[str], torch.Tensor], cfg: dict[str, Any]) -> torch.Tensor:
        w = t(hf)
        return (
            w.reshape(cfg["num_attention_heads"], 3, -1, *w.shape[1:])
            .transpose(0, 1)
            .reshape(w.shape)
        )

    return expected


def _falcon_qkv(hf: str) -> Expected:
    """Falcon's rows grouped per KV head [kv, heads/kv + 2, d] -> [q; k; v]."""

    def expected(t: Callable[[str], torch.Tensor], cfg: dict[str, Any]) -> torch.Tensor:
        fused = t(hf)
        heads, kv, d = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_size"]
        tail = fused.shape[1:]
        grouped = fused.reshape(kv, heads // kv + 2, d, *tail)
        q = grouped[:, :-2].reshape(-1, *tail)
        return torch.cat([q, grouped[:, -2].reshape(-1, *tail), grouped[:, -1].reshape(-1, *tail)])

    return expected


def _layer(i: int, hf_prefix: str, table: dict[str, Expected]) -> dict[str, Expected]:
    """A table of one layer's tensors by relative names, as full names."""
    return {
        f"transformer.layers.{i}.{dst}": (
            lambda t, cfg, f=fn: f(lambda name: t(hf_prefix + name), cfg)
        )
        for dst, fn in table.items()
    }


_GEMMA2_NORMS = {
    "input_layernorm.weight": _plus_one("input_layernorm.weight"),
    "post_layernorm.weight": _plus_one("post_attention_layernorm.weight"),
    "pre_feedforward_layernorm.weight": _plus_one("pre_feedforward_layernorm.weight"),
    "post_feedforward_layernorm.weight": _plus_one("post_feedforward_layernorm.weight"),
    "attention.qkv.weight": _cat(*(f"self_attn.{p}_proj.weight" for p in "qkv")),
    "attention.dense.weight": _copy("self_attn.o_proj.weight"),
    "mlp.fc.weight": _copy("mlp.gate_proj.weight"),
    "mlp.gate.weight": _copy("mlp.up_proj.weight"),
    "mlp.proj.weight": _copy("mlp.down_proj.weight"),
}
_FALCON_TOP = {
    "transformer.vocab_embedding.weight": _copy("transformer.word_embeddings.weight"),
    "lm_head.weight": _copy("transformer.word_embeddings.weight"),  # tied head
}
_FALCON_QKV = {"attention.qkv.weight": _falcon_qkv("self_attention.query_key_value.weight")}
_FALCON_QKV_BIAS = {
    **_FALCON_QKV,
    "attention.qkv.bias": _falcon_qkv("self_attention.query_key_value.bias"),
}
_W_PACK = {"attention.qkv.weight": _copy("self_attn.W_pack.weight")}

# case -> {TRT-LLM tensor: how to make it from the HF tensors}
EXPECTED: dict[str, dict[str, Expected]] = {
    "gpt2": {
        "transformer.vocab_embedding.weight": _copy("transformer.wte.weight"),
        "transformer.position_embedding.weight": _copy("transformer.wpe.weight"),
        "lm_head.weight": _copy("transformer.wte.weight"),
        "transformer.ln_f.weight": _copy("transformer.ln_f.weight"),
        **_layer(
            1, "transformer.h.1.", {"attention.qkv.weight": _transposed("attn.c_attn.weight")}
        ),
        **_layer(
            0,
            "transformer.h.0.",
            {  # GPT-2's Conv1D weights are [in, out]: written transposed
                "attention.qkv.bias": _copy("attn.c_attn.bias"),
                "attention.dense.weight": _transposed("attn.c_proj.weight"),
                "mlp.fc.weight": _transposed("mlp.c_fc.weight"),
                "mlp.proj.bias": _copy("mlp.c_proj.bias"),
                "post_layernorm.bias": _copy("ln_2.bias"),
            },
        ),
    },
    "gpt_neox": {
        "transformer.vocab_embedding.weight": _copy("gpt_neox.embed_in.weight"),
        "lm_head.weight": _copy("embed_out.weight"),
        "transformer.ln_f.bias": _copy("gpt_neox.final_layer_norm.bias"),
        **_layer(
            1,
            "gpt_neox.layers.1.",
            {
                "attention.qkv.weight": _per_head_qkv("attention.query_key_value.weight"),
                "attention.qkv.bias": _per_head_qkv("attention.query_key_value.bias"),
                "attention.dense.bias": _copy("attention.dense.bias"),
                "mlp.fc.weight": _copy("mlp.dense_h_to_4h.weight"),
                "mlp.proj.weight": _copy("mlp.dense_4h_to_h.weight"),
                "post_layernorm.weight": _copy("post_attention_layernorm.weight"),
            },
        ),
    },
    "gpt_bigcode": {
        "transformer.position_embedding.weight": _copy("transformer.wpe.weight"),
        "lm_head.weight": _copy("transformer.wte.weight"),
        **_layer(
            1,
            "transformer.h.1.",
            {  # multi-query c_attn is already [q; k; v] in nn.Linear layout
                "attention.qkv.weight": _copy("attn.c_attn.weight"),
                "attention.qkv.bias": _copy("attn.c_attn.bias"),
                "mlp.fc.weight": _copy("mlp.c_fc.weight"),
                "mlp.proj.bias": _copy("mlp.c_proj.bias"),
            },
        ),
    },
    "gptj": {
        "lm_head.weight": _copy("lm_head.weight"),
        "lm_head.bias": _copy("lm_head.bias"),
        **_layer(
            1,
            "transformer.h.1.",
            {
                "attention.qkv.weight": _cat(*(f"attn.{p}_proj.weight" for p in "qkv")),
                "attention.dense.weight": _copy("attn.out_proj.weight"),
                "input_layernorm.bias": _copy("ln_1.bias"),
                "mlp.fc.bias": _copy("mlp.fc_in.bias"),
                "mlp.proj.weight": _copy("mlp.fc_out.weight"),
            },
        ),
    },
    "gemma": {  # every Gemma RMSNorm computes x̂ · (1 + w): stored as 1 + w
        "transformer.vocab_embedding.weight": _copy("model.embed_tokens.weight"),  # unscaled
        "lm_head.weight": _copy("model.embed_tokens.weight"),
        "transformer.ln_f.weight": _plus_one("model.norm.weight"),
        **_layer(
            1,
            "model.layers.1.",
            {
                "input_layernorm.weight": _plus_one("input_layernorm.weight"),
                "post_layernorm.weight": _plus_one("post_attention_layernorm.weight"),
                "mlp.fc.weight": _copy("mlp.gate_proj.weight"),
                "mlp.gate.weight": _copy("mlp.up_proj.weight"),
            },
        ),
    },
    "gemma2": {
        "transformer.vocab_embedding.weight": _copy("model.embed_tokens.weight"),
        "lm_head.weight": _copy("model.embed_tokens.weight"),
        "transformer.ln_f.weight": _plus_one("model.norm.weight"),
        **_layer(0, "model.layers.0.", _GEMMA2_NORMS),
        **_layer(1, "model.layers.1.", _GEMMA2_NORMS),
    },
    "falcon-7b-like": {**_FALCON_TOP, **_layer(1, "transformer.h.1.", _FALCON_QKV)},
    "falcon-40b-like": {
        **_FALCON_TOP,
        **_layer(
            1, "transformer.h.1.", {**_FALCON_QKV_BIAS, "mlp_layernorm.bias": _copy("ln_mlp.bias")}
        ),
    },
    "falcon-sequential": {**_FALCON_TOP, **_layer(1, "transformer.h.1.", _FALCON_QKV_BIAS)},
    "falcon-new-one-norm": {**_FALCON_TOP, **_layer(1, "transformer.h.1.", _FALCON_QKV)},
    "bloom": {
        "transformer.vocab_embedding.weight": _copy("transformer.word_embeddings.weight"),
        "lm_head.weight": _copy("transformer.word_embeddings.weight"),
        "transformer.ln_embed.weight": _copy("transformer.word_embeddings_layernorm.weight"),
        "transformer.ln_embed.bias": _copy("transformer.word_embeddings_layernorm.bias"),
        **_layer(
            1,
            "transformer.h.1.",
            {
                "attention.qkv.weight": _per_head_qkv("self_attention.query_key_value.weight"),
                "attention.qkv.bias": _per_head_qkv("self_attention.query_key_value.bias"),
            },
        ),
    },
    "mpt": {  # Wqkv is already [q; k; v]
        "transformer.vocab_embedding.weight": _copy("transformer.wte.weight"),
        "lm_head.weight": _copy("transformer.wte.weight"),
        **_layer(1, "transformer.blocks.1.", {"attention.qkv.weight": _copy("attn.Wqkv.weight")}),
    },
    "qwen3": _layer(
        1,
        "model.layers.1.",
        {
            "attention.q_layernorm.weight": _copy("self_attn.q_norm.weight"),
            "attention.k_layernorm.weight": _copy("self_attn.k_norm.weight"),
            "attention.qkv.weight": _cat(*(f"self_attn.{p}_proj.weight" for p in "qkv")),
        },
    ),
    "phi3": _layer(
        1,
        "model.layers.1.",
        {  # gate_up_proj rows are [gate; up]
            "attention.qkv.weight": _copy("self_attn.qkv_proj.weight"),
            "mlp.fc.weight": _rows("mlp.gate_up_proj.weight", 0, 128),
            "mlp.gate.weight": _rows("mlp.gate_up_proj.weight", 128, 256),
            "mlp.proj.weight": _copy("mlp.down_proj.weight"),
        },
    ),
    "gemma3": _layer(
        1,
        "model.layers.1.",
        {
            "attention.q_layernorm.weight": _plus_one("self_attn.q_norm.weight"),
            "attention.k_layernorm.weight": _plus_one("self_attn.k_norm.weight"),
            "pre_feedforward_layernorm.weight": _plus_one("pre_feedforward_layernorm.weight"),
            "mlp.fc.weight": _copy("mlp.gate_proj.weight"),
        },
    ),
    "mixtral": _layer(
        1,
        "model.layers.1.",
        {  # HF w1 is the activated (gate) branch, w3 the up branch, w2 down
            "mlp.router.weight": _copy("block_sparse_moe.gate.weight"),
            "mlp.experts.3.fc.weight": _copy("block_sparse_moe.experts.3.w1.weight"),
            "mlp.experts.3.gate.weight": _copy("block_sparse_moe.experts.3.w3.weight"),
            "mlp.experts.0.proj.weight": _copy("block_sparse_moe.experts.0.w2.weight"),
        },
    ),
    "qwen3_moe": _layer(
        1,
        "model.layers.1.",
        {
            "attention.q_layernorm.weight": _copy("self_attn.q_norm.weight"),
            "mlp.router.weight": _copy("mlp.gate.weight"),
            "mlp.experts.2.fc.weight": _copy("mlp.experts.2.gate_proj.weight"),
            "mlp.experts.2.gate.weight": _copy("mlp.experts.2.up_proj.weight"),
            "mlp.experts.1.proj.weight": _copy("mlp.experts.1.down_proj.weight"),
        },
    ),
    "qwen2_moe": _layer(
        1,
        "model.layers.1.",
        {
            "attention.qkv.bias": _cat(*(f"self_attn.{p}_proj.bias" for p in "qkv")),
            "mlp.router.weight": _copy("mlp.gate.weight"),
            "mlp.experts.3.fc.weight": _copy("mlp.experts.3.gate_proj.weight"),
            "mlp.shared_expert.fc.weight": _copy("mlp.shared_expert.gate_proj.weight"),
            "mlp.shared_expert.gate.weight": _copy("mlp.shared_expert.up_proj.weight"),
            "mlp.shared_expert.proj.weight": _copy("mlp.shared_expert.down_proj.weight"),
            "mlp.shared_expert_gate.weight": _copy("mlp.shared_expert_gate.weight"),
        },
    ),
    "chatglm": _layer(
        1,
        "transformer.encoder.layers.1.",
        {  # dense_h_to_4h rows are [gate; up] (SwiGLU halves)
            "attention.qkv.weight": _copy("self_attention.query_key_value.weight"),
            "attention.qkv.bias": _copy("self_attention.query_key_value.bias"),
            "mlp.fc.weight": _rows("mlp.dense_h_to_4h.weight", 0, 128),
            "mlp.gate.weight": _rows("mlp.dense_h_to_4h.weight", 128, 256),
            "mlp.proj.weight": _copy("mlp.dense_4h_to_h.weight"),
        },
    ),
    "baichuan2_7b": _layer(1, "model.layers.1.", _W_PACK),
    "baichuan2_13b": _layer(1, "model.layers.1.", _W_PACK),
}
