"""Read a TensorRT-LLM checkpoint dir: ``config.json`` plus ``rank{r}.safetensors``.

Tensors load lazily, one at a time, through ``safe_open`` (mmap), so reading a
single tensor of a 100 GB checkpoint costs that tensor's bytes only.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from types import TracebackType
from typing import Any

import torch
from safetensors import safe_open

from trtllm_forge.checkpoint.config import (
    CONFIG_NAME,
    bad_checkpoint,
    rank_file,
    read_config,
    world_size,
    write_config,
)

# The config.json reader and writer live in checkpoint/config.py (torch-free); they are
# exported here too, beside the reader of the rank files.
__all__ = [
    "CONFIG_NAME",
    "CheckpointReader",
    "rank_file",
    "read_config",
    "world_size",
    "write_config",
]


class CheckpointReader:
    """Lazy access to every rank file of a checkpoint.

    Use as a context manager (or call :meth:`close`) to release the file handles.
    """

    def __init__(self, ckpt_dir: Path) -> None:
        self.dir = Path(ckpt_dir)
        self.config = read_config(self.dir)
        self.world_size = world_size(self.config)
        self._stack = ExitStack()
        self._handles: dict[int, Any] = {}
        for rank in range(self.world_size):
            if not (self.dir / rank_file(rank)).is_file():
                raise bad_checkpoint(f"{self.dir / rank_file(rank)} is missing")

    def __enter__(self) -> CheckpointReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._stack.close()
        self._handles.clear()

    def _handle(self, rank: int) -> Any:
        if rank not in self._handles:
            if not 0 <= rank < self.world_size:
                raise IndexError(f"rank {rank} outside world size {self.world_size}")
            path = self.dir / rank_file(rank)
            self._handles[rank] = self._stack.enter_context(safe_open(str(path), framework="pt"))
        return self._handles[rank]

    def names(self, rank: int = 0) -> list[str]:
        return sorted(self._handle(rank).keys())

    def has(self, name: str, rank: int = 0) -> bool:
        return name in self._handle(rank).keys()

    def get(self, name: str, rank: int = 0) -> torch.Tensor:
        handle = self._handle(rank)
        if name not in handle.keys():
            raise KeyError(f"{name} not in {rank_file(rank)}")
        tensor: torch.Tensor = handle.get_tensor(name)
        return tensor

    def get_slice(self, name: str, rank: int = 0) -> Any:
        """A lazy slice object: ``.get_shape()``, ``.get_dtype()``, ``[a:b, :]`` reads part."""
        return self._handle(rank).get_slice(name)

    def shape(self, name: str, rank: int = 0) -> tuple[int, ...]:
        return tuple(self.get_slice(name, rank).get_shape())

    def tensors(self, rank: int = 0) -> Iterator[tuple[str, torch.Tensor]]:
        for name in self.names(rank):
            yield name, self.get(name, rank)
