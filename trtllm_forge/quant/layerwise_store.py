"""Finished layers of a layer-wise calibration, committed so a killed run resumes.

A work folder holds ``walk.json`` (what the walk calibrates: a digest of everything
its numbers depend on) and, per finished layer ``k``: ``layer-k.safetensors`` (the
layer's checkpoint tensors), ``records-k.safetensors`` (its calibration records),
``stream-k.bin`` (the next layer's input activations, raw) and, written last and
renamed into place, ``layer-k.json`` naming those files' digests. A layer counts as
done only when its record exists and every digest matches, so a kill at any instant
leaves either a whole layer or none. A folder whose ``walk.json`` names another walk
is emptied, never reused.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from trtllm_forge.faults import point
from trtllm_forge.store.digest import digest_file

WALK_FILE = "walk.json"
FORMAT = 1  # bump when a layer's files change meaning: older folders are then emptied


def _layer_name(kind: str, layer: int, suffix: str) -> str:
    return f"{kind}-{layer:05d}.{suffix}"


def _write_json(path: Path, value: Any) -> None:
    """Write, fsync and rename into place: the file is either whole or absent."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as out:
        json.dump(value, out, sort_keys=True, indent=1)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class StreamInfo:
    """Where a layer's output activations are stored, and how to read them back."""

    file: str
    shape: list[int]
    dtype: str
    batch: int


class LayerStore:
    """The work folder of one walk (``identity``: the digest of what it calibrates)."""

    def __init__(self, root: Path, identity: str) -> None:
        self.root = Path(root)
        self.identity = identity
        self.root.mkdir(parents=True, exist_ok=True)
        walk = self.root / WALK_FILE
        if _read_json(walk) != {"identity": identity, "format": FORMAT}:
            self._empty()
            _write_json(walk, {"identity": identity, "format": FORMAT})

    def _empty(self) -> None:
        for child in self.root.iterdir():
            if child.is_dir():
                shutil.rmtree(child)
            else:
                child.unlink()

    def path(self, kind: str, layer: int, suffix: str) -> Path:
        return self.root / _layer_name(kind, layer, suffix)

    def done(self, layer: int) -> dict[str, Any] | None:
        """Layer ``layer``'s commit record when it and its files are intact, else None."""
        record = self.record(layer)
        if record is None:
            return None
        return record if self._intact(record.get("files", {})) else None

    def record(self, layer: int) -> dict[str, Any] | None:
        """Layer ``layer``'s commit record as written, its files not hashed again (for a
        layer this walk committed or found intact when it resumed)."""
        record = _read_json(self.path("layer", layer, "json"))
        if not isinstance(record, dict) or record.get("layer") != layer:
            return None
        return record

    def _intact(self, files: dict[str, str]) -> bool:
        return all(
            (self.root / name).is_file() and digest_file(self.root / name) == digest
            for name, digest in files.items()
        )

    def resume_point(self, layers: int) -> int:
        """The first layer not committed intact (layers after a gap are redone). Its
        input is the previous layer's stored output; if that is damaged, the folder is
        emptied and the walk starts over."""
        start = next((k for k in range(layers) if self.done(k) is None), layers)
        if 0 < start < layers and self.stream(start - 1) is None:
            self._empty()
            _write_json(self.root / WALK_FILE, {"identity": self.identity, "format": FORMAT})
            return 0
        return start

    def stream(self, layer: int) -> StreamInfo | None:
        """Where layer ``layer``'s intact output activations are, or None."""
        record = self.done(layer)
        if record is None or not self._intact(record["stream_digest"]):
            return None
        return StreamInfo(**record["stream"])

    def commit(self, layer: int, files: list[Path], stream: Path, info: dict[str, Any]) -> None:
        """Record layer ``layer`` as done: its files fsynced, then its record renamed in."""
        for file in [*files, stream]:
            _fsync_file(file)
        record = {
            "layer": layer,
            "files": {file.name: digest_file(file) for file in files},
            "stream_digest": {stream.name: digest_file(stream)},
            **info,
        }
        point("calibrate.layer.before_commit")
        _write_json(self.path("layer", layer, "json"), record)
        point("calibrate.layer.committed")

    def forget_streams(self, keep: int) -> None:
        """Drop every layer's activations but layer ``keep``'s once it is committed (a
        kill between a commit and this leaves an older one: the next commit drops it)."""
        for stale in self.root.glob("stream-*.bin"):
            if stale.name != _layer_name("stream", keep, "bin"):
                stale.unlink()


def adopt(work_dir: Path, prefix: str) -> None:
    """Take over the newest work folder a killed run left beside ``work_dir`` (named
    ``<prefix>-<pid>-<id>.layers``; its process gone). The caller holds the key's lock,
    so no live run of the same calibration owns one."""
    if work_dir.exists():
        return
    left = [
        path
        for path in work_dir.parent.glob(f"{prefix}-*.layers")
        if path != work_dir and path.is_dir() and not _alive(path.name)
    ]
    if left:
        newest = max(left, key=lambda path: path.stat().st_mtime)
        os.replace(newest, work_dir)


def _alive(name: str) -> bool:
    """Whether the process named in ``<prefix>-<pid>-<id>.layers`` still runs."""
    pid = name.rsplit("-", 2)[-2]
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def write_stream(path: Path, batches: list[torch.Tensor]) -> StreamInfo:
    """The activations of every batch, concatenated and stored raw."""
    import numpy as np

    if not batches:  # a walk without a forward pass (weight-only, no KV cache)
        path.write_bytes(b"")
        return StreamInfo(path.name, [0], "float32", 1)
    full = torch.cat([b.detach().to("cpu") for b in batches]).contiguous()
    dtype = str(full.dtype).removeprefix("torch.")
    raw = full.view(torch.int16) if full.dtype == torch.bfloat16 else full
    with open(path, "wb") as out:
        out.write(np.ascontiguousarray(raw.numpy()).tobytes())
    return StreamInfo(path.name, list(full.shape), dtype, int(batches[0].shape[0]))


def read_stream(root: Path, info: StreamInfo, in_memory: bool) -> list[torch.Tensor]:
    """The stored activations as batches: copied into memory, or (``in_memory`` false)
    memory-mapped, so the page cache rather than the process holds them."""
    import numpy as np

    if info.shape[0] == 0:
        return []
    dtype = _DTYPES[info.dtype]
    np_dtype = np.int16 if dtype == torch.bfloat16 else torch.empty(0, dtype=dtype).numpy().dtype
    # "c" (copy-on-write): a writable view for torch, still backed by the file
    mapped = np.memmap(root / info.file, dtype=np_dtype, mode="c", shape=tuple(info.shape))
    full = torch.from_numpy(np.array(mapped) if in_memory else mapped)
    if dtype == torch.bfloat16:
        full = full.view(torch.bfloat16)
    return list(torch.split(full, info.batch))
