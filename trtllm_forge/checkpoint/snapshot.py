"""A Hugging Face snapshot's tensors by name, read lazily from memory-mapped safetensors.

One reader for everything that takes single tensors out of a snapshot (the layer walk,
the calibration records, the Hugging Face targets): a file is opened on its first tensor
and stays open until the stack it was entered on closes. Every page a mapping touched
counts in the process's RSS while it is open, so a long reader releases its files.
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from trtllm_forge.checkpoint.convert import hf_weight_files


class SnapshotTensors:
    """``get(name)`` from whichever file holds it; files close with ``stack`` (an own one
    when none is given, closed by :meth:`release`)."""

    def __init__(self, hf_dir: Path, stack: ExitStack | None = None) -> None:
        self._files = hf_weight_files(Path(hf_dir))
        self._stack = stack if stack is not None else ExitStack()
        self._handles: dict[Path, Any] = {}

    def names(self) -> list[str]:
        return list(self._files)

    def has(self, name: str) -> bool:
        return name in self._files

    def get(self, name: str) -> torch.Tensor:
        path = self._files[name]
        if path not in self._handles:
            self._handles[path] = self._stack.enter_context(safe_open(str(path), framework="pt"))
        tensor: torch.Tensor = self._handles[path].get_tensor(name)
        return tensor

    def release(self) -> None:
        self._stack.close()
        self._handles.clear()
