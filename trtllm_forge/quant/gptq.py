"""GPTQ: quantize weight columns one at a time, pushing each rounding error onto the
columns not yet quantized, weighted by the inverse Hessian of the layer's inputs
(Frantar et al., 2022, "GPTQ: Accurate Post-Training Quantization for Generative
Pre-trained Transformers"). Its format and hooks are int4_wo's (quant/int4_wo.py).

forge implements it itself rather than through ModelOpt because ModelOpt 0.47's
GPTQ has no activation-order option. Output: symmetric INT4 with one scale per
(output channel, contiguous input group), the layout TensorRT-LLM's groupwise
kernels read, so no ``g_idx`` permutation is ever stored.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from trtllm_forge.context import NullProgress, Progress
from trtllm_forge.quant import int4_wo
from trtllm_forge.quant.record_types import Method

if TYPE_CHECKING:
    import torch
    from torch import nn

    from trtllm_forge.quant.calibration import CalibrationData
    from trtllm_forge.quant.result import QuantResult

    class GptqParams(Protocol):
        """The validated parameters (quant/params.py builds their model from the recipe section)."""

        group_size: int
        damping: float
        act_order: bool


BLOCK = 128  # columns per lazy-batch update; a multiple of every allowed group size
_NO_PROGRESS = NullProgress()


def inverse_hessian_factor(hessian: torch.Tensor, damping: float) -> torch.Tensor:
    """Upper Cholesky factor of ``(H + λI)⁻¹`` with ``λ = damping · mean(diag H)``."""
    import torch

    # float64 squares of a 14,336-wide MLP input are 1.6 GB each: at most two are alive at
    # once (docs/performance.md, the layer-by-layer GPTQ memory).
    h = hessian.to(torch.float64, copy=True)
    h.diagonal().add_(damping * h.diagonal().mean())
    lower = torch.linalg.cholesky(h)
    del h
    inverse = torch.cholesky_inverse(lower)
    del lower
    factor: torch.Tensor = torch.linalg.cholesky(inverse, upper=True)
    del inverse
    return factor.float()


def gptq_quantize(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    *,
    group_size: int,
    damping: float = 0.01,
    act_order: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GPTQ-quantize ``weight [out, in]`` to INT4 groups.

    Returns the quantized-dequantized weight (fp32, every value ``q × scale``
    with ``q`` in [-8, 7]) and the scales ``[out, in / group_size]``.

    Without ``act_order`` a group's scale is taken when GPTQ reaches the group,
    from the already error-corrected weights (as in the paper). With
    ``act_order`` columns are visited by decreasing Hessian diagonal, so groups
    are no longer visited contiguously; their scales are then fixed up front from
    the original weights ("static groups"), which keeps groups contiguous in
    memory.
    """
    import torch

    from trtllm_forge.quant import layout

    w = weight.detach().to(torch.float32, copy=True)
    h = hessian.to(torch.float32, copy=True)
    n_cols = w.shape[1]
    dead = h.diagonal() == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    scales = layout.scale_from_amax(layout.group_amax(w, group_size), layout.INT4_MAX)
    order = torch.argsort(h.diagonal(), descending=True) if act_order else torch.arange(n_cols)
    if act_order:  # without it the order is the identity: no permuted copies
        w, h = w[:, order], h[order][:, order]
    h_inv = inverse_hessian_factor(h, damping)
    del h
    qdq = torch.zeros_like(w)
    columns = order.tolist()  # original index of each visited column (plain ints: hot loop)
    for start in range(0, n_cols, BLOCK):
        end = min(start + BLOCK, n_cols)
        block = w[:, start:end].clone()
        errors = torch.zeros_like(block)
        _quantize_block(
            block,
            errors,
            qdq[:, start:end],
            h_inv[start:end, start:end],
            scales,
            columns[start:end],
            group_size,
            act_order,
        )
        w[:, end:] -= errors @ h_inv[start:end, end:]
    del w, h_inv
    if not act_order:
        return qdq, scales
    return qdq[:, torch.argsort(order)], scales


def _quantize_block(
    block: torch.Tensor,
    errors: torch.Tensor,
    qdq: torch.Tensor,
    h_inv: torch.Tensor,
    scales: torch.Tensor,
    columns: list[int],
    group_size: int,
    act_order: bool,
) -> None:
    """GPTQ's column loop over one block (``h_inv``: its square of the factor), in place.

    Launch-bound on a GPU (one column of a few thousand rows per step), so each step is
    as few kernels as the arithmetic allows: every column's views are taken once per
    block, ``q`` is written straight into ``qdq`` and the error into ``errors`` (the
    same operations, in the same order, as building them apart and copying them in)."""
    import torch

    from trtllm_forge.quant import layout

    cols, q_cols, err_cols = block.unbind(1), qdq.unbind(1), errors.unbind(1)
    rows = h_inv.unbind(0)
    for i, col in enumerate(columns):
        if not act_order and col % group_size == 0:
            amax = block[:, i : i + group_size].abs().amax(dim=1)
            scales[:, col // group_size] = layout.scale_from_amax(amax, layout.INT4_MAX)
        scale = scales[:, col // group_size]
        q = torch.div(cols[i], scale).round_().clamp_(-8, 7)
        torch.mul(q, scale, out=q_cols[i])
        err = torch.sub(cols[i], q_cols[i], out=err_cols[i]).div_(rows[i][i])
        block[:, i:].sub_(err[:, None] * rows[i][None, i:])


def quantize_model(
    model: nn.Module,
    data: CalibrationData | None,
    params: GptqParams,
    targets: list[str],
    progress: Progress = _NO_PROGRESS,
) -> QuantResult:
    """GPTQ every target linear from Hessians of the unquantized model's activations.

    All layers see the original (unquantized) activations, like ModelOpt's default
    non-layerwise GPTQ; this needs one calibration pass instead of one per layer.
    Linears reading the same input (q/k/v, gate/up) are solved as one stacked
    matrix: GPTQ treats rows independently, so this is the same result for a
    fraction of the per-column work.
    """
    import torch

    from trtllm_forge.quant import layout
    from trtllm_forge.quant.capture import input_hessians
    from trtllm_forge.quant.result import LinearQuant, QuantResult

    if data is None:
        raise ValueError("GPTQ needs calibration data")
    hessians = input_hessians(model, targets, data.batches(), progress)
    modules = dict(model.named_modules())
    groups: dict[int, list[str]] = {}
    for name in targets:
        groups.setdefault(id(hessians[name]), []).append(name)
    result = QuantResult()
    with progress.task("GPTQ", total=len(targets)) as task:
        for names in groups.values():
            weights = [modules[n].weight.detach().float() for n in names]
            qdq, scales = gptq_quantize(
                torch.cat(weights),
                hessians[names[0]],
                group_size=params.group_size,
                damping=params.damping,
                act_order=params.act_order,
            )
            rows = [w.shape[0] for w in weights]
            for name, part, scale in zip(
                names, torch.split(qdq, rows), torch.split(scales, rows), strict=True
            ):
                result.linears[name] = LinearQuant(part, scale * layout.INT4_MAX)
                task.advance()
    return result


# GPTQ stores int4_wo's format: INT4 groups without a pre-quant scale.
METHOD = Method(
    name="gptq",
    needs_data=True,
    uses_modelopt=False,
    formats=(int4_wo.FORMAT,),
    quantization_fields=int4_wo.group_fields(pre_quant_scale=False),
)
