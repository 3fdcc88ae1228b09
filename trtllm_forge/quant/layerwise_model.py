"""The Hugging Face model one decoder layer at a time, for layer-wise calibration.

The model is built on the meta device (no memory), the snapshot's safetensors are
memory-mapped (``safe_open``), and only what a step needs is made real: the modules
outside the decoder layers once (embedding, final norm, rotary tables), then each
layer in turn. :func:`record_inputs` runs the model's own decoder body over the
calibration batches with every layer swapped for a recorder, so the first layer's
input and the arguments each layer receives (mask, position embeddings, cache) are
exactly those of a whole-model pass. :class:`LayerShell` then holds one real layer
under its whole-model name (``model.layers.7``), so the methods' own
``quantize_model`` runs on it unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trtllm_forge.checkpoint.snapshot import SnapshotTensors
from trtllm_forge.errors import source_error
from trtllm_forge.quant.capture import decoder


def meta_model(hf_dir: Path) -> nn.Module:
    """The causal LM with every parameter and buffer on the meta device (costs nothing)."""
    import transformers

    config = transformers.AutoConfig.from_pretrained(str(hf_dir), trust_remote_code=False)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    module: nn.Module = model
    module.train(False)
    return module


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder body's layer list (``model.model.layers``)."""
    layers = getattr(decoder(model), "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise source_error(
            f"{type(model).__name__} keeps no decoder layer list at model.layers",
            hint="calibrate this model with quantize.calibration.mode: whole",
        )
    return layers


# Snapshot dtypes whose float32 value is exact: casting one of them straight to the
# placement's dtype gives what casting it to float32 first gives.
_EXACT_IN_FLOAT32 = (torch.float16, torch.bfloat16, torch.float32)


def materialize(
    module: nn.Module, prefix: str, tensors: SnapshotTensors, device: str, dtype: torch.dtype
) -> nn.Module:
    """Give ``module``'s parameters the snapshot's values (as from_pretrained does: cast to
    float32, then to the placement's dtype) on ``device``. Raises on a missing tensor."""
    # The meta model is float32: cast first (free on meta), as Placement.model casts the
    # whole model, or the layer would calibrate in float32 whatever the placement says.
    module.to(dtype=dtype).to_empty(device=device)
    for name, param in module.named_parameters():
        full = f"{prefix}.{name}"
        if not tensors.has(full):
            raise source_error(
                f"the snapshot has no tensor {full}",
                hint="calibrate this model with quantize.calibration.mode: whole",
            )
        value = tensors.get(full)
        if value.dtype not in _EXACT_IN_FLOAT32:
            value = value.to(torch.float32)
        with torch.no_grad():
            # copy_ moves the snapshot's bytes to the device and casts them there: the
            # same values as casting to float32 first (exact for these dtypes), with no
            # float32 copy on the host and half the bytes moved for a 16-bit snapshot.
            param.copy_(value)
    for name, buffer in module.named_buffers():
        raise source_error(
            f"{prefix}.{name} is a buffer inside a decoder layer; the layer walk rebuilds "
            "buffers only outside the layers",
            hint=f"calibrate this model with quantize.calibration.mode: whole ({buffer.shape})",
        )
    return module


def real_body(
    model: nn.Module, tensors: SnapshotTensors, device: str, dtype: torch.dtype
) -> nn.Module:
    """The decoder body with everything but its layers made real (embedding, norm: from
    the snapshot; rotary tables: built again from the config, as from_pretrained does)."""
    body = decoder(model)
    prefix = "model" if body is not model else ""
    for name, child in body.named_children():
        if name == "layers":
            continue
        path = f"{prefix}.{name}".lstrip(".")
        if any(True for _ in child.buffers()):
            rebuilt = type(child)(config=child.config)  # type: ignore[call-arg]
            # Cast like Placement.model casts the whole model (buffers included).
            setattr(body, name, rebuilt.to(device=device, dtype=dtype))
        if any(True for _ in child.parameters()):
            materialize(getattr(body, name), path, tensors, device, dtype)
    return body


@dataclass
class LayerCalls:
    """What a whole-model pass hands each layer, per batch size: the first layer's input
    batches and, per layer, the keyword arguments (shared tensors, not copies)."""

    config: Any = None
    inputs: list[torch.Tensor] = field(default_factory=list)
    kwargs: dict[tuple[int, int], dict[str, Any]] = field(default_factory=dict)

    def for_layer(self, layer: int, batch: int, *, with_cache: bool = False) -> dict[str, Any]:
        """Layer ``layer``'s arguments for a batch of ``batch`` windows, with a fresh KV
        cache where the model passes one or ``with_cache`` asks for one (the layer
        appends to it; a new one per call keeps memory at one layer's keys and values)."""
        from transformers import DynamicCache

        kwargs = dict(self.kwargs[(layer, batch)])
        if kwargs.get("past_key_values") is not None or with_cache:
            kwargs["past_key_values"] = DynamicCache(config=self.config)
            kwargs["use_cache"] = True
        return kwargs


class _Recorder(nn.Module):
    """Stands in for layer ``index``: keeps its arguments and passes the input through."""

    def __init__(self, index: int, calls: LayerCalls) -> None:
        super().__init__()
        self.index, self.calls = index, calls

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if args:
            raise source_error(
                "a decoder layer is called with positional arguments the layer walk cannot keep",
                hint="calibrate this model with quantize.calibration.mode: whole",
            )
        if self.index == 0:
            self.calls.inputs.append(hidden_states.detach().to("cpu"))
        self.calls.kwargs.setdefault((self.index, int(hidden_states.shape[0])), kwargs)
        return hidden_states


@torch.no_grad()
def record_inputs(model: nn.Module, batches: list[torch.Tensor]) -> LayerCalls:
    """Run the decoder body (real outside its layers) with recorders for layers."""
    layers = decoder_layers(model)
    calls = LayerCalls(config=getattr(decoder(model), "config", None))
    originals = list(layers)
    for index in range(len(layers)):
        layers[index] = _Recorder(index, calls)
    try:
        for ids in batches:
            decoder(model)(input_ids=ids)
    finally:
        for index, layer in enumerate(originals):
            layers[index] = layer
    return calls


class _OneLayerBody(nn.Module):
    """``model.layers.<i>`` holding one real layer; called like the decoder body with
    ``input_ids`` standing for that layer's input hidden states."""

    def __init__(self, index: int, layer: nn.Module, calls: LayerCalls, device: str) -> None:
        super().__init__()
        self.layers = nn.ModuleDict({str(index): layer})
        self.index, self.calls, self.device = index, calls, device
        self.with_cache = False  # set while the walk reads the layer's keys and values
        self.last_cache: Any = None

    def forward(self, input_ids: torch.Tensor, **_: Any) -> torch.Tensor:
        hidden = input_ids.to(self.device)
        kwargs = self.calls.for_layer(self.index, int(hidden.shape[0]), with_cache=self.with_cache)
        self.last_cache = kwargs.get("past_key_values")
        out = self.layers[str(self.index)](hidden, **kwargs)
        return out[0] if isinstance(out, tuple) else out


class LayerShell(nn.Module):
    """One decoder layer under its whole-model module names, for the methods' own
    ``quantize_model`` (capture.decoder finds ``.model``, targets keep their names)."""

    def __init__(self, index: int, layer: nn.Module, calls: LayerCalls, device: str) -> None:
        super().__init__()
        self.model = _OneLayerBody(index, layer, calls, device)

    def layer(self) -> nn.Module:
        return self.model.layers[str(self.model.index)]
