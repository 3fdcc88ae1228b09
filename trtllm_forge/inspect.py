"""`forge inspect PATH|KEY`: what an engine, a checkpoint or an artifact is."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trtllm_forge.errors import recipe_error
from trtllm_forge.store.manifest import read_manifest
from trtllm_forge.store.store import Store


def inspect_target(target: str, store: Store) -> dict[str, Any]:
    path = Path(target).expanduser()
    if not path.exists():
        path = _find_key(target, store)
    path = path.resolve()
    if path.is_file():
        path = path.parent
    out: dict[str, Any] = {"path": str(path)}
    manifest = read_manifest(path)
    if manifest is not None:
        _check_intact(path, manifest, store)
        out["artifact"] = _artifact_summary(manifest)
    else:  # a folder inside an artifact (its engine/): the artifact must be whole too
        owner = read_manifest(path.parent)
        if owner is not None:
            _check_intact(path.parent, owner, store)
        out["manifest"] = manifest
    content = _content_dir(path, manifest)
    kind, details = _describe(content)
    out["kind"] = (
        kind if kind != "unknown" or manifest is None else f"{manifest.get('stage')} artifact"
    )
    if details:
        out[kind] = details
    return out


def _check_intact(path: Path, manifest: dict[str, Any], store: Store) -> None:
    """An artifact of this store is described only if it is whole: a truncated engine
    used to be inspected without a word (exit 0). The store's own check decides."""
    from trtllm_forge.errors import store_error
    from trtllm_forge.store.store import Invalid

    stage, key = str(manifest.get("stage")), str(manifest.get("key"))
    if path != store.artifact_dir(stage, key).resolve():
        return  # a copy outside the store: nothing to compare it with here
    found = store.lookup(stage, key)
    if isinstance(found, Invalid):
        raise store_error(
            f"the {stage} artifact at {path} is damaged: {found.reason}",
            hint="run `forge cache verify --fix`, then rebuild it",
        )


def _artifact_summary(manifest: dict[str, Any]) -> dict[str, Any]:
    files = manifest.get("files", {})
    return {
        "stage": manifest.get("stage"),
        "key": manifest.get("key"),
        "content_digest": manifest.get("content_digest"),
        "seconds": manifest.get("seconds"),
        "files": len(files),
        "bytes": sum(int(f.get("size", 0)) for f in files.values()),
        "recipe": manifest.get("recipe"),
        "tools": manifest.get("inputs", {}).get("tools"),
        "external_root": (manifest.get("external") or {}).get("root"),
    }


def _content_dir(path: Path, manifest: dict[str, Any] | None) -> Path:
    """Where an artifact's interesting content is (engine subdir, referenced checkpoint)."""
    if (path / "engine").is_dir():
        return path / "engine"
    if (path / "hf").is_dir():  # build.backend: hf
        return path / "hf"
    if manifest and manifest.get("external") and not (path / "config.json").exists():
        from trtllm_forge.store.store import resolve_recorded

        # path is <store>/artifacts/<stage>/<hex>; a root inside the store is relative to it
        return resolve_recorded(path.resolve().parents[2], str(manifest["external"]["root"]))
    return path


def _describe(path: Path) -> tuple[str, dict[str, Any] | None]:
    from trtllm_forge.engine.inspect import inspect_checkpoint, inspect_engine
    from trtllm_forge.engine.metadata import ENGINE_FILE

    if (path / ENGINE_FILE).is_file():
        return "engine", inspect_engine(path)
    if (path / "config.json").is_file() and any(path.glob("rank*.safetensors")):
        return "checkpoint", inspect_checkpoint(path)
    from trtllm_forge.hf.reader import describe, is_hf_folder

    if is_hf_folder(path):  # format, algo, group size, exclusions, KV; exit 5 when damaged
        return "hf_folder", describe(path).to_dict()
    return "unknown", None


def _find_key(prefix: str, store: Store) -> Path:
    wanted = prefix.split(":", 1)[-1].lower()
    if len(wanted) < 4 or any(c not in "0123456789abcdef" for c in wanted):
        raise recipe_error(
            f"{prefix!r} is neither an existing path nor an artifact key",
            hint="give a path, or at least 4 hex characters of a key (see `forge cache ls`)",
        )
    base = store.root / "artifacts"
    matches = sorted(base.glob(f"*/{wanted}*")) if base.exists() else []
    if not matches:
        raise recipe_error(f"no artifact key starts with {wanted}", hint="see `forge cache ls`")
    if len(matches) > 1:
        names = ", ".join(f"{m.parent.name}/{m.name[:12]}" for m in matches[:5])
        raise recipe_error(
            f"key prefix {wanted} is ambiguous ({names})", hint="give more characters"
        )
    return matches[0]
