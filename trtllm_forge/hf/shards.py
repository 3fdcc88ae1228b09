"""Write tensors as Hugging Face shards (``model-0000k-of-0000N.safetensors``) plus
``model.safetensors.index.json``, holding at most one shard in memory."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

INDEX_NAME = "model.safetensors.index.json"
DEFAULT_SHARD_BYTES = 5 * 1024**3


class ShardWriter:
    """Collects tensors; a shard is written whenever the next tensor would overflow it."""

    def __init__(self, out_dir: Path, max_bytes: int = DEFAULT_SHARD_BYTES) -> None:
        self.out_dir = Path(out_dir)
        self.max_bytes = max_bytes
        self._pending: dict[str, torch.Tensor] = {}
        self._pending_bytes = 0
        self._written: list[tuple[Path, list[str]]] = []
        self.total_bytes = 0
        self._storages: set[int] = set()

    def add(self, name: str, tensor: torch.Tensor) -> None:
        if name in self._pending or any(name in names for _, names in self._written):
            raise AssertionError(f"tensor {name} written twice")
        size = tensor.numel() * tensor.element_size()
        if self._pending and self._pending_bytes + size > self.max_bytes:
            self._flush()
        tensor = tensor.contiguous()
        storage = tensor.untyped_storage().data_ptr()
        if storage in self._storages:  # safetensors refuses tensors sharing memory
            tensor = tensor.clone()
        self._storages.add(tensor.untyped_storage().data_ptr())
        self._pending[name] = tensor
        self._pending_bytes += size
        self.total_bytes += size

    def _flush(self) -> None:
        path = self.out_dir / f".shard-{len(self._written)}.tmp"
        save_file(self._pending, str(path), metadata={"format": "pt"})
        self._written.append((path, sorted(self._pending)))
        self._pending, self._pending_bytes = {}, 0
        self._storages.clear()

    def close(self) -> list[str]:
        """Name the shards ``-of-N`` now that N is known; write the index; return file names."""
        if self._pending or not self._written:
            self._flush()
        count = len(self._written)
        weight_map: dict[str, str] = {}
        files = []
        for number, (path, names) in enumerate(self._written, start=1):
            final = f"model-{number:05d}-of-{count:05d}.safetensors"
            path.rename(self.out_dir / final)
            files.append(final)
            weight_map.update(dict.fromkeys(names, final))
        index = {
            "metadata": {"total_size": self.total_bytes},
            "weight_map": dict(sorted(weight_map.items())),
        }
        (self.out_dir / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
        return [*files, INDEX_NAME]
