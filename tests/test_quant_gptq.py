"""GPTQ math on small matrices with synthetic Hessians."""

from __future__ import annotations

from pathlib import Path

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


def test_hessians_are_shared_by_linears_reading_one_input(tiny_models: dict[str, Path]) -> None:
    from trtllm_forge.quant.capture import input_hessians
    from trtllm_forge.quant.quantize import load_hf_model

    model = load_hf_model(tiny_models["llama"])
    attn, mlp = "model.layers.1.self_attn.", "model.layers.1.mlp."
    names = [
        attn + "q_proj",
        attn + "k_proj",
        attn + "v_proj",
        attn + "o_proj",
        mlp + "gate_proj",
        mlp + "up_proj",
    ]
    batches = [
        torch.randint(0, 256, (2, 8), generator=torch.Generator().manual_seed(i)) for i in range(2)
    ]
    hessians = input_hessians(model, names, batches)
    assert hessians[names[0]] is hessians[names[1]] is hessians[names[2]]
    assert hessians[names[4]] is hessians[names[5]]
    assert hessians[names[3]] is not hessians[names[0]]
    inputs: list[torch.Tensor] = []
    hook = dict(model.named_modules())[names[1]].register_forward_pre_hook(
        lambda _m, a: inputs.append(a[0].reshape(-1, a[0].shape[-1]))
    )
    with torch.no_grad():
        for ids in batches:
            model.model(input_ids=ids)
    hook.remove()
    x = torch.cat(inputs).double()
    assert torch.allclose(
        hessians[names[1]].double(), 2 * x.T @ x / x.shape[0], rtol=1e-5, atol=1e-6
    )
