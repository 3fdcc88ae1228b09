"""forge's own Baichuan 2 torch model (models/native.py says why and what for).

Module names are the checkpoint's (``model.layers.{i}.self_attn.W_pack`` …), so the
safetensors load by name and calibration finds the linears where the family's tensor
table (models/baichuan.py) says they are. The math follows the checkpoints' definition
as models/baichuan.py describes it, written here without any TensorRT-LLM name or the
converted checkpoint: the LM head normalizes its rows itself.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from trtllm_forge.models.baichuan_settings import BaichuanSettings
from trtllm_forge.models.native import (
    NativeCache,
    NativeCausalLM,
    NativeOutput,
    RMSNorm,
    Step,
    attend,
    make_step,
)


def alibi_slopes(heads: int) -> torch.Tensor:
    """Slope of each head: for ``n`` a power of two, ``r, r², …, rⁿ`` with ``r = 2^(-8/n)``;
    otherwise the largest power of two's slopes, then every other slope of twice it."""

    def geometric(n: int) -> list[float]:
        ratio = 2.0 ** (-8.0 / n)
        return [ratio ** (i + 1) for i in range(n)]

    power = 2 ** math.floor(math.log2(heads))
    slopes = geometric(power) + geometric(2 * power)[0::2][: heads - power]
    return torch.tensor(slopes, dtype=torch.float32)


def rope_tables(settings: BaichuanSettings, positions: torch.Tensor) -> torch.Tensor:
    """[2, batch, 1, new, head_dim]: cos and sin of each channel, the frequency table
    repeated for the two halves (channel ``j`` turns with channel ``j + head_dim/2``)."""
    dim = settings.head_dim
    channels = torch.arange(0, dim, 2, dtype=torch.float32, device=positions.device)
    inv_freq = 1.0 / (settings.rope_base ** (channels / dim))
    angles = positions.to(torch.float32)[..., None] * inv_freq
    table = torch.cat([angles, angles], dim=-1)[:, None]
    return torch.stack([table.cos(), table.sin()])


def rotate_halves(x: torch.Tensor, tables: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    swapped = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    tables = tables.to(x.dtype)  # computed in float32; applied in the model's dtype
    return x * tables[0] + swapped * tables[1]


class Attention(nn.Module):
    def __init__(self, settings: BaichuanSettings, layer: int) -> None:
        super().__init__()
        self.settings, self.layer = settings, layer
        self.W_pack = nn.Linear(settings.hidden, 3 * settings.hidden, bias=False)
        self.o_proj = nn.Linear(settings.hidden, settings.hidden, bias=False)

    def forward(self, x: torch.Tensor, tables: torch.Tensor | None, step: Step) -> torch.Tensor:
        heads = self.settings.heads
        q, k, v = (
            part.unflatten(-1, (heads, -1)).transpose(1, 2)
            for part in self.W_pack(x).chunk(3, dim=-1)
        )
        bias = None
        if tables is not None:
            q, k = rotate_halves(q, tables), rotate_halves(k, tables)
        else:  # ALiBi: slope · (key slot - query slot) on the scores
            slopes = alibi_slopes(heads).to(step.slots.device)
            bias = slopes[:, None, None] * step.slots[None]
        keys, values = step.cache.extend(self.layer, k, v)
        return self.o_proj(attend(q, keys, values, step, bias))


class MLP(nn.Module):
    def __init__(self, settings: BaichuanSettings) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(settings.hidden, settings.ffn, bias=False)
        self.up_proj = nn.Linear(settings.hidden, settings.ffn, bias=False)
        self.down_proj = nn.Linear(settings.ffn, settings.hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))


class Layer(nn.Module):
    def __init__(self, settings: BaichuanSettings, layer: int) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(settings.hidden, settings.eps)
        self.self_attn = Attention(settings, layer)
        self.post_attention_layernorm = RMSNorm(settings.hidden, settings.eps)
        self.mlp = MLP(settings)

    def forward(self, h: torch.Tensor, tables: torch.Tensor | None, step: Step) -> torch.Tensor:
        h = h + self.self_attn(self.input_layernorm(h), tables, step)
        return h + self.mlp(self.post_attention_layernorm(h))


class Body(nn.Module):
    """``model.*``: the decoder without its head (what calibration runs)."""

    def __init__(self, settings: BaichuanSettings) -> None:
        super().__init__()
        self.settings = settings
        self.embed_tokens = nn.Embedding(settings.vocab, settings.hidden)
        self.layers = nn.ModuleList(Layer(settings, i) for i in range(settings.layers))
        self.norm = RMSNorm(settings.hidden, settings.eps)

    def run(self, input_ids: torch.Tensor, step: Step) -> torch.Tensor:
        h = self.embed_tokens(input_ids)
        tables = None if self.settings.alibi else rope_tables(self.settings, step.positions)
        for layer in self.layers:
            h = layer(h, tables, step)
        return self.norm(h)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: NativeCache | None = None,
        use_cache: bool = True,
    ) -> NativeOutput:
        step = make_step(input_ids, attention_mask, position_ids, past_key_values)
        hidden = self.run(input_ids, step)
        return NativeOutput(None, step.cache if use_cache else None, hidden)


class NormHead(nn.Module):
    """The LM head: rows of ``weight`` divided by their L2 norm on every use."""

    def __init__(self, settings: BaichuanSettings) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(settings.vocab, settings.hidden))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ nn.functional.normalize(self.weight, dim=-1).T


class BaichuanNative(NativeCausalLM):
    def __init__(self, settings: BaichuanSettings) -> None:
        super().__init__(settings.vocab)
        self.model = Body(settings)
        self.lm_head = NormHead(settings)

    def decode(self, input_ids: torch.Tensor, step: Step) -> torch.Tensor:
        return self.model.run(input_ids, step)

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden)
