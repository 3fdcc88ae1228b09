"""What a resolved source looks like to the rest of forge.

A :class:`Snapshot` names a directory of Hugging Face format files (config,
tokenizer, weights) and lists exactly the files forge will read from it. It is
light on purpose: digests of local files are the store's job (blake3 with a
stat memo); for hub files we only carry the hash the hub already published, so
a multi-GB safetensors file is never re-read just to be named.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

SnapshotKind = Literal["hf", "path", "gguf"]
WeightFormat = Literal["safetensors", "pickle"]

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


@dataclass(frozen=True)
class FileRef:
    """One file of a snapshot.

    Attributes:
        size: size in bytes (of the blob, for hub files).
        digest: the hub's own content hash, labelled with its algorithm:
            ``"sha256:<hex>"`` for LFS files, ``"git-sha1:<hex>"`` for regular
            git files; ``None`` for local files or when the cache holds copies
            instead of symlinks to named blobs.
    """

    size: int
    digest: str | None = None


@dataclass(frozen=True)
class Snapshot:
    """A resolved, immutable view of a model source.

    Attributes:
        kind: ``"hf"`` (hub repo via the HF cache), ``"path"`` (local HF-format
            directory) or ``"gguf"`` (HF folder converted from a GGUF file).
        source: the repo id, or the absolute path of the local directory / GGUF file.
        commit: the full 40-hex commit sha for hub sources, else ``None``.
        root: directory holding the files (for hub sources: the cache's
            ``snapshots/<sha>`` folder, reused in place, never copied).
        files: relative path -> :class:`FileRef`, exactly the files forge uses
            (config, generation config, tokenizer files, weights and their index).
        revision: the revision the user asked for (branch, tag, sha or prefix).
    """

    kind: SnapshotKind
    source: str
    commit: str | None
    root: Path
    files: Mapping[str, FileRef] = field(default_factory=dict)
    revision: str | None = None

    @property
    def weight_format(self) -> WeightFormat:
        """``"safetensors"`` unless the snapshot only carries pickle weights."""
        if any(name.endswith(".safetensors") for name in self.files):
            return "safetensors"
        return "pickle"

    @property
    def weight_files(self) -> list[str]:
        """The weight files (not their index), sorted."""
        wanted = (".safetensors",) if self.weight_format == "safetensors" else PICKLE_SUFFIXES
        return sorted(name for name in self.files if name.endswith(wanted))

    def path(self, name: str) -> Path:
        """Absolute path of one of :attr:`files`."""
        return self.root / name
