"""What a quantization method hands to the writer: per-linear ranges, no layout yet.

Every method, whether it runs ModelOpt or forge's own math, reduces to the same
record per Hugging Face linear module, so one writer produces the TensorRT-LLM
layout for all of them (and fuses q/k/v, gate/up the same way for all).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from trtllm_forge.quant import layout


@dataclass(frozen=True)
class LinearQuant:
    """One quantized linear, before packing.

    Attributes:
        weight: fp32 ``[out, in]`` weight the quantized integers are taken from. When
            ``pre_quant_scale`` is set this is the *smoothed* weight (original / pqs).
        weight_amax: 0-d (per tensor), ``[out]`` (per channel) or ``[out, groups]``.
        input_amax: 0-d static activation range, or None (weight-only / dynamic).
        pre_quant_scale: ``[in]`` factor the activations are multiplied by, or None.
        fp8_weight_amax: W4A8 only: 0-d range of the FP8 quantizer that runs over the
            INT4-dequantized weight (ModelOpt calibrates it on the raw weight).
        smooth_factor: AWQ and SmoothQuant: the fp32 ``[in]`` factor ModelOpt multiplied the weight
            by when it smoothed it (``1 / pre_quant_scale`` before the scale was rounded
            to the calibration dtype), or None. In float16/bfloat16 calibration the
            rounded ``pre_quant_scale`` cannot give the smoothed weight back; this can
            (quant/linear_records.py).
    """

    weight: torch.Tensor
    weight_amax: torch.Tensor
    input_amax: torch.Tensor | None = None
    pre_quant_scale: torch.Tensor | None = None
    fp8_weight_amax: torch.Tensor | None = None
    smooth_factor: torch.Tensor | None = None

    def recompute_amax(self, weight: torch.Tensor) -> torch.Tensor:
        """The same granularity as ``weight_amax``, recomputed for a new weight."""
        if self.weight_amax.dim() == 0:
            return layout.tensor_amax(weight)
        if self.weight_amax.dim() == 1:
            return layout.channel_amax(weight)
        return layout.group_amax(weight, weight.shape[1] // self.weight_amax.shape[1])


@dataclass
class QuantResult:
    """Everything calibration found, keyed by HF module name.

    Attributes:
        linears: HF linear module name (``model.layers.0.self_attn.q_proj``) → record.
        kv_amax: decoder layer index → (max |K|, max |V|) after RoPE, if KV is calibrated.
        head: lm_head's record when the method quantizes it (``quant/head.py``), else None.
        stats: free-form numbers for the calibration report (JSON-serialisable).
    """

    linears: dict[str, LinearQuant] = field(default_factory=dict)
    kv_amax: dict[int, tuple[float, float]] = field(default_factory=dict)
    head: LinearQuant | None = None
    stats: dict[str, object] = field(default_factory=dict)


def share_input(parts: list[LinearQuant]) -> list[LinearQuant]:
    """Make linears that read the same activation agree on what happens to it.

    Pre-quant scales are averaged and each weight re-smoothed to the average (its
    ranges recomputed); the static activation range becomes the max; a per-tensor
    weight range becomes the max too (one GEMM, or a fused one, has one). This is
    ModelOpt's exporter rule (``preprocess_linear_fusion``), which keeps forge's
    checkpoints identical to ModelOpt's.
    """
    if len(parts) == 1:
        return parts
    parts = _shared_pre_quant_scale(parts)
    if parts[0].input_amax is not None:
        top = torch.stack([_need(p.input_amax) for p in parts]).max()
        parts = [replace(p, input_amax=top) for p in parts]
    if parts[0].weight_amax.dim() == 0:
        top = torch.stack([p.weight_amax for p in parts]).max()
        parts = [replace(p, weight_amax=top) for p in parts]
    if parts[0].fp8_weight_amax is not None:
        top = torch.stack([_need(p.fp8_weight_amax) for p in parts]).max()
        parts = [replace(p, fp8_weight_amax=top) for p in parts]
    return parts


def concat(parts: list[LinearQuant]) -> LinearQuant:
    """Stack linears that already :func:`share_input` into one (rows in order)."""
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    weight = torch.cat([p.weight for p in parts], dim=0)
    amax = first.weight_amax
    if amax.dim() > 0:
        amax = torch.cat([p.weight_amax for p in parts], dim=0)
    return LinearQuant(weight, amax, first.input_amax, first.pre_quant_scale, first.fp8_weight_amax)


def fuse(parts: list[LinearQuant]) -> LinearQuant:
    """Merge linears TensorRT-LLM runs as one GEMM (q/k/v → qkv)."""
    return concat(share_input(parts))


def _need(t: torch.Tensor | None) -> torch.Tensor:
    if t is None:
        raise ValueError("linears sharing an input disagree on activation quantization")
    return t


def _shared_pre_quant_scale(parts: list[LinearQuant]) -> list[LinearQuant]:
    if parts[0].pre_quant_scale is None:
        return parts
    # Averaged on the host whatever the parts' device: a mean's summation order is the
    # device's own, and a record packed on a GPU must equal one packed on the CPU.
    scales = [_need(p.pre_quant_scale) for p in parts]
    average = torch.stack([s.to("cpu") for s in scales]).mean(dim=0).to(scales[0].device)
    out = []
    for part in parts:
        old = _need(part.pre_quant_scale)
        if torch.equal(old, average):
            out.append(part)
            continue
        weight = part.weight.float() * old.float() / average.float()
        # A second (FP8) weight quantizer recalibrates on the re-smoothed weight too.
        fp8_amax = None if part.fp8_weight_amax is None else layout.tensor_amax(weight)
        out.append(
            replace(
                part,
                weight=weight,
                weight_amax=part.recompute_amax(weight),
                pre_quant_scale=average,
                fp8_weight_amax=fp8_amax,
                smooth_factor=None,  # re-smoothed: no longer ModelOpt's factor
            )
        )
    return out
