"""Mixture-of-experts calibration: every expert as its own ``nn.Linear`` modules, fed only
the tokens the router sends it.

transformers 5 loads a MoE block's experts (Mixtral, Qwen2-MoE, Qwen3-MoE) as two fused
3-D parameters, ``gate_up_proj [experts, 2·inter, hidden]`` and ``down_proj [experts,
hidden, inter]``, while every forge method reads and hooks ``nn.Linear`` modules under
the checkpoint's names (quant/targets.py; ``block_sparse_moe.experts.{e}.w1`` ...).
:func:`unfuse_experts` replaces each fused container with :class:`RoutedExperts`: per
expert, three linears named as the checkpoint names them, run on that expert's routed
tokens exactly as transformers' own loop does, so GPTQ's Hessians, AWQ's scale search and
FP8's ranges see what the expert sees in inference and nothing else.

An expert the calibration text never reaches has nothing to calibrate from. It is left
out of the method's targets and gets a data-free record (:func:`fallback_record`), and
the calibrate artifact names it (``forge.quantization.experts`` in config.json).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from trtllm_forge.context import Progress
from trtllm_forge.quant import layout
from trtllm_forge.quant.calibration import CalibrationData
from trtllm_forge.quant.capture import decoder
from trtllm_forge.quant.result import LinearQuant, QuantResult
from trtllm_forge.quant.targets import linear_targets

# forge's expert linears in the order of transformers' fused halves: the activated
# branch (first half of gate_up_proj), the up branch (second half), the down projection.
ROLES = ("fc", "gate", "proj")
_EXPERT_KIND = re.compile(r"mlp\.experts\.\d+\.(fc|gate|proj)")
_EXPERT_SOURCE = re.compile(
    r"(?P<block>.*\.layers\.(?P<layer>\d+)\..*)\.experts\.\d+\.(?P<leaf>\w+)"
)
_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


@dataclass(frozen=True)
class ExpertNames:
    """How the checkpoint names the experts: each role's linear (``w1``/``gate_proj`` ...)
    and, per layer, the experts' container (``model.layers.0.block_sparse_moe.experts``)."""

    leaves: tuple[str, str, str]
    containers: Mapping[int, str]


def expert_names(hf_config: Mapping[str, Any]) -> ExpertNames | None:
    """Read from the family's tensor table; None for a model without routed experts."""
    leaves: dict[str, str] = {}
    containers: dict[int, str] = {}
    for target in linear_targets(hf_config):
        kind = _EXPERT_KIND.fullmatch(target.kind)
        source = _EXPERT_SOURCE.fullmatch(target.sources[0])
        if kind is None or source is None:
            continue
        leaves[kind.group(1)] = source["leaf"]
        containers[int(source["layer"])] = f"{source['block']}.experts"
    if not leaves:
        return None
    return ExpertNames((leaves["fc"], leaves["gate"], leaves["proj"]), containers)


class RoutedExperts(nn.Module):
    """transformers' fused experts as one submodule per expert (``{e}.{leaf}`` linears),
    with the fused module's ``forward(hidden, top_k_index, top_k_weights)``.

    Not iterable on purpose: ModelOpt treats a block whose ``experts`` iterate as a
    sequential MoE and then shares input ranges across experts; each keeps its own here.
    """

    def __init__(self, fused: Any, leaves: tuple[str, str, str]) -> None:
        super().__init__()
        self.num_experts = int(fused.num_experts)
        self.act_fn: Callable[[torch.Tensor], torch.Tensor] = fused.act_fn
        self.leaves = leaves
        gate_up, down = fused.gate_up_proj.detach(), fused.down_proj.detach()
        inter = int(down.shape[2])
        for e in range(self.num_experts):
            expert = nn.Module()
            halves = (gate_up[e, :inter], gate_up[e, inter:], down[e])
            for leaf, weight in zip(leaves, halves, strict=True):
                linear = nn.Linear(1, 1, bias=False, device=weight.device, dtype=weight.dtype)
                linear.weight = nn.Parameter(weight.contiguous(), requires_grad=False)
                linear.in_features, linear.out_features = int(weight.shape[1]), int(weight.shape[0])
                setattr(expert, leaf, linear)
            self.add_module(str(e), expert)
        self.routed = torch.zeros(self.num_experts, dtype=torch.long)

    def forward(
        self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor
    ) -> torch.Tensor:
        out = torch.zeros_like(hidden_states)
        activated, up, down = self.leaves
        for e in range(self.num_experts):
            tokens, slot = torch.where(top_k_index == e)
            if tokens.numel() == 0:
                continue
            self.routed[e] += int(tokens.numel())
            expert = getattr(self, str(e))
            x = hidden_states[tokens]
            y = getattr(expert, down)(
                self.act_fn(getattr(expert, activated)(x)) * getattr(expert, up)(x)
            )
            y = y * top_k_weights[tokens, slot, None]
            out.index_add_(0, tokens, y.to(out.dtype))
        return out


def _is_fused_experts(module: nn.Module) -> bool:
    gate_up, down = getattr(module, "gate_up_proj", None), getattr(module, "down_proj", None)
    return (
        isinstance(gate_up, torch.Tensor)
        and isinstance(down, torch.Tensor)
        and gate_up.dim() == 3
        and hasattr(module, "num_experts")
        and not getattr(module, "is_transposed", False)
        and not getattr(module, "has_bias", False)
    )


@dataclass
class Experts:
    """The unfused experts of a model: checkpoint name <-> module name of each expert."""

    containers: dict[str, RoutedExperts]  # module path -> container
    to_module: dict[str, str] = field(default_factory=dict)  # checkpoint -> module name

    def routed_tokens(self) -> dict[str, int]:
        """Checkpoint name of each expert (``...experts.3``) -> tokens routed to it."""
        to_ckpt = {m: c for c, m in self.to_module.items()}
        counts = {}
        for path, box in self.containers.items():
            for e in range(box.num_experts):
                linear = f"{path}.{e}.{box.leaves[0]}"
                counts[to_ckpt[linear].rsplit(".", 1)[0]] = int(box.routed[e])
        return counts

    def reset(self) -> None:
        for box in self.containers.values():
            box.routed.zero_()


def unfuse_experts(model: nn.Module, hf_config: Mapping[str, Any]) -> Experts | None:
    """Replace every fused experts module of ``model`` (in place); None when it has none."""
    names = expert_names(hf_config)
    if names is None:
        return None
    experts = Experts({})
    for path, module in list(model.named_modules()):
        if not _is_fused_experts(module):
            continue
        match = _LAYER.search(f"{path}.")
        assert match is not None, f"fused experts outside a decoder layer: {path}"
        parent_path, _, attr = path.rpartition(".")
        box = RoutedExperts(module, names.leaves)
        setattr(model.get_submodule(parent_path), attr, box)
        experts.containers[path] = box
        checkpoint = names.containers[int(match.group(1))]
        for e in range(box.num_experts):
            for leaf in names.leaves:
                experts.to_module[f"{checkpoint}.{e}.{leaf}"] = f"{path}.{e}.{leaf}"
    return experts


@torch.no_grad()
def count_routed(model: nn.Module, experts: Experts, data: CalibrationData) -> dict[str, int]:
    """One pass over the calibration windows: tokens routed to each expert."""
    experts.reset()
    body = decoder(model)
    for ids in data.batches(8):
        body(input_ids=ids)
    counts = experts.routed_tokens()
    experts.reset()
    return counts


Method = Callable[..., QuantResult]


def quantize_with_experts(
    method: Method,
    model: nn.Module,
    experts: Experts,
    data: CalibrationData | None,
    params: Any,
    targets: list[str],
    progress: Progress,
    *,
    calibrated: bool,
) -> QuantResult:
    """Run ``method`` on the unfused model; ``targets`` and the result use checkpoint names.

    With a ``calibrated`` method, experts that no calibration token reaches are left out
    of its targets and get :func:`fallback_record`; the result's ``stats["experts"]`` says
    how many tokens each expert got and which got none.
    """
    to_module = {t: experts.to_module.get(t, t) for t in targets}
    starved: set[str] = set()
    counts: dict[str, int] = {}
    if calibrated and data is not None:
        counts = count_routed(model, experts, data)
        starved = {name for name, n in counts.items() if n == 0}
    live = [t for t in targets if t.rsplit(".", 1)[0] not in starved]
    result = method(model, data, params, [to_module[t] for t in live], progress)
    # Only what the method wrote: none (a KV-cache-only recipe) writes no linear at all.
    linears = {t: result.linears[to_module[t]] for t in live if to_module[t] in result.linears}
    modules = dict(model.named_modules())
    for name in (t for t in targets if t.rsplit(".", 1)[0] in starved):
        weight = modules[to_module[name]].weight.detach().float()
        linears[name] = fallback_record(weight, _siblings(name, linears))
    result.linears = {t: linears[t] for t in targets if t in linears}
    if calibrated:
        result.stats["experts"] = {"routed_tokens": counts, "without_tokens": sorted(starved)}
        if starved:
            progress.log(
                f"warning: {len(starved)} expert(s) received no calibration token and were "
                f"quantized from their weights alone: {', '.join(sorted(starved))}"
            )
    return result


def _siblings(name: str, linears: Mapping[str, LinearQuant]) -> list[LinearQuant]:
    """Calibrated records of the same role (``w1``...) in this layer's other experts, or
    in any layer's when none of this layer's was calibrated: the format to follow and the
    activation range to borrow."""
    container, _, rest = name.rpartition(".experts.")
    leaf = re.escape(rest.split(".", 1)[1])
    layer = [
        r
        for n, r in linears.items()
        if re.fullmatch(rf"{re.escape(container)}\.experts\.\d+\.{leaf}", n)
    ]
    return layer or [r for n, r in linears.items() if re.fullmatch(rf".*\.experts\.\d+\.{leaf}", n)]


def fallback_record(weight: torch.Tensor, siblings: list[LinearQuant]) -> LinearQuant:
    """A data-free record in the siblings' format: round-to-nearest ranges of the weight at
    their granularity, no smoothing (pre-quant scale 1), and the largest static activation
    range among the siblings (this layer's experts of the same role read the same hidden
    states, or for proj the same kind of intermediate)."""
    if not siblings:
        raise ValueError("no expert of this role was calibrated: nothing to follow")
    like = siblings[0]
    layer_inputs = [s.input_amax for s in siblings if s.input_amax is not None]
    return LinearQuant(
        weight=weight,
        weight_amax=like.recompute_amax(weight),
        input_amax=torch.stack(layer_inputs).max() if layer_inputs else None,
        pre_quant_scale=None
        if like.pre_quant_scale is None
        else torch.ones_like(like.pre_quant_scale),
        fp8_weight_amax=None if like.fp8_weight_amax is None else layout.tensor_amax(weight),
    )


__all__ = ["Experts", "fallback_record", "quantize_with_experts", "unfuse_experts"]
