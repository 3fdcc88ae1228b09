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
    """The parsed manifest, or None when missing, not JSON, or not of the shape
    :meth:`Store.commit` writes (every reader indexes it without further checks: a
    ``files`` list or a string ``size`` used to be an internal error in ``cache verify``)."""
    try:
        data = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError, RecursionError):
        return None
    return data if _well_formed(data) else None


def _well_formed(data: Any) -> bool:
    if not isinstance(data, dict) or data.get("schema") != MANIFEST_SCHEMA:
        return False
    if not all(isinstance(data.get(f), str) for f in ("stage", "key", "content_digest")):
        return False
    if not _file_listing(data.get("files")):
        return False
    for field, kind in (("info", dict), ("inputs", dict), ("uses", dict)):
        if field in data and data[field] is not None and not isinstance(data[field], kind):
            return False
    uses = data.get("uses") or {}
    if not all(isinstance(v, str) for v in uses.values()):
        return False
    for field in ("created_unix", "seconds"):
        value = data.get(field)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            return False
    external = data.get("external")
    if external is None:
        return True
    return (
        isinstance(external, dict)
        and isinstance(external.get("root"), str)
        and "\x00" not in external["root"]  # no path holds one: os calls raise ValueError
        # a hub file the HF cache holds as a copy has no published digest (fetch: None)
        and _file_listing(external.get("files", {}), digest=(str, type(None)))
        and isinstance(external.get("rehash", True), bool)
    )


def _file_listing(files: Any, digest: type | tuple[type, ...] = str) -> bool:
    """``{name: {"size": int >= 0, "digest": str}}``."""
    return isinstance(files, dict) and all(
        "\x00" not in name
        and isinstance(meta, dict)
        and type(meta.get("size")) is int
        and meta["size"] >= 0
        and "digest" in meta
        and isinstance(meta["digest"], digest)
        for name, meta in files.items()
    )
