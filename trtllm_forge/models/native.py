"""forge's own torch models of architectures transformers does not ship (Baichuan 2, ChatGLM).

Such a checkpoint's repository holds the Python code that defines the model, and forge
never runs repository code (sources/policy.py). Its family therefore brings a small
torch model written from ``config.json`` and the safetensors alone, with the
checkpoint's own module names, and this module gives it the part of the transformers
``CausalLM`` interface forge uses:

* verify's reference (engine/verify.py): ``model(input_ids=, attention_mask=,
  position_ids=, past_key_values=, use_cache=)`` returning ``.logits`` and
  ``.past_key_values``, ``model.config.vocab_size``;
* calibration's model (quant/quantize.py): ``nn.Linear`` modules under the HF names the
  family's tensor table reads, a cache whose ``layers[i].keys / .values`` are what the
  KV cache stores (keys after rope).

checkpoint/native.py builds one from a folder. It computes from the HF tensors and the
HF meaning of the config, never from the converted checkpoint or the ONNX lowering, so a
converter or lowering mistake shows up as a verify difference instead of being copied
into the reference.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

from trtllm_forge.errors import ForgeError, source_error


@dataclass
class CacheLayer:
    keys: torch.Tensor  # [batch, kv_heads, seen, head_dim], after rope
    values: torch.Tensor


@dataclass
class NativeCache:
    """Per layer, every key and value seen so far (transformers' DynamicCache layout)."""

    layers: list[CacheLayer] = field(default_factory=list)

    def seen(self) -> int:
        return int(self.layers[0].keys.shape[2]) if self.layers else 0

    def extend(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if layer == len(self.layers):
            self.layers.append(CacheLayer(k, v))
        else:
            entry = self.layers[layer]
            entry.keys = torch.cat([entry.keys, k], dim=2)
            entry.values = torch.cat([entry.values, v], dim=2)
        return self.layers[layer].keys, self.layers[layer].values


@dataclass
class NativeOutput:
    logits: torch.Tensor | None
    past_key_values: NativeCache | None
    last_hidden_state: torch.Tensor | None = None


@dataclass
class Step:
    """What every layer of one forward call shares: positions, masks, the cache."""

    positions: torch.Tensor  # [batch, new] rope position of each new token
    allowed: torch.Tensor  # [batch, 1, new, seen + new] which keys each query may read
    slots: torch.Tensor  # [new, seen + new] key slot - query slot (ALiBi distances)
    cache: NativeCache


def make_step(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    position_ids: torch.Tensor | None,
    cache: NativeCache | None,
) -> Step:
    """Causal attention over the cache plus the new tokens, padded keys excluded.

    ``attention_mask`` covers every slot (cached and new), as transformers' does; without
    it every slot is a real token. Positions default to the count of real tokens before.
    """
    cache = cache if cache is not None else NativeCache()
    batch, new = input_ids.shape
    total, device = cache.seen() + new, input_ids.device
    if attention_mask is None:
        attention_mask = torch.ones((batch, total), dtype=torch.long, device=device)
    real = attention_mask.to(torch.bool)
    if position_ids is None:
        position_ids = (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)[:, -new:]
    query_slot = torch.arange(total - new, total, device=device)[:, None]
    key_slot = torch.arange(total, device=device)[None, :]
    causal = key_slot <= query_slot
    allowed = causal[None, None] & real[:, None, None, :]
    distances = (key_slot - query_slot).to(torch.float32)
    return Step(position_ids.long(), allowed, distances, cache)


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    step: Step,
    scores_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Softmax attention of q [b, h, new, d] over k, v [b, kv, seen + new, d] -> [b, new, h·d].

    KV head ``g`` serves query heads ``g·h/kv .. (g+1)·h/kv - 1``; ``scores_bias``
    [h, new, seen + new] is added to the scaled scores (ALiBi).
    """
    group = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(group, dim=1)
    v = v.repeat_interleave(group, dim=1)
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    if scores_bias is not None:
        scores = scores + scores_bias[None].to(scores.dtype)
    scores = scores.masked_fill(~step.allowed, torch.finfo(scores.dtype).min)
    out = torch.softmax(scores, dim=-1) @ v
    return out.transpose(1, 2).flatten(2)


class RMSNorm(nn.Module):
    """``w · x / sqrt(mean(x²) + eps)`` over the last dimension."""

    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


class NativeCausalLM(nn.Module):
    """Base of the native models: ``decode`` gives the final hidden states, ``head`` the
    logits; subclasses build the modules under the checkpoint's names."""

    def __init__(self, vocab_size: int) -> None:
        super().__init__()
        self.config = SimpleNamespace(vocab_size=vocab_size)

    def decode(self, input_ids: torch.Tensor, step: Step) -> torch.Tensor:
        raise NotImplementedError

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: NativeCache | None = None,
        use_cache: bool = True,
    ) -> NativeOutput:
        step = make_step(input_ids, attention_mask, position_ids, past_key_values)
        hidden = self.decode(input_ids, step)
        cache = step.cache if use_cache else None
        return NativeOutput(self.head(hidden).float(), cache, hidden)


# Buffers some checkpoints save next to the weights (rope tables); never parameters.
_BUFFERS = re.compile(r".*(rotary_emb|rotary_pos_emb)\.inv_freq")


def load_weights(model: nn.Module, files: Mapping[str, Path]) -> nn.Module:
    """Fill ``model``'s parameters (float32) from ``files`` (tensor name -> safetensors file).

    Every parameter must be present with its exact shape, and every stored tensor must
    be a parameter or a known buffer: a mismatch means config.json and the weights
    disagree, which is the checkpoint's fault (exit 5).
    """
    from safetensors import safe_open

    params = dict(model.named_parameters())
    files = {n: p for n, p in files.items() if not _BUFFERS.fullmatch(n)}
    _check_names(set(params), set(files))
    by_file: dict[Path, list[str]] = {}
    for name, path in files.items():
        by_file.setdefault(path, []).append(name)
    with torch.no_grad():
        for path, names in by_file.items():
            with safe_open(str(path), framework="pt") as handle:
                for name in names:
                    tensor = handle.get_tensor(name)
                    if tuple(tensor.shape) != tuple(params[name].shape):
                        raise _mismatch(
                            f"{name} has shape {list(tensor.shape)}, config.json "
                            f"implies {list(params[name].shape)}"
                        )
                    params[name].copy_(tensor.to(torch.float32))
    return model.eval()


def _check_names(expected: set[str], stored: set[str]) -> None:
    missing, unknown = sorted(expected - stored), sorted(stored - expected)
    if missing:
        raise _mismatch(f"{len(missing)} tensor(s) are missing: {', '.join(missing[:5])}")
    if unknown:
        raise _mismatch(f"{len(unknown)} tensor(s) are not part of it: {', '.join(unknown[:5])}")


def _mismatch(what: str) -> ForgeError:
    return source_error(
        f"the checkpoint does not match the model its config.json describes: {what}",
        hint="the weights and config.json come from different models, or a shard is truncated",
    )
