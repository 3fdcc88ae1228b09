"""Run calibration batches through a HF model and record what the algorithms need.

* :func:`kv_ranges` — per layer, max |K| and max |V| as stored in the KV cache
  (K after RoPE), read from the model's returned cache.
* :func:`input_hessians` — per linear, ``H = 2/n · Σ xᵀx`` over its inputs (GPTQ).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from trtllm_forge.context import NullProgress, Progress

_NO_PROGRESS = NullProgress()


def decoder(model: nn.Module) -> nn.Module:
    """The model without its LM head (HF ``model.model``), else the model itself.

    Calibration never needs logits (lm_head is never quantized), and the vocab
    projection is a fifth of a small model's FLOPs, so passes skip it.
    """
    inner = getattr(model, "model", None)
    return inner if isinstance(inner, nn.Module) else model


def _cache_layers(cache: object) -> list[tuple[torch.Tensor, torch.Tensor]]:
    layers = getattr(cache, "layers", None)
    if layers is not None:  # transformers >= 4.56
        return [(layer.keys, layer.values) for layer in layers]
    # Older DynamicCache keeps two parallel lists.
    return list(zip(cache.key_cache, cache.value_cache, strict=True))  # type: ignore[attr-defined]


@torch.no_grad()
def kv_ranges(
    model: nn.Module, batches: Iterable[torch.Tensor], progress: Progress = _NO_PROGRESS
) -> dict[int, tuple[float, float]]:
    """Layer index → (max |K|, max |V|) over all calibration tokens."""
    ranges: dict[int, tuple[float, float]] = {}
    batches = list(batches)
    body = decoder(model)
    with progress.task("calibrating KV cache", total=len(batches)) as task:
        for ids in batches:
            out = body(input_ids=ids, use_cache=True)
            for i, (k, v) in enumerate(_cache_layers(out.past_key_values)):
                old_k, old_v = ranges.get(i, (0.0, 0.0))
                ranges[i] = (max(old_k, k.abs().max().item()), max(old_v, v.abs().max().item()))
            task.advance()
    return ranges


@contextmanager
def _input_hooks(model: nn.Module, names: list[str], fn) -> Iterator[None]:  # type: ignore[no-untyped-def]
    modules = dict(model.named_modules())
    handles = [
        modules[name].register_forward_pre_hook(lambda _m, args, n=name: fn(n, args[0]))
        for name in names
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def input_hessians(
    model: nn.Module,
    names: list[str],
    batches: Iterable[torch.Tensor],
    progress: Progress = _NO_PROGRESS,
) -> dict[str, torch.Tensor]:
    """Linear name → ``2/n · XᵀX`` (fp32 ``[in, in]``) over every calibration token.

    Linears fed the very same tensor (q/k/v, gate/up) share one Hessian: it is
    computed once and the returned dict maps them to the same tensor object, so
    callers can tell which linears read one input.
    """
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    alias: dict[str, str] = {}
    # The previous hook's input, held so its identity (not a reusable address) is compared.
    previous: dict[str, object] = {"x": None, "owner": ""}

    def record(name: str, x: torch.Tensor) -> None:
        if x is previous["x"]:
            alias.setdefault(name, str(previous["owner"]))
            return
        previous["x"], previous["owner"] = x, name
        if name in alias:
            return
        flat = x.reshape(-1, x.shape[-1]).float()
        if name not in sums:
            sums[name] = torch.zeros(
                flat.shape[1], flat.shape[1], dtype=torch.float64, device=flat.device
            )
            counts[name] = 0
        sums[name] += (flat.T @ flat).double()
        counts[name] += flat.shape[0]

    batches = list(batches)
    with (
        _input_hooks(model, names, record),
        progress.task("collecting Hessians", total=len(batches)) as task,
    ):
        for ids in batches:
            decoder(model)(input_ids=ids)
            previous["x"] = None
            task.advance()
    # In place, one at a time (the same rounding as ``2 · sum / n``): a float64 sum of a
    # 14,336-wide input is 1.6 GB, and the copies would double a layer's peak.
    hessians = {}
    for name in list(sums):
        hessians[name] = sums.pop(name).mul_(2.0).div_(counts[name]).float()
    return {name: hessians[alias.get(name, name)] for name in names}
