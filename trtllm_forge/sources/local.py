"""Resolve a local Hugging Face format directory to a snapshot.

Only the top-level files are listed (see :mod:`trtllm_forge.sources.policy`),
with their sizes; the store computes content digests (blake3, stat-memoized).
A symlink among the chosen files must stay inside the directory: a model
folder that points elsewhere would let the digest and the bytes read disagree
with what the user thinks they gave.
"""

from __future__ import annotations

import os
from pathlib import Path

from trtllm_forge.errors import source_error
from trtllm_forge.sources.policy import check_index_complete, check_no_remote_code, select_files
from trtllm_forge.sources.snapshot import FileRef, Snapshot, SnapshotKind


def resolve_local(path: Path, *, allow_pickle: bool, kind: SnapshotKind = "path") -> Snapshot:
    """List the files forge will use from a local HF-format model directory.

    Args:
        path: the directory holding ``config.json`` and the weights.
        allow_pickle: accept pickle weights when there are no safetensors.
        kind: ``"path"``, or ``"gguf"`` for a folder converted from a GGUF file.

    Raises:
        ForgeError: SOURCE when the directory or required files are missing or a
            symlink escapes it; RECIPE for pickle-only folders without
            ``allow_pickle`` or models that need repository code.
    """
    root = _directory(Path(path))
    source = str(root)
    names = [entry.name for entry in os.scandir(root) if _is_file(entry)]
    wanted = select_files(names, allow_pickle=allow_pickle, source=source)
    files = {name: _local_ref(root, name) for name in wanted}
    check_no_remote_code(root, files, source=source)
    check_index_complete(root, files, source=source)
    return Snapshot(kind=kind, source=source, commit=None, root=root, files=files)


def _directory(path: Path) -> Path:
    expanded = path.expanduser()
    if not expanded.exists():
        raise source_error(
            f"model directory {expanded} does not exist",
            hint="check `source.path` (relative paths are taken from the recipe's folder)",
        )
    if not expanded.is_dir():
        raise source_error(
            f"{expanded} is a file, not a model directory",
            hint="for a .gguf file use `source.gguf`; otherwise give the folder holding config.json",
        )
    return expanded.resolve()


def _is_file(entry: os.DirEntry[str]) -> bool:
    # Follows symlinks on purpose: a link to a file counts, and is checked in _local_ref.
    return entry.is_file()


def _local_ref(root: Path, name: str) -> FileRef:
    path = root / name
    if path.is_symlink():
        target = path.resolve()
        if not target.is_relative_to(root):
            raise source_error(
                f"{path} is a symlink to {target}, outside the model directory {root}",
                hint="copy the file into the directory; for an HF cache snapshot use `source.hf` "
                "with the repo id instead of the cache path",
            )
    return FileRef(size=path.stat().st_size)
