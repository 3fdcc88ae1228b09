"""Tiny real Hugging Face checkpoints with seeded random weights, for tests.

``make_tiny_hf("llama", tmp_path)`` writes a directory that looks exactly like a
hub snapshot (config.json + model.safetensors [+ tokenizer files]) but holds a
2-layer, 64-wide model, so every stage can run on it in seconds on a CPU.

Weights are re-drawn after construction: transformers initialises norms to 1
and biases to 0, which would hide a swapped-norm or dropped-bias bug in the
converter, so norms get ``1 + noise`` and biases get noise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

TINY_DEFAULTS: dict[str, Any] = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 128,
    "vocab_size": 256,
    "max_position_embeddings": 128,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 0,
}

ARCHES = ("llama", "mistral", "qwen2", "gpt2", "gpt_neox", "gpt_bigcode", "gptj", "gemma")
# What recipes/tiny/make_models.py writes for the shipped tiny recipes (recipes/tiny-*.yaml).
RECIPE_ARCHES = (
    *("llama", "mistral", "qwen2"),
    *("falcon", "bloom", "mpt"),
    *("gpt2", "gpt_neox", "gpt_bigcode", "gptj", "gemma"),
    "gemma2",  # soft-caps, sandwich norms, a 16-token window on layer 0
)
ARCHES += ("falcon", "bloom", "mpt")
ARCHES += ("gemma2",)
ARCHES += ("qwen3", "phi3", "gemma3", "gemma3_mm", "mixtral", "qwen3_moe", "qwen2_moe")

# Per-arch changes to TINY_DEFAULTS: GPT-2-style configs name the FFN size n_inner and
# have no num_key_value_heads (GPTBigCode: multi_query); GPT-J rotates 8 of 16 channels.
_ARCH_DEFAULTS: dict[str, dict[str, Any]] = {
    "gpt2": {"num_key_value_heads": None, "n_inner": 128, "intermediate_size": None},
    "gpt_bigcode": {"num_key_value_heads": None, "n_inner": 128, "intermediate_size": None},
    "gptj": {
        "num_key_value_heads": None,
        "n_inner": 128,
        "intermediate_size": None,
        "rotary_dim": 8,
    },
    "gpt_neox": {
        "num_key_value_heads": None,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 10000.0,
            "partial_rotary_factor": 0.5,
        },
    },
    "gemma": {"head_dim": 16},
    # Gemma 2: every feature on and biting at this size. The 16-token window is shorter than
    # the engine tests' prompts + generations; the caps saturate part of the scores and
    # logits; query_pre_attn_scalar differs from head_dim (16).
    "gemma2": {
        "head_dim": 16,
        "sliding_window": 16,
        "query_pre_attn_scalar": 24,
        "attn_logit_softcapping": 1.0,
        "final_logit_softcapping": 1.0,
    },
    # Qwen3: head_dim 32 with hidden 64 and 4 heads (q is 128 wide, not 64), as real
    # Qwen3 checkpoints set head_dim apart from hidden / heads.
    "qwen3": {"head_dim": 32},
    # Phi-3: rope on half of each 16-channel head (Phi-4-mini rotates 3/4); a 16-token
    # window on every layer (Phi-3-mini: 2047), shorter than prompts + generations.
    "phi3": {"partial_rotary_factor": 0.5, "sliding_window": 16},
    # Gemma 3: a sliding layer (16-token window, local rope base 10 000) then a global one
    # (base 1 000 000, linear × 8), q/k norms, query_pre_attn_scalar 24 != head_dim 16.
    "gemma3": {
        "head_dim": 16,
        "sliding_window": 16,
        "query_pre_attn_scalar": 24,
        "layer_types": ["sliding_attention", "full_attention"],
        "rope_parameters": {
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0},
        },
    },
    # Gemma3ForConditionalGeneration: the same text decoder under text_config, plus a
    # one-layer vision tower the text-only engine ignores.
    "gemma3_mm": {},
    # Mixtral: 4 experts of intermediate 32, top-2 (the shape).
    "mixtral": {"num_local_experts": 4, "num_experts_per_tok": 2, "intermediate_size": 32},
    # Qwen3-MoE: Qwen3's attention, 4 experts of 32, top-2 without renormalization
    # (transformers' default norm_topk_prob false; Mixtral's tiny model renormalizes).
    "qwen3_moe": {
        "head_dim": 32,
        "num_experts": 4,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": 32,
        "norm_topk_prob": False,
    },
    # Qwen2-MoE: q/k/v biases, 4 routed experts of 32 (top-2, renormalized) and a shared
    # expert of 48 behind its sigmoid gate.
    "qwen2_moe": {
        "num_experts": 4,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": 32,
        "shared_expert_intermediate_size": 48,
        "norm_topk_prob": True,
    },
    # Falcon defaults to the old decoder (Falcon-7B: MQA, parallel attention, no biases);
    # new_decoder_architecture=True uses num_kv_heads (GQA) and two layernorms.
    "falcon": {
        "num_key_value_heads": None,
        "intermediate_size": None,
        "num_kv_heads": 2,
        "ffn_hidden_size": 128,
    },
    # BLOOM's FFN is 4 x hidden and it has no position table (ALiBi).
    "bloom": {
        "num_key_value_heads": None,
        "intermediate_size": None,
        "max_position_embeddings": None,
    },
    # MPT: FFN 4 x hidden, ALiBi over max_seq_len slots, no biases.
    "mpt": {
        "num_key_value_heads": None,
        "intermediate_size": None,
        "max_position_embeddings": None,
        "max_seq_len": 128,
    },
}

# A small, varied English text the in-memory tokenizer is trained on.
_TOKENIZER_TEXT = """\
The quick brown fox jumps over the lazy dog. Once upon a time there was a small model.
It lived in a tiny checkpoint and answered every prompt with random words.
Hello world! How are you today? I am fine, thank you. What is the capital of France?
Paris is the capital of France. One two three four five six seven eight nine ten.
A forge turns raw metal into tools; this forge turns checkpoints into engines.
Numbers: 0 1 2 3 4 5 6 7 8 9. Letters: a b c d e f g h i j k l m n o p q r s t u v w x y z.
"""
SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")  # ids 0..3: pad, bos, eos, unk


def _gemma3_wrapper(**text: Any) -> Any:
    """A Gemma3Config (multimodal) around the tiny Gemma 3 text config."""
    import transformers

    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1}
    vision |= {"num_attention_heads": 2, "image_size": 32, "patch_size": 8}
    text = {**_ARCH_DEFAULTS["gemma3"], **text}
    return transformers.Gemma3Config(
        text_config=text,
        vision_config=vision,
        mm_tokens_per_image=4,
        boi_token_index=253,
        eoi_token_index=254,
        image_token_index=255,
    )


def _config_class(arch: str) -> Any:
    import transformers

    classes = {
        "llama": transformers.LlamaConfig,
        "mistral": transformers.MistralConfig,
        "qwen2": transformers.Qwen2Config,
        "gpt2": transformers.GPT2Config,
        "gpt_neox": transformers.GPTNeoXConfig,
        "gpt_bigcode": transformers.GPTBigCodeConfig,
        "gptj": transformers.GPTJConfig,
        "gemma": transformers.GemmaConfig,
        "gemma2": transformers.Gemma2Config,
        "qwen3": transformers.Qwen3Config,
        "phi3": transformers.Phi3Config,
        "gemma3": transformers.Gemma3TextConfig,
        "gemma3_mm": _gemma3_wrapper,
        "mixtral": transformers.MixtralConfig,
        "qwen3_moe": transformers.Qwen3MoeConfig,
        "qwen2_moe": transformers.Qwen2MoeConfig,
        "falcon": transformers.FalconConfig,
        "bloom": transformers.BloomConfig,
        "mpt": transformers.MptConfig,
    }
    if arch not in classes:
        raise ValueError(f"unknown tiny arch {arch!r}; choose one of {', '.join(ARCHES)}")
    return classes[arch]


def _perturb_weights(model: Any, seed: int) -> None:
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=gen, dtype=torch.float32)
            if "norm" in name or ".ln_" in name or name.startswith("ln_"):
                param.copy_(1.0 + 0.1 * noise)
            elif name.endswith(".bias"):
                param.copy_(0.1 * noise)
            else:
                param.copy_(0.05 * noise)


def make_tiny_tokenizer(out_dir: Path, vocab_size: int = 256) -> Any:
    """Train a tiny byte-level BPE tokenizer in memory and save it as a fast tokenizer.

    Ids 0..3 are ``<pad> <s> </s> <unk>`` to match the tiny model config. ASCII text
    round-trips through encode/decode; other characters map to ``<unk>``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    # ByteLevel because AutoTokenizer forces Qwen2Tokenizer (ByteLevel) on qwen2 dirs; an
    # empty initial alphabet keeps the vocab under 256 (unseen bytes become <unk>).
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        show_progress=False,
        initial_alphabet=[],
    )
    tok.train_from_iterator(_TOKENIZER_TEXT.splitlines(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
    )
    fast.save_pretrained(out_dir)
    return fast


def make_tiny_hf(
    arch: str,
    out_dir: Path,
    *,
    seed: int = 0,
    with_tokenizer: bool = False,
    **config_overrides: Any,
) -> Path:
    """Build a tiny random-weight HF causal LM and ``save_pretrained`` it to ``out_dir``.

    Args:
        arch: ``llama``, ``mistral`` or ``qwen2`` (qwen2 has q/k/v biases).
        out_dir: directory to write (created if needed).
        seed: weight seed; the same seed gives byte-identical weights.
        with_tokenizer: also save a tiny trained BPE tokenizer (vocab <= model vocab).
        **config_overrides: config fields, e.g. ``num_key_value_heads=1``,
            ``tie_word_embeddings=True``, ``rope_scaling={...}``, ``vocab_size=250``,
            ``torch_dtype="bfloat16"`` (the dtype the weights are saved in).
    Returns:
        ``out_dir``.
    """
    import torch
    import transformers

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fields = {**TINY_DEFAULTS, **_ARCH_DEFAULTS.get(arch, {}), **config_overrides}
    fields = {k: v for k, v in fields.items() if v is not None}
    dtype_name = fields.pop("torch_dtype", fields.pop("dtype", "float32"))
    dtype = getattr(torch, dtype_name) if isinstance(dtype_name, str) else dtype_name
    config = _config_class(arch)(**fields)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config)
    _perturb_weights(model, seed)
    if config.tie_word_embeddings:
        model.tie_weights()
    model = model.to(dtype)
    model.config.dtype = dtype
    model.save_pretrained(out_dir, safe_serialization=True)
    if with_tokenizer:
        make_tiny_tokenizer(out_dir, vocab_size=min(int(config.vocab_size), 256))
    return out_dir


# Architectures transformers has no class for (their repositories hold the modeling
# code, which forge never runs): the tiny folder is written directly, config.json and
# model.safetensors with the tensor names the published checkpoints use.
NATIVE_ARCHES = ("chatglm", "baichuan2_7b", "baichuan2_13b")

_CHATGLM_CONFIG: dict[str, Any] = {
    "architectures": ["ChatGLMModel"],
    "model_type": "chatglm",
    "num_layers": 2,
    "hidden_size": 64,
    "num_attention_heads": 4,
    "multi_query_attention": True,
    "multi_query_group_num": 2,
    "kv_channels": 16,
    "ffn_hidden_size": 128,
    "padded_vocab_size": 256,
    "seq_length": 128,
    "layernorm_epsilon": 1e-5,
    "rmsnorm": True,
    "post_layer_norm": True,
    "add_bias_linear": False,
    "add_qkv_bias": True,
    "apply_residual_connection_post_layernorm": False,
    "apply_query_key_layer_scaling": True,
    "attention_softmax_in_fp32": True,
    "original_rope": True,
    "rope_ratio": 1,
    "tie_word_embeddings": False,
    "torch_dtype": "float32",
    "eos_token_id": 2,
    "pad_token_id": 0,
}
# What chatglm3-6b's config.json maps (the classes live in the repository's .py files).
CHATGLM_AUTO_MAP = {
    "AutoConfig": "configuration_chatglm.ChatGLMConfig",
    "AutoModel": "modeling_chatglm.ChatGLMForConditionalGeneration",
    "AutoModelForCausalLM": "modeling_chatglm.ChatGLMForConditionalGeneration",
}


def _chatglm_shapes(config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    hidden, ffn = config["hidden_size"], config["ffn_hidden_size"]
    head = config["kv_channels"]
    qkv = (config["num_attention_heads"] + 2 * config["multi_query_group_num"]) * head
    vocab = config["padded_vocab_size"]
    shapes: dict[str, tuple[int, ...]] = {
        "transformer.embedding.word_embeddings.weight": (vocab, hidden),
        "transformer.encoder.final_layernorm.weight": (hidden,),
        "transformer.output_layer.weight": (vocab, hidden),
    }
    for i in range(config["num_layers"]):
        layer = f"transformer.encoder.layers.{i}."
        shapes |= {
            f"{layer}input_layernorm.weight": (hidden,),
            f"{layer}self_attention.query_key_value.weight": (qkv, hidden),
            f"{layer}self_attention.dense.weight": (hidden, config["num_attention_heads"] * head),
            f"{layer}post_attention_layernorm.weight": (hidden,),
            f"{layer}mlp.dense_h_to_4h.weight": (2 * ffn, hidden),
            f"{layer}mlp.dense_4h_to_h.weight": (hidden, ffn),
        }
        if config["add_qkv_bias"]:
            shapes[f"{layer}self_attention.query_key_value.bias"] = (qkv,)
    return shapes


# Baichuan 2's two config classes: the 7B one (rope) defines max_position_embeddings, the
# 13B one (ALiBi) model_max_length only. The 13B tiny has 6 heads, not a power of two, so
# its ALiBi slopes take the interleaved branch.
_BAICHUAN_COMMON: dict[str, Any] = {
    "architectures": ["BaichuanForCausalLM"],
    "model_type": "baichuan",
    "tokenizer_class": "BaichuanTokenizer",
    "hidden_act": "silu",
    "num_hidden_layers": 2,
    "intermediate_size": 128,
    "vocab_size": 256,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False,
    "z_loss_weight": 0,
    "torch_dtype": "float32",
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 0,
}
_BAICHUAN_7B_CONFIG = {
    **_BAICHUAN_COMMON,
    "hidden_size": 64,
    "num_attention_heads": 4,
    "max_position_embeddings": 128,
    "model_max_length": 128,
}
_BAICHUAN_13B_CONFIG = {
    **_BAICHUAN_COMMON,
    "hidden_size": 96,
    "num_attention_heads": 6,
    "model_max_length": 128,
}
# What Baichuan2-7B-Base's config.json maps.
BAICHUAN_AUTO_MAP = {
    "AutoConfig": "configuration_baichuan.BaichuanConfig",
    "AutoModelForCausalLM": "modeling_baichuan.BaichuanForCausalLM",
}


def _baichuan_shapes(config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    hidden, ffn, vocab = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    shapes: dict[str, tuple[int, ...]] = {
        "model.embed_tokens.weight": (vocab, hidden),
        "model.norm.weight": (hidden,),
        "lm_head.weight": (vocab, hidden),
    }
    for i in range(config["num_hidden_layers"]):
        layer = f"model.layers.{i}."
        shapes |= {
            f"{layer}input_layernorm.weight": (hidden,),
            f"{layer}self_attn.W_pack.weight": (3 * hidden, hidden),
            f"{layer}self_attn.o_proj.weight": (hidden, hidden),
            f"{layer}post_attention_layernorm.weight": (hidden,),
            f"{layer}mlp.gate_proj.weight": (ffn, hidden),
            f"{layer}mlp.up_proj.weight": (ffn, hidden),
            f"{layer}mlp.down_proj.weight": (hidden, ffn),
        }
    return shapes


def _random_tensors(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, Any]:
    """Norms 1 + noise, biases noise, weights small noise (as _perturb_weights)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, shape in shapes.items():
        noise = torch.randn(shape, generator=gen, dtype=torch.float32)
        if "norm" in name:
            tensors[name] = 1.0 + 0.1 * noise
        elif name.endswith(".bias"):
            tensors[name] = 0.1 * noise
        else:
            tensors[name] = 0.05 * noise
    return tensors


def make_tiny_native(
    arch: str,
    out_dir: Path,
    *,
    seed: int = 0,
    with_tokenizer: bool = False,
    auto_map: dict[str, str] | None = None,
    **config_overrides: Any,
) -> Path:
    """Write a tiny ``arch`` (one of NATIVE_ARCHES) folder: config.json + model.safetensors.

    ``auto_map`` goes into config.json as the published checkpoints have it.
    """
    import json

    import torch
    from safetensors.torch import save_file

    makers = {
        "chatglm": (_CHATGLM_CONFIG, _chatglm_shapes),
        "baichuan2_7b": (_BAICHUAN_7B_CONFIG, _baichuan_shapes),
        "baichuan2_13b": (_BAICHUAN_13B_CONFIG, _baichuan_shapes),
    }
    if arch not in makers:
        raise ValueError(f"unknown native tiny arch {arch!r}; choose one of {NATIVE_ARCHES}")
    defaults, shapes = makers[arch]
    config = {**defaults, **config_overrides}
    if auto_map is not None:
        config["auto_map"] = auto_map
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = _random_tensors(shapes(config), seed)
    if arch == "chatglm":  # the published checkpoints also store the rope buffer
        dim = config["kv_channels"] // 2
        tensors["transformer.rotary_pos_emb.inv_freq"] = 1.0 / (
            10000 ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)
        )
    dtype = getattr(torch, config["torch_dtype"])
    tensors = {name: t.to(dtype).contiguous() for name, t in tensors.items()}
    save_file(tensors, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    if with_tokenizer:
        make_tiny_tokenizer(out_dir, vocab_size=256)
    return out_dir
