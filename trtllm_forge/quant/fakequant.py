"""What a quantized checkpoint computes, in float32 torch: dequantized weights plus
activation fake-quantization, run through the convert helper's reference forward.

This is the oracle engines are checked against for quantized builds (and the
verification path for formats ONNX Runtime cannot run on CPU). It reads only the
checkpoint (any writer's output, forge's or ModelOpt's, can be evaluated): the format
record the config's quant_algo names dequantizes each weight (``fake_weight``, in its
method's module) and may quantize the inputs itself (``fake_input``); otherwise the
input rules below, by the record's ``activations``:

* × ``prequant_scaling_factor`` (AWQ/SmoothQuant), ÷ ``smoother`` (SmoothQuant plugin
  row layers), then Q/DQ with ``activation_scaling_factor`` (static INT8 or FP8) or,
  for the per-token kinds, with a scale computed per token at run time.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from trtllm_forge.checkpoint.forward import CheckpointForward, KvHook
from trtllm_forge.checkpoint.io import CheckpointReader
from trtllm_forge.quant import kv_formats, layout, records

# Which activation rule each quant_algo runs: from the format records.
PER_TOKEN_INT8 = records.trtllm_algos(lambda f: f.activations == "per_token_int8")
PER_TOKEN_FP8 = records.trtllm_algos(lambda f: f.activations == "per_token_fp8")
_FP8_ACTIVATIONS = records.trtllm_algos(lambda f: f.activations == "static_fp8")
_QUANTIZED_DTYPES = ("I8", "F8_E4M3", "U8")  # U8: packed 4-bit floats


def is_quantized(reader: CheckpointReader, module: str) -> bool:
    """Whether the module's weight is stored as int8 / packed int4 / fp8 / packed fp4."""
    name = f"{module}.weight"
    return reader.has(name) and str(reader.get_slice(name).get_dtype()) in _QUANTIZED_DTYPES


def dequantized_weight(reader: CheckpointReader, module: str) -> torch.Tensor | None:
    """Float32 ``[out, in]`` weight of a quantized module; None if stored unquantized."""
    if not is_quantized(reader, module):
        return None
    quant: Mapping[str, Any] = reader.config.get("quantization") or {}
    fmt = records.by_trtllm_algo(quant.get("quant_algo"))
    if fmt is None or fmt.fake_weight is None:
        raise KeyError(f"{module}: no format record reads quant_algo {quant.get('quant_algo')!r}")
    return fmt.fake_weight(reader, module)


def per_token_scale(x: torch.Tensor, qmax: float) -> torch.Tensor:
    """Dynamic per-token dequant scale ``max|x_t| / qmax`` (1 for all-zero tokens)."""
    amax = x.abs().amax(dim=-1, keepdim=True)
    return torch.where(amax == 0, torch.ones_like(amax), amax / qmax)


class ActivationQuant:
    """The input transform of every linear, keyed by module name (built from the checkpoint)."""

    def __init__(self, reader: CheckpointReader, quant_algo: str | None) -> None:
        self.algo = quant_algo
        self._reader = reader
        self._fmt = records.by_trtllm_algo(quant_algo)
        self._plans: dict[str, dict[str, torch.Tensor | bool]] = {}
        # The format record's own input quantizer of each quantized module.
        self._inputs: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}

    def _plan(self, module: str) -> dict[str, torch.Tensor | bool]:
        if module not in self._plans:
            plan: dict[str, torch.Tensor | bool] = {}
            for param in ("prequant_scaling_factor", "smoother", "activation_scaling_factor"):
                if self._reader.has(f"{module}.{param}"):
                    plan[param] = self._reader.get(f"{module}.{param}").float().reshape(-1)
            plan["quantized"] = is_quantized(self._reader, module)
            self._plans[module] = plan
            fake_input = self._fmt.fake_input if self._fmt is not None else None
            if plan["quantized"] and fake_input is not None:
                self._inputs[module] = fake_input(self._reader, module)
        return self._plans[module]

    def __call__(self, module: str, x: torch.Tensor) -> torch.Tensor:
        plan = self._plan(module)
        if "prequant_scaling_factor" in plan:
            x = x * plan["prequant_scaling_factor"]
        if "smoother" in plan:
            x = x / plan["smoother"]
        if module in self._inputs:
            return self._inputs[module](x)
        static = plan.get("activation_scaling_factor")
        if isinstance(static, torch.Tensor):
            if self.algo in _FP8_ACTIVATIONS:
                return layout.fake_quant_fp8(x, static.reshape(()))
            return layout.fake_quant_int8(x, static.reshape(()))
        if plan["quantized"] and self.algo in PER_TOKEN_INT8:
            return layout.fake_quant_int8(x, per_token_scale(x, layout.INT8_MAX))
        if plan["quantized"] and self.algo in PER_TOKEN_FP8:
            return layout.fake_quant_fp8(x, per_token_scale(x, layout.FP8_MAX))
        return x


def kv_fake_quant(reader: CheckpointReader, kv_algo: str | None) -> KvHook | None:
    """``(layer, k, v) -> (k, v)``: Q/DQ with the layer's ``kv_cache_scaling_factor``
    (the one scale TensorRT-LLM applies to both caches), by the KV format's own rule
    (its record's ``fake_quant``) or as INT8 / FP8."""
    if kv_algo is None:
        return None
    kv = kv_formats.by_trtllm_algo(kv_algo)
    fq = kv.fake_quant if kv is not None and kv.fake_quant is not None else None
    if fq is None:
        fq = layout.fake_quant_fp8 if kv_algo == "FP8" else layout.fake_quant_int8

    def hook(layer: str, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scale = reader.get(f"{layer}.attention.kv_cache_scaling_factor").float().reshape(())
        return fq(k, scale), fq(v, scale)

    return hook


class FakeQuantForward:
    """Float32 logits of a quantized canonical checkpoint (tp = pp = 1)."""

    def __init__(self, ckpt_dir: Path) -> None:
        self.reader = CheckpointReader(Path(ckpt_dir))
        quant: Mapping[str, Any] = self.reader.config.get("quantization") or {}
        self.quant_algo = quant.get("quant_algo")
        self.kv_algo = quant.get("kv_cache_quant_algo")
        self.activations = ActivationQuant(self.reader, self.quant_algo)
        self.forward = CheckpointForward(
            Path(ckpt_dir),
            weight_provider=self._weight,
            activation_hook=self.activations,
            kv_hook=kv_fake_quant(self.reader, self.kv_algo),
        )

    def _weight(self, name: str) -> torch.Tensor | None:
        if not name.endswith(".weight"):
            return None
        return dequantized_weight(self.reader, name.removesuffix(".weight"))

    def logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.forward.logits(input_ids)

    def close(self) -> None:
        self.forward.close()
        self.reader.close()
