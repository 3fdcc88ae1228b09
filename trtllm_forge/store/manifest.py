"""``manifest.json``: how an artifact was made and what it contains."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trtllm_forge.store.digest import digest_json

MANIFEST = "manifest.json"
MANIFEST_SCHEMA = 1


@dataclass(frozen=True)
class FileEntry:
    size: int
    digest: str

    def to_json(self) -> dict[str, Any]:
        return {"size": self.size, "digest": self.digest}


def content_digest(files: dict[str, FileEntry], external: dict[str, Any] | None) -> str:
    """What downstream keys depend on: the artifact's content, not its key.

    Two different keys that produce identical bytes give the same content
    digest, so downstream stages stay cached (early cut-off).
    """
    listing = {name: entry.digest for name, entry in sorted(files.items())}
    ext = None
    if external:
        ext = {name: meta["digest"] for name, meta in sorted(external.get("files", {}).items())}
    return digest_json({"files": listing, "external": ext})


def write_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def read_manifest(directory: Path) -> dict[str, Any] | None:
    """The parsed manifest, or None when missing or not a JSON object."""
    try:
        data = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("schema") == MANIFEST_SCHEMA else None
