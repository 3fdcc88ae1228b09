"""The local artifact store under ``$FORGE_HOME``.

Layout::

    artifacts/<stage>/<key-hex>/   one immutable artifact: files + manifest.json
    blobs/<hex[:2]>/<hex>          hard links to artifacts' files by digest (stored once)
    tmp/                           staging dirs, renamed into place when complete
    locks/<key-hex>.lock           per-key flock
    refs/<recipe-id>.json          the last build of each recipe (for plan and gc)
    memo.sqlite                    stat-memoised file digests

An artifact is visible only after ``rename(tmp, final)``, so a crash leaves at
most a staging dir in ``tmp/`` that no reader ever looks at. An entry whose
manifest is missing, unparsable or whose files do not match their digests is
a miss and is rebuilt. Identical files of different artifacts share one inode
through ``blobs/`` (see blobs.py); an artifact never depends on a blob existing.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import stat
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trtllm_forge.errors import ForgeError, store_error
from trtllm_forge.faults import point
from trtllm_forge.store.blobs import Blobs
from trtllm_forge.store.digest import short
from trtllm_forge.store.lock import key_lock
from trtllm_forge.store.manifest import (
    MANIFEST,
    MANIFEST_SCHEMA,
    FileEntry,
    content_digest,
    read_manifest,
    write_manifest,
)
from trtllm_forge.store.memo import DigestMemo
from trtllm_forge.userfiles import pseudo_file_problem


@dataclass(frozen=True)
class Artifact:
    stage: str
    key: str
    path: Path
    manifest: dict[str, Any]

    @property
    def content_digest(self) -> str:
        return str(self.manifest["content_digest"])

    @property
    def info(self) -> dict[str, Any]:
        return dict(self.manifest.get("info", {}))

    @property
    def external_root(self) -> Path | None:
        ext = self.manifest.get("external")
        # self.path is <store root>/artifacts/<stage>/<hex>
        return resolve_recorded(self.path.parents[2], ext["root"]) if ext else None


@dataclass(frozen=True)
class Invalid:
    """Why an existing entry was rejected (reported to the user as a rebuild reason)."""

    reason: str


def _hex(key: str) -> str:
    return key.split(":", 1)[-1]


# The tail every artifact directory's path ends in (keys are 64-hex blake3 digests).
_ARTIFACT_TAIL = re.compile(r"artifacts/[A-Za-z0-9_.-]+/[0-9a-f]{64}")


def recorded(root: Path, path: Path) -> str:
    """How the store records a path of its own (refs, external roots): relative to the
    store root, so a copied or moved store keeps meaning the same entries."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)  # outside the store (a user's model folder): kept as given


def resolve_recorded(root: Path, text: str) -> Path:
    """The path a recorded string stands for in the store at ``root``.

    Relative strings are under the root. Absolute ones ending in
    ``artifacts/<stage>/<hex>`` were written by an older forge, or by this store before
    it moved: they name this store's entry of that stage and key.
    """
    path = Path(text)
    if not path.is_absolute():
        return root / path
    tail = Path(*path.parts[-3:]) if len(path.parts) > 3 else None
    if tail is not None and _ARTIFACT_TAIL.fullmatch(tail.as_posix()):
        return root / tail
    return path


class Store:
    def __init__(self, root: Path, *, lock_timeout_s: float = 3600.0) -> None:
        self.root = root
        self.lock_timeout_s = lock_timeout_s
        self._memo: DigestMemo | None = None

    # -- paths -------------------------------------------------------------
    def artifact_dir(self, stage: str, key: str) -> Path:
        return self.root / "artifacts" / stage / _hex(key)

    @property
    def tmp_root(self) -> Path:
        return self.root / "tmp"

    @property
    def memo(self) -> DigestMemo:
        if self._memo is None:
            try:
                self._memo = DigestMemo(self.root / "memo.sqlite")
            except OSError as exc:
                raise store_error(
                    f"cannot open the store at {self.root}: {exc.strerror}",
                    hint="check FORGE_HOME and its permissions",
                ) from None
        return self._memo

    @property
    def blobs(self) -> Blobs:
        return Blobs(self.root, self.memo)

    # -- reading -----------------------------------------------------------
    def lookup(self, stage: str, key: str, *, deep: bool = False) -> Artifact | Invalid | None:
        """The valid artifact for ``key``; ``Invalid`` if present but damaged; None if absent.

        ``deep`` re-reads every file instead of trusting the stat memo (``forge cache verify``).
        """
        path = self.artifact_dir(stage, key)
        if not path.exists():
            return None
        manifest = read_manifest(path)
        if manifest is None:
            return Invalid("manifest.json is missing or unreadable")
        if manifest.get("key") != key or manifest.get("stage") != stage:
            return Invalid("manifest.json belongs to another key")
        problem = self._check_files(path, manifest, deep)
        if problem:
            return Invalid(problem)
        return Artifact(stage, key, path, manifest)

    def _check_files(self, path: Path, manifest: dict[str, Any], deep: bool = False) -> str | None:
        for name, meta in manifest.get("files", {}).items():
            problem = _unsafe_name(name) or self._check_one(path / name, meta, name, deep=deep)
            if problem:
                return problem
        ext = manifest.get("external")
        if ext:
            root = self.resolve_recorded(str(ext["root"]))
            problem = pseudo_file_problem(root)
            if problem:
                return f"external root {root} {problem}"
            for name, meta in ext.get("files", {}).items():
                problem = _unsafe_name(name)
                if problem:
                    return problem
                problem = self._check_one(
                    root / name, meta, f"{root}/{name}", rehash=ext.get("rehash", True), deep=deep
                )
                if problem:
                    return problem
        return None

    def _check_one(
        self, file: Path, meta: dict[str, Any], label: str, rehash: bool = True, deep: bool = False
    ) -> str | None:
        try:
            st = file.stat()
        except OSError:
            return f"{label} is missing"
        # A manifest edited to name /dev/zero or a FIFO would be hashed forever.
        if not stat.S_ISREG(st.st_mode):
            return f"{label} is not a regular file"
        size = st.st_size
        if size != meta["size"]:
            return f"{label} has size {size}, expected {meta['size']}"
        if rehash and self.memo.digest(file, fresh=deep) != meta["digest"]:
            return f"{label} does not match its digest (corrupted?)"
        return None

    def artifacts(self, *, deep: bool = False) -> Iterator[Artifact | tuple[Path, Invalid]]:
        """Every entry in the store (validated), for ``forge cache ls/verify``."""
        base = self.root / "artifacts"
        if not base.exists():
            return
        for stage_dir in sorted(base.iterdir()):
            for entry in sorted(stage_dir.iterdir()):
                manifest = read_manifest(entry)
                key = str(manifest.get("key")) if manifest else f"blake3:{entry.name}"
                found = self.lookup(stage_dir.name, key, deep=deep)
                if isinstance(found, Artifact):
                    yield found
                else:
                    yield entry, found or Invalid("unreadable entry")

    def recorded(self, path: Path) -> str:
        return recorded(self.root, path)

    def resolve_recorded(self, text: str) -> Path:
        return resolve_recorded(self.root, text)

    # -- writing -----------------------------------------------------------
    @contextmanager
    def lock(self, key: str, on_wait: Callable[[], None] | None = None) -> Iterator[bool]:
        with key_lock(
            self.root / "locks" / f"{_hex(key)}.lock",
            timeout_s=self.lock_timeout_s,
            on_wait=on_wait,
        ) as waited:
            yield waited

    def new_staging_dir(self, stage: str, key: str) -> Path:
        path = self.tmp_root / f"{stage}-{short(key)}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            path.mkdir(parents=True)
        except OSError as exc:
            raise _os_store_error(exc, "creating a staging directory") from None
        return path

    def commit(self, stage: str, key: str, staging: Path, manifest: dict[str, Any]) -> Artifact:
        """Digest the staged files, write the manifest, and rename into place.

        Must be called with the key's lock held.
        """
        try:
            files = self._digest_tree(staging)
            external = manifest.get("external")
            if external is not None:  # a pass-through pointing into the store: relative
                external = {**external, "root": recorded(self.root, Path(external["root"]))}
            manifest = {
                **manifest,
                "schema": MANIFEST_SCHEMA,
                "stage": stage,
                "key": key,
                "files": {name: entry.to_json() for name, entry in sorted(files.items())},
                **({"external": external} if external is not None else {}),
                "content_digest": content_digest(files, external),
                "created_unix": time.time(),
            }
            point(f"store.commit.{stage}.before_manifest")
            write_manifest(staging, manifest)
            point(f"store.commit.{stage}.after_manifest")
            final = self._publish(stage, key, staging, files)
        except OSError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise _os_store_error(exc, f"committing the {stage} artifact") from None
        return Artifact(stage, key, final, manifest)

    def install(self, stage: str, key: str, staging: Path) -> Artifact | Invalid:
        """Publish a staging dir that already holds its files and manifest (a pulled
        remote entry), after checking every file against that manifest. Its manifest is
        kept byte for byte. Must be called with the key's lock held."""
        manifest = read_manifest(staging)
        if manifest is None or manifest.get("key") != key or manifest.get("stage") != stage:
            return Invalid("manifest.json is missing or belongs to another key")
        problem = self._check_files(staging, manifest, deep=True)
        if problem:
            return Invalid(problem)
        files = {
            name: FileEntry(int(meta["size"]), str(meta["digest"]))
            for name, meta in manifest.get("files", {}).items()
        }
        try:
            final = self._publish(stage, key, staging, files)
        except OSError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise _os_store_error(exc, f"installing the {stage} artifact") from None
        return Artifact(stage, key, final, manifest)

    def _publish(self, stage: str, key: str, staging: Path, files: dict[str, FileEntry]) -> Path:
        """Share files already stored (blobs), fsync the staged files and rename them
        into place (the entry becomes visible)."""
        blobs = self.blobs
        for name, entry in sorted(files.items()):
            blobs.intern(staging / name, entry.digest, entry.size)
        point(f"store.commit.{stage}.after_blobs")
        _fsync_tree(staging)
        final = self.artifact_dir(stage, key)
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():  # a damaged entry (we hold the lock, so nobody reads it)
            trash = self.tmp_root / f"trash-{uuid.uuid4().hex}"
            os.rename(final, trash)
            shutil.rmtree(trash, ignore_errors=True)
        point(f"store.commit.{stage}.before_rename")
        os.rename(staging, final)
        point(f"store.commit.{stage}.after_rename")
        return final

    def _digest_tree(self, staging: Path) -> dict[str, FileEntry]:
        files: dict[str, FileEntry] = {}
        for file in sorted(staging.rglob("*")):
            if file.is_symlink():
                raise store_error(
                    f"stage wrote a symlink {file.name}; artifacts hold plain files only"
                )
            if file.is_file() and file.name != MANIFEST:
                rel = file.relative_to(staging).as_posix()
                files[rel] = FileEntry(file.stat().st_size, self.memo.digest(file))
        return files

    def remove(self, artifact_dir: Path) -> int:
        """Delete one entry atomically (rename away first), and the blobs only it held;
        returns its size (what a disk without shared files would get back)."""
        size = dir_size(artifact_dir)
        listed = (read_manifest(artifact_dir) or {}).get("files", {})
        held = self.blobs.holding(
            str(meta.get("digest")) for meta in listed.values() if isinstance(meta, dict)
        )
        trash = self.tmp_root / f"trash-{uuid.uuid4().hex}"
        self.tmp_root.mkdir(parents=True, exist_ok=True)
        os.rename(artifact_dir, trash)
        shutil.rmtree(trash, ignore_errors=True)
        self.blobs.release(held)
        return size

    # -- refs (last build per recipe) --------------------------------------
    def write_ref(self, recipe_id: str, record: dict[str, Any]) -> None:
        path = self.root / "refs" / f"{recipe_id}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps(record, indent=2, sort_keys=True))
            point("store.ref.before_replace")
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)  # e.g. a full disk: leave no half-written ref behind
            raise

    def read_ref(self, recipe_id: str) -> dict[str, Any] | None:
        try:
            data = json.loads((self.root / "refs" / f"{recipe_id}.json").read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def refs(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        base = self.root / "refs"
        for file in sorted(base.glob("*.json")) if base.exists() else []:
            ref = self.read_ref(file.stem)
            if ref is not None:
                out[file.stem] = ref
        return out


def _unsafe_name(name: str) -> str | None:
    """A manifest's file names are relative to their root and never climb out of it."""
    parts = Path(name).parts
    if not parts or Path(name).is_absolute() or ".." in parts:
        return f"manifest names a file outside its root: {name!r}"
    return None


def dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def _fsync_tree(path: Path) -> None:
    """Make the bytes durable before the rename publishes them."""
    for file in path.rglob("*"):
        if file.is_file():
            fd = os.open(file, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
# What libraries that do their own I/O (sqlite, Rust/C++ writers) say instead of an errno.
_DISK_FULL_TEXT = (
    "no space left on device",
    "disk quota exceeded",
    "file too large",
    "database or disk is full",
)


def disk_full_error(exc: BaseException, doing: str) -> ForgeError | None:
    """A STORE error when ``exc`` (or what caused it) is a full disk / file-size limit, else None."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, OSError) and cause.errno in DISK_FULL_ERRNOS:
            return _disk_full(doing, cause.strerror or os.strerror(cause.errno))
        text = str(cause).lower()
        if not isinstance(cause, ForgeError) and any(t in text for t in _DISK_FULL_TEXT):
            return _disk_full(doing, str(cause).strip().splitlines()[0][:200])
        cause = cause.__cause__ or cause.__context__
    return None


def _disk_full(doing: str, why: str) -> ForgeError:
    return store_error(
        f"out of disk space while {doing}: {why}",
        hint="free space under FORGE_HOME (`forge cache gc`) or point FORGE_HOME elsewhere",
    )


def _os_store_error(exc: OSError, doing: str) -> Exception:
    if exc.errno in DISK_FULL_ERRNOS:
        return _disk_full(doing, exc.strerror or os.strerror(exc.errno))
    return store_error(
        f"store I/O error while {doing}: {exc.strerror} ({exc.filename})",
        hint="check FORGE_HOME and its permissions",
    )
