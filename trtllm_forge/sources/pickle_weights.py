"""Pickle weights turned into safetensors by fetch, so no later stage ever sees pickle.

A source with only pickle weights (``pytorch_model.bin`` …) is taken only when the
recipe sets ``source.allow_pickle: true`` (sources/policy.py). fetch then writes a
Hugging Face folder of safetensors into its own artifact: the converter, calibration
and verify's transformers reference read that folder like any other.

Loading is as safe as torch allows: ``torch.load(weights_only=True)`` unpickles
tensors, containers and primitive types only (a pickle that names any other callable
is refused, never called), and ``mmap=True`` maps the file instead of reading it
into memory. The bytes written are bounded by the input's size (twice it: tied
weights are two names over one storage), so a small file whose tensors are
overlapping or stride-0 views of one storage cannot fill the disk.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from trtllm_forge.context import NullProgress, Progress
from trtllm_forge.errors import source_error
from trtllm_forge.sources.policy import PICKLE_INDEX_SUFFIX
from trtllm_forge.sources.snapshot import PICKLE_SUFFIXES, Snapshot
from trtllm_forge.userfiles import read_regular

INDEX_NAME = "model.safetensors.index.json"
# transformers' own file name for a single pickle checkpoint (WEIGHTS_NAME there).
PICKLE_WEIGHTS_NAME = "pytorch_model.bin"
# A weight index of a 10,000-tensor model is about 1 MB.
MAX_INDEX_BYTES = 64 << 20
_QUIET = NullProgress()


def pickle_to_safetensors(snapshot: Snapshot, out_dir: Path, *, progress: Progress = _QUIET) -> int:
    """Write ``snapshot``'s metadata files and its pickle weights as safetensors into
    ``out_dir`` (``model.safetensors``, or shards and their index). Returns the number
    of tensors written.

    Raises:
        ForgeError: SOURCE naming the file that does not load as a plain state dict of
            tensors, or whose tensors would write more than twice its size.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    shards = _pickle_shards(snapshot)
    for name in sorted(snapshot.files):  # metadata only: no pickle file leaves the source
        if not name.endswith((*PICKLE_SUFFIXES, PICKLE_INDEX_SUFFIX)):
            shutil.copyfile(snapshot.path(name), out_dir / name)
    budget = 2 * sum(snapshot.path(shard).stat().st_size for shard in shards) + (1 << 20)
    weight_map: dict[str, str] = {}
    with progress.task("fetch: pickle weights to safetensors", total=len(shards)) as task:
        for number, shard in enumerate(shards, start=1):
            target = _target_name(number, len(shards))
            tensors = _load_state_dict(snapshot.path(shard))
            budget -= _write_shard(tensors, snapshot.path(shard), out_dir / target, budget)
            for name in tensors:
                if name in weight_map:
                    raise source_error(
                        f"tensor {name} is in both {weight_map[name]} and {shard}",
                        hint="the checkpoint's shards overlap; re-download or re-save it",
                    )
                weight_map[name] = target
            task.advance()
    if len(shards) > 1:
        index = {"metadata": {}, "weight_map": dict(sorted(weight_map.items()))}
        (out_dir / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
    return len(weight_map)


def _pickle_shards(snapshot: Snapshot) -> list[str]:
    """The pickle files holding the weights, as transformers picks them: the shards its
    index names, else ``pytorch_model.bin``, else every pickle weight file."""
    indexes = sorted(name for name in snapshot.files if name.endswith(PICKLE_INDEX_SUFFIX))
    if indexes:  # resolve checked it: a weight_map of plain names of present files
        index = json.loads(read_regular(snapshot.path(indexes[0]), limit=MAX_INDEX_BYTES))
        return sorted({str(shard) for shard in index["weight_map"].values()})
    if PICKLE_WEIGHTS_NAME in snapshot.files:
        return [PICKLE_WEIGHTS_NAME]
    return snapshot.weight_files


def _target_name(number: int, count: int) -> str:
    return "model.safetensors" if count == 1 else f"model-{number:05d}-of-{count:05d}.safetensors"


def _load_state_dict(path: Path) -> Mapping[str, Any]:
    """The tensors of one pickle file, memory-mapped, never running its code."""
    import torch

    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # the unpickler raises many kinds for a hostile or damaged file
        first_line = (str(exc).strip().splitlines() or [""])[0][:200]
        raise source_error(
            f"{path.name} does not load as a PyTorch state dict with weights_only=True: "
            f"{type(exc).__name__}: {first_line}",
            hint="forge loads pickle weights only as plain tensors (torch.save of a "
            "state_dict, the zip format of torch >= 1.6); re-save the checkpoint as "
            "safetensors, or as a state_dict with torch.save",
        ) from None
    if not isinstance(loaded, Mapping):
        raise source_error(
            f"{path.name} holds a {type(loaded).__name__}, not a state dict of tensors",
            hint="save the model's state_dict(), not the model or a training checkpoint",
        )
    return loaded


def _write_shard(tensors: Mapping[str, Any], source: Path, target: Path, budget: int) -> int:
    """Stream ``tensors`` into ``target``; the bytes written, at most ``budget``."""
    from trtllm_forge.checkpoint.safetensors_stream import StreamingWriter

    specs = [_spec(name, tensor, source) for name, tensor in tensors.items()]
    total = sum(spec.nbytes for spec in specs)
    if total > budget:
        raise source_error(
            f"the tensors of {source.name} add up to {total} bytes, more than twice the "
            "checkpoint's size: views of one storage repeated",
            hint="re-save the checkpoint with torch.save(model.state_dict()) or as safetensors",
        )
    with StreamingWriter(target, specs) as writer:
        for name in writer.order:
            writer.write(name, tensors[name])
    return total


def _spec(name: Any, tensor: Any, source: Path) -> Any:
    import torch

    from trtllm_forge.checkpoint.safetensors_stream import TORCH_TO_ST, TensorSpec

    if not isinstance(name, str):
        raise source_error(f"{source.name} has a key {name!r} that is not a tensor name")
    if not isinstance(tensor, torch.Tensor) or tensor.layout != torch.strided:
        what = type(tensor).__name__ if not isinstance(tensor, torch.Tensor) else tensor.layout
        raise source_error(
            f"{source.name}: {name} is a {what}, not a dense tensor",
            hint="save the model's state_dict(), not a training checkpoint",
        )
    if tensor.dtype not in TORCH_TO_ST:
        raise source_error(
            f"{source.name}: {name} has dtype {tensor.dtype}, which safetensors cannot hold"
        )
    return TensorSpec(name, tensor.dtype, tuple(tensor.shape))
