"""Layer-wise calibration: the decoder layers one at a time, each finished layer committed.

The whole-model path (quant/quantize.py) loads every weight, then runs the method
once. Here the model is built on the meta device and, for each decoder layer in
turn: its weights are read from the memory-mapped snapshot, it is run on the
previous layer's output activations (kept on the host, memory-mapped from the
work folder past ``stream_bound`` bytes), the method's own ``quantize_model`` runs
on it (layerwise_model.LayerShell keeps the module names), its checkpoint tensors
and calibration records are written and committed (layerwise_store), and it is
freed. The next layer's input is the layer's output with its original weights, as
in a whole-model calibration, where every method sees unquantized activations.
Finally the checkpoint is assembled tensor by tensor. Peak memory: the embedding,
one layer in float32, its activations and the method's working set.

A killed run resumes at the first layer not committed; the result is the same bytes.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from trtllm_forge.checkpoint.convert import load_hf_config
from trtllm_forge.context import NullProgress, Progress
from trtllm_forge.errors import recipe_error
from trtllm_forge.quant import modelopt_glue, registry
from trtllm_forge.quant.calibration import CalibrationData
from trtllm_forge.quant.device import Placement
from trtllm_forge.quant.layerwise_assemble import LayerWriter, PackedLayer, assemble, on_device
from trtllm_forge.quant.layerwise_model import (
    LayerCalls,
    LayerShell,
    SnapshotTensors,
    decoder_layers,
    materialize,
    meta_model,
    real_body,
    record_inputs,
)
from trtllm_forge.quant.layerwise_store import LayerStore, StreamInfo, read_stream, write_stream
from trtllm_forge.quant.layerwise_support import refusal
from trtllm_forge.quant.quantize import Calibration, _checked_plan, _forge_info
from trtllm_forge.quant.quantize import _logged_calibration_data as calibration_data
from trtllm_forge.quant.targets import TargetPlan
from trtllm_forge.quant.writer import QuantSpec
from trtllm_forge.store.digest import digest_json

_NO_PROGRESS = NullProgress()
STREAM_BOUND = 1 << 30  # activations held in memory up to this many bytes, mapped beyond
# The batch each method's own calibration pass uses (gptq: capture.input_hessians takes
# data.batches(); ModelOpt's methods and the KV pass: modelopt_glue.BATCH_SIZE): the walk
# runs every layer on the same batches, so each layer sees bit-identical inputs.
_BATCH = {"gptq": 1}


def calibrate_layerwise(
    *,
    hf_dir: Path,
    canonical_dir: Path,
    out_dir: Path,
    work_dir: Path,
    method: str,
    params: Mapping[str, Any] | None = None,
    kv_cache: str | None = None,
    exclude: Sequence[str] = ("lm_head",),
    calibration: Calibration | None = None,
    tokenizer_dir: Path | None = None,
    device: str = "cpu",
    dtype: str = "float32",
    identity: str = "",
    stream_bound: int = STREAM_BOUND,
    progress: Progress = _NO_PROGRESS,
) -> dict[str, Any]:
    """Quantize ``hf_dir`` layer by layer into ``out_dir`` (the files quantize_checkpoint
    writes, the same tensors); ``work_dir`` keeps finished layers across runs.

    ``identity`` names what the caller keys the result by (the calibrate stage's key
    inputs); a work folder left by another identity or calibration is emptied.
    """
    spec, plan = _walkable_plan(method, params, kv_cache, Path(hf_dir), exclude)
    placement = Placement.of(device, dtype)
    data = None  # a weight-only method without a KV cache runs no forward pass
    if registry.get(method).needs_data or spec.kv_cache:
        data = calibration_data(calibration, Path(tokenizer_dir or hf_dir), progress)
    batch = _BATCH.get(method, modelopt_glue.BATCH_SIZE)
    store = LayerStore(Path(work_dir), _walk_identity(identity, spec, plan, data, placement))
    with ExitStack() as stack:
        tensors = SnapshotTensors(Path(hf_dir))
        stack.callback(tensors.release)
        out = LayerWriter(Path(canonical_dir), Path(hf_dir), plan, placement.dtype, stack)
        walk = _Walk(spec, plan, placement, tensors, store, out)
        batches = data.batches(batch) if data is not None else []
        stack.enter_context(_frozen_heap(spec.method, progress))
        layers = walk.run(Path(hf_dir), batches, stream_bound, progress)
    forge_info = _forge_info(spec, exclude, data)
    args = (Path(canonical_dir), Path(out_dir), spec, plan, forge_info, placement, progress)
    summary = assemble(store, layers, *args)
    summary.update(forge_info)
    summary["calibration_placement"] = {"device": placement.device, "dtype": placement.dtype}
    summary["calibration_mode"] = "layerwise"
    summary["resumed_at_layer"] = walk.resumed_at
    return summary


def _walkable_plan(
    method: str,
    params: Mapping[str, Any] | None,
    kv_cache: str | None,
    hf_dir: Path,
    exclude: Sequence[str],
) -> tuple[QuantSpec, TargetPlan]:
    """The whole-model path's checks (quantize._checked_plan), then what only the walk
    cannot do yet (the same refusal forge plan makes from the recipe)."""
    spec, plan = _checked_plan(method, params, kv_cache, hf_dir, exclude)
    dumped = spec.params.model_dump(mode="json")
    reason = refusal(method, dumped, spec.kv_cache, load_hf_config(hf_dir))
    if reason:
        raise recipe_error(reason, hint="use quantize.calibration.mode: whole")
    return spec, plan


def layerwise_checkpoint(
    *,
    hf_dir: Path,
    canonical_dir: Path,
    out_dir: Path,
    work_dir: Path,
    identity: str,
    spec: Any,
    calibration_file: Path | None = None,
    progress: Progress = _NO_PROGRESS,
) -> dict[str, Any]:
    """:func:`calibrate_layerwise` per a recipe ``quantize`` section (as quant/api.py
    adapts it for the whole-model path)."""
    from trtllm_forge.quant.api import method_params
    from trtllm_forge.quant.calibration import CalibrationSpec

    calib = spec.calibration
    return calibrate_layerwise(
        hf_dir=hf_dir,
        canonical_dir=canonical_dir,
        out_dir=out_dir,
        work_dir=work_dir,
        method=spec.method,
        params=method_params(spec),
        kv_cache=spec.kv_cache,
        exclude=list(spec.exclude),
        calibration=CalibrationSpec(
            file=calibration_file, samples=calib.samples, seq_len=calib.seq_len, seed=calib.seed
        ),
        device=calib.device,
        dtype=calib.dtype,
        identity=identity,
        progress=progress,
    )


def _walk_identity(
    identity: str,
    spec: QuantSpec,
    plan: TargetPlan,
    data: CalibrationData | None,
    place: Placement,
) -> str:
    return digest_json(
        {
            "identity": identity,
            "method": spec.method,
            "params": spec.params.model_dump(mode="json"),
            "kv_cache": spec.kv_cache,
            "targets": plan.hf_modules(),
            "calibration": None if data is None else data.digest,
            "placement": [place.device, place.dtype],
        }
    )


class _Walk:
    """The loop over decoder layers (one instance per calibration)."""

    def __init__(
        self,
        spec: QuantSpec,
        plan: TargetPlan,
        placement: Placement,
        tensors: SnapshotTensors,
        store: LayerStore,
        out: LayerWriter,
    ) -> None:
        self.spec, self.plan, self.placement = spec, plan, placement
        self.tensors, self.store, self.out = tensors, store, out
        self.dtype = getattr(torch, placement.dtype)
        self.algorithm = registry.get(spec.method).load()
        self.resumed_at = 0
        self.progress: Progress = _NO_PROGRESS
        self.streams: dict[int, StreamInfo] = {}  # written by the committer's thread

    def run(self, hf_dir: Path, batches: list[torch.Tensor], bound: int, progress: Progress) -> int:
        """Calibrate every layer not yet committed; return the number of layers."""
        self.progress = progress
        model = meta_model(hf_dir)
        layers = decoder_layers(model)
        count = len(layers)
        start = self.resumed_at = self.store.resume_point(count)
        if start == count:
            progress.log(f"calibrate: all {count} layers already committed; assembling")
            return count
        real_body(model, self.tensors, self.placement.device, self.dtype)
        self.tensors.release()
        device_batches = [b.to(self.placement.device) for b in batches]
        calls = record_inputs(model, device_batches)
        if start > 0:
            done = "layer 0" if start == 1 else f"layers 0-{start - 1}"
            progress.log(f"calibrate: resuming at layer {start} ({done} of {count} committed)")
            info = self.store.stream(start - 1)
            assert info is not None  # resume_point starts over where it is not
            stream = read_stream(self.store.root, info, True)
        else:
            stream = calls.inputs
        calls.inputs = []
        eta = _Eta(count - start)
        with progress.task(f"calibrating {count} layers", total=count) as task:

            def committed(index: int, phases: _Phases) -> None:
                task.advance()
                progress.log(
                    f"calibrate: layer {index} committed ({index + 1}/{count}); {eta.tick()} "
                    f"({phases})"
                )

            task.advance(start)
            with _Committer(committed) as committer:
                for index in range(start, count):
                    stream = self.layer(layers, index, calls, stream, bound, committer)
                committer.settle()
        return count

    def layer(
        self,
        layers: torch.nn.ModuleList,
        index: int,
        calls: LayerCalls,
        stream: list[torch.Tensor],
        bound: int,
        committer: _Committer,
    ) -> list[torch.Tensor]:
        """Calibrate layer ``index`` and hand its files to ``committer``; return the next
        layer's input."""
        prefix = f"model.layers.{index}"
        phases = _Phases(self.placement.device)
        layer = materialize(layers[index], prefix, self.tensors, self.placement.device, self.dtype)
        self.tensors.release()
        phases.mark("read")
        shell = LayerShell(index, layer, calls, self.placement.device)
        outputs, kv = _original_outputs(shell, stream, index, bool(self.spec.kv_cache))
        phases.mark("forward")
        committer.poll()  # the previous layer's commit is usually done by now: log it
        targets = [n for n in self.plan.hf_modules() if n.startswith(prefix + ".")]
        loaded = self._loaded(shell, targets)
        result = self.algorithm.quantize_model(
            shell, _StreamData(stream), self.spec.params, targets, self.progress
        )
        result.kv_amax = {index: kv} if kv is not None else {}
        phases.mark("calibrate")
        committer.poll()
        packed = self.out.pack(self.spec, self._layer_plan(index), result, self.placement, loaded)
        phases.mark("pack")
        committer.submit(index, lambda: self._commit(index, packed, outputs, kv, phases), phases)
        phases.mark("wait")  # for the previous layer's commit
        layers[index] = torch.nn.Identity()  # the layer's weights go with it
        del shell, layer, result, stream, loaded
        gc.collect()
        phases.mark("free")
        if sum(t.numel() * t.element_size() for t in outputs) <= bound:
            return outputs
        committer.settle()  # its stream file is written: map it, drop the copy in memory
        return read_stream(self.store.root, self.streams.pop(index), False)

    def _commit(
        self,
        index: int,
        packed: PackedLayer,
        outputs: list[torch.Tensor],
        kv: tuple[float, float] | None,
        phases: _Phases,
    ) -> None:
        """Write layer ``index``'s files and its activations, then commit them (on the
        committer's thread)."""
        t0 = time.perf_counter()
        files = self.out.save(self.store, index, packed)
        stream_file = self.store.path("stream", index, "bin")
        info = write_stream(stream_file, outputs)
        record: dict[str, Any] = {"stream": asdict(info), "records": packed.counts}
        record["kv"] = None if kv is None else list(kv)
        self.store.commit(index, files, stream_file, record)
        self.streams[index] = info
        self.store.forget_streams(keep=index)
        phases.seconds["write+commit (background)"] = time.perf_counter() - t0

    def _loaded(self, shell: LayerShell, targets: list[str]) -> dict[str, torch.Tensor]:
        """The targets' weights as loaded, kept on the device before the method smooths
        them, where the layer is packed there (the records are checked against them
        without reading the snapshot again); else none."""
        if not on_device(self.placement, self.spec):
            return {}
        modules = dict(shell.named_modules())
        return {name: modules[name].weight.detach().clone() for name in targets}

    def _layer_plan(self, index: int) -> TargetPlan:
        return replace(
            self.plan,
            quantized=tuple(t for t in self.plan.quantized if t.layer == index),
            excluded=tuple(t for t in self.plan.excluded if t.layer == index),
            quantize_head=False,
        )


@torch.no_grad()
def _original_outputs(
    shell: LayerShell, stream: list[torch.Tensor], index: int, with_kv: bool
) -> tuple[list[torch.Tensor], tuple[float, float] | None]:
    """The layer's output per batch with its original weights (on the host), and with
    ``with_kv`` its (max |K|, max |V|) as capture.kv_ranges reads them from the cache."""
    body = shell.model
    body.with_cache = with_kv
    outputs, k_max, v_max = [], 0.0, 0.0
    for hidden in stream:
        outputs.append(body(hidden).to("cpu"))
        if with_kv:
            cached = body.last_cache.layers[index]
            k_max = max(k_max, cached.keys.abs().max().item())
            v_max = max(v_max, cached.values.abs().max().item())
    body.with_cache, body.last_cache = False, None
    return outputs, ((k_max, v_max) if with_kv else None)


class _StreamData:
    """A layer's input activations where a method expects CalibrationData: ``batches(n)``
    gives the stream's own batches when ``n`` is the walk's batch size."""

    def __init__(self, stream: list[torch.Tensor]) -> None:
        self._stream = stream

    def batches(self, batch_size: int = 1) -> list[torch.Tensor]:
        sizes = [int(b.shape[0]) for b in self._stream]
        if all(s == batch_size for s in sizes[:-1]) and sizes[-1] <= batch_size:
            return list(self._stream)
        return list(torch.split(torch.cat(self._stream), batch_size))


@contextmanager
def _frozen_heap(method: str, progress: Progress) -> Iterator[None]:
    """Every object alive now (torch, transformers, and ModelOpt, imported first when the
    method runs through it) moved out of the collector's sight for the walk: the
    collection after each layer, which frees the layer's cycles (ModelOpt's hooks), then
    scans the walk's own objects only (measured: 0.25 s -> under 1 ms per layer on
    the 2-CPU dev box, with the 8B model's modules and ModelOpt imported). The model
    is built after this, so its layers stay collectable."""
    if registry.get(method).uses_modelopt:
        modelopt_glue.mtq(progress)
    import transformers.modeling_utils  # noqa: F401 - imported before the freeze

    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


class _Committer:
    """Writes, fsyncs, hashes and commits finished layers on one thread of its own, in
    layer order, while the next layer is read and calibrated. At most one layer waits
    for it (its packed tensors and output activations, on the host): handing over the
    next one first waits for it, then reports it done (``committed``, on the caller's
    thread). A commit's error is raised there too."""

    def __init__(self, committed: Callable[[int, _Phases], None]) -> None:
        self._committed = committed
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="forge-layer-commit")
        self._pending: tuple[int, Future[None], _Phases] | None = None

    def __enter__(self) -> _Committer:
        return self

    def __exit__(self, *exc: object) -> None:
        self._pool.shutdown(wait=True)  # a commit under way finishes, whatever happened

    def submit(self, index: int, job: Callable[[], None], phases: _Phases) -> None:
        self.settle()
        self._pending = (index, self._pool.submit(job), phases)

    def poll(self) -> None:
        """Report the layer handed over last as committed if it is, without waiting."""
        if self._pending is not None and self._pending[1].done():
            self.settle()

    def settle(self) -> None:
        """Wait for the layer handed over last, then report it committed."""
        if self._pending is None:
            return
        index, future, phases = self._pending
        self._pending = None
        future.result()
        self._committed(index, phases)


class _Phases:
    """Seconds of each phase of one layer, for its log line. On a GPU each phase ends
    with a synchronisation, so the kernels it queued count in it, not in the next."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")
        self.seconds: dict[str, float] = {}
        self.t0 = time.perf_counter()

    def mark(self, phase: str) -> None:
        if self.cuda:
            torch.cuda.synchronize()
        now = time.perf_counter()
        self.seconds[phase] = self.seconds.get(phase, 0.0) + now - self.t0
        self.t0 = now

    def __str__(self) -> str:
        return ", ".join(f"{phase} {s:.2f} s" for phase, s in self.seconds.items())


class _Eta:
    """Seconds per layer so far → the time the remaining layers will take."""

    def __init__(self, layers: int) -> None:
        self.left, self.t0, self.done = layers, time.perf_counter(), 0

    def tick(self) -> str:
        self.done += 1
        self.left -= 1
        per_layer = (time.perf_counter() - self.t0) / self.done
        return f"{per_layer:.1f} s per layer, ETA {_duration(per_layer * self.left)}"


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


__all__ = ["STREAM_BOUND", "calibrate_layerwise"]
