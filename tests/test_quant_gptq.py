"""GPTQ math on small matrices with synthetic Hessians."""

from __future__ import annotations

import pytest
import torch

from trtllm_forge.quant import layout
from trtllm_forge.quant.gptq import gptq_quantize


def _problem(seed: int = 0, out: int = 16, inp: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(out, inp, generator=gen)
    # Correlated inputs with uneven channel energy: where GPTQ beats rounding.
    mix = torch.randn(inp, inp, generator=gen) / inp**0.5
    x = torch.randn(512, inp, generator=gen) @ (torch.eye(inp) + mix)
    x = x * torch.linspace(0.2, 3.0, inp)
    return w, 2 * x.T @ x / x.shape[0]


def _hessian_error(w: torch.Tensor, q: torch.Tensor, h: torch.Tensor) -> float:
    d = q - w
    return float(torch.einsum("oi,ij,oj->", d, h, d))


def _rtn(w: torch.Tensor, group: int) -> torch.Tensor:
    scale = layout.scale_from_amax(layout.group_amax(w, group), layout.INT4_MAX)
    return layout.dequantize_int4(layout.pack_int4_rows(layout.quantize_int4(w, scale)), scale)


@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_lands_on_the_int4_grid_and_beats_rounding(act_order: bool) -> None:
    w, h = _problem()
    qdq, scales = gptq_quantize(w, h, group_size=32, damping=0.01, act_order=act_order)
    assert scales.shape == (16, 4)
    codes = qdq / layout.expand_groups(scales, 128)
    assert torch.allclose(codes, codes.round(), atol=1e-4)
    assert codes.abs().max() <= 8
    assert _hessian_error(w, qdq, h) < 0.8 * _hessian_error(w, _rtn(w, 32), h)


def test_identity_hessian_reduces_to_round_to_nearest() -> None:
    w, _ = _problem(seed=1)
    qdq, _ = gptq_quantize(w, torch.eye(128), group_size=64)
    assert torch.allclose(qdq, _rtn(w, 64), atol=1e-6)


def test_dead_inputs_are_zeroed() -> None:
    w, h = _problem(seed=2)
    h[5, :] = 0
    h[:, 5] = 0
    qdq, _ = gptq_quantize(w, h, group_size=64)
    assert torch.all(qdq[:, 5] == 0)
