"""forge's own ChatGLM 2/3 torch model (models/native.py says why and what for).

Module names are the checkpoint's, so the safetensors load by name and calibration finds
``transformer.encoder.layers.{i}.self_attention.query_key_value`` and the other linears
where the family's tensor table (models/chatglm.py) says they are. The math follows the
checkpoints' definition as models/chatglm.py describes it, written here without any
TensorRT-LLM name or the converted checkpoint.
"""

from __future__ import annotations

import torch
from torch import nn

from trtllm_forge.models.chatglm_settings import ChatGLMSettings
from trtllm_forge.models.native import NativeCausalLM, RMSNorm, Step, attend


def rope_pairs(settings: ChatGLMSettings, positions: torch.Tensor) -> torch.Tensor:
    """[batch, new, rotary_dim / 2, 2] (cos, sin) of each rotated channel pair.

    Pair ``i`` of a head turns by ``position · base^(-2i / rotary_dim)``.
    """
    dim = settings.rotary_dim
    exponents = torch.arange(0, dim, 2, dtype=torch.float32, device=positions.device) / dim
    inv_freq = 1.0 / (settings.rope_base**exponents)
    angles = positions.to(torch.float32)[..., None] * inv_freq
    return torch.stack([angles.cos(), angles.sin()], dim=-1)


def rotate_first_half(x: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (0, 1), (2, 3) … of the first ``rotary_dim`` channels of each
    head of x [batch, heads, new, head_dim]; the remaining channels pass through."""
    dim = pairs.shape[-2] * 2
    rotated, passed = x[..., :dim], x[..., dim:]
    even_odd = rotated.unflatten(-1, (-1, 2))
    pairs = pairs.to(x.dtype)  # computed in float32; applied in the model's dtype
    cos, sin = pairs[:, None, :, :, 0], pairs[:, None, :, :, 1]
    even, odd = even_odd[..., 0], even_odd[..., 1]
    turned = torch.stack([even * cos - odd * sin, odd * cos + even * sin], dim=-1)
    return torch.cat([turned.flatten(-2), passed], dim=-1)


class SelfAttention(nn.Module):
    def __init__(self, settings: ChatGLMSettings, layer: int) -> None:
        super().__init__()
        self.settings, self.layer = settings, layer
        s = settings
        width = (s.heads + 2 * s.groups) * s.head_dim
        self.query_key_value = nn.Linear(s.hidden, width, bias=s.qkv_bias)
        self.dense = nn.Linear(s.heads * s.head_dim, s.hidden, bias=False)

    def forward(self, x: torch.Tensor, pairs: torch.Tensor, step: Step) -> torch.Tensor:
        s = self.settings
        q, k, v = self.query_key_value(x).split(
            [s.heads * s.head_dim, s.groups * s.head_dim, s.groups * s.head_dim], dim=-1
        )
        q = rotate_first_half(_heads(q, s.heads), pairs)
        k = rotate_first_half(_heads(k, s.groups), pairs)
        keys, values = step.cache.extend(self.layer, k, _heads(v, s.groups))
        return self.dense(attend(q, keys, values, step))


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[b, new, heads · d] -> [b, heads, new, d]."""
    return x.unflatten(-1, (heads, -1)).transpose(1, 2)


class MLP(nn.Module):
    def __init__(self, settings: ChatGLMSettings) -> None:
        super().__init__()
        self.dense_h_to_4h = nn.Linear(settings.hidden, 2 * settings.ffn, bias=False)
        self.dense_4h_to_h = nn.Linear(settings.ffn, settings.hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated, linear = self.dense_h_to_4h(x).chunk(2, dim=-1)
        return self.dense_4h_to_h(nn.functional.silu(activated) * linear)


class Layer(nn.Module):
    def __init__(self, settings: ChatGLMSettings, layer: int) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(settings.hidden, settings.eps)
        self.self_attention = SelfAttention(settings, layer)
        self.post_attention_layernorm = RMSNorm(settings.hidden, settings.eps)
        self.mlp = MLP(settings)

    def forward(self, h: torch.Tensor, pairs: torch.Tensor, step: Step) -> torch.Tensor:
        h = h + self.self_attention(self.input_layernorm(h), pairs, step)
        return h + self.mlp(self.post_attention_layernorm(h))


class Encoder(nn.Module):
    def __init__(self, settings: ChatGLMSettings) -> None:
        super().__init__()
        self.layers = nn.ModuleList(Layer(settings, i) for i in range(settings.layers))
        self.final_layernorm = RMSNorm(settings.hidden, settings.eps)


class Embedding(nn.Module):
    def __init__(self, settings: ChatGLMSettings) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(settings.vocab, settings.hidden)


class Transformer(nn.Module):
    def __init__(self, settings: ChatGLMSettings) -> None:
        super().__init__()
        self.embedding = Embedding(settings)
        self.encoder = Encoder(settings)
        self.output_layer = nn.Linear(settings.hidden, settings.vocab, bias=False)


class ChatGLMNative(NativeCausalLM):
    """ChatGLM 2/3 as a causal LM: ``transformer.*`` holds everything, the head included."""

    def __init__(self, settings: ChatGLMSettings) -> None:
        super().__init__(settings.vocab)
        self.settings = settings
        self.transformer = Transformer(settings)

    def decode(self, input_ids: torch.Tensor, step: Step) -> torch.Tensor:
        h = self.transformer.embedding.word_embeddings(input_ids)
        pairs = rope_pairs(self.settings, step.positions)
        for layer in self.transformer.encoder.layers:
            h = layer(h, pairs, step)
        return self.transformer.encoder.final_layernorm(h)

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.transformer.output_layer(hidden)
