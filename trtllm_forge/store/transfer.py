"""Push local artifacts to a remote cache and pull them back.

Pull downloads an entry's blobs into a staging dir inside the store, writes the
remote manifest next to them verbatim, and lets the store check every file's
blake3 against it before the usual atomic rename: a damaged or partial remote
entry is a miss with a reason, never a visible artifact; a file the local store
already holds (blobs.py) is linked, not downloaded. Push uploads blobs
(skipping those the remote already holds, which is what makes a rerun after a
kill resume) and the manifest last, with put-if-absent.

An entry may reference another store entry (a pass-through calibrate points at
its convert) and name sub-artifacts it was made from (``uses``); both travel with
it. References outside the store (a local source folder, the HF cache) do not:
they are the machine's own, and an entry whose references are absent is a miss.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trtllm_forge.context import Progress
from trtllm_forge.errors import ExitCode, ForgeError, store_error
from trtllm_forge.faults import point
from trtllm_forge.store import events
from trtllm_forge.store.manifest import MANIFEST, MANIFEST_SCHEMA
from trtllm_forge.store.remote import (
    ENTRIES,
    MANIFEST_LIMIT,
    blob_name,
    entry_name,
    parse_entry_name,
    valid_ref,
)
from trtllm_forge.store.remote_backend import RemoteBackend, RemoteObjectDamaged
from trtllm_forge.store.store import Artifact, Invalid, Store, disk_full_error, resolve_recorded

_MAX_DEPTH = 8  # entries referencing entries: a loop in a hostile manifest must end


@dataclass(frozen=True)
class Miss:
    """Why the remote could not provide an entry (shown to the user, never fatal)."""

    reason: str
    absent: bool = False  # nothing there at all, as opposed to something damaged


@dataclass
class Pushed:
    stage: str
    key: str
    uploaded_files: int = 0
    uploaded_bytes: int = 0
    already: bool = False  # the remote had the entry (another runner, or an earlier push)


class RemoteCache:
    """A store paired with a remote backend."""

    def __init__(self, store: Store, backend: RemoteBackend, progress: Progress) -> None:
        self.store = store
        self.backend = backend
        self.progress = progress

    # -- pull -------------------------------------------------------------------
    def pull(
        self, stage: str, key: str, *, depth: int = 0, locked: bool = False
    ) -> Artifact | Miss:
        """Fetch one entry (and what it references) into the store. ``locked``: the
        caller already holds the key's lock (the runner, between lookup and build)."""
        found = self.store.lookup(stage, key)
        if isinstance(found, Artifact):
            return found
        raw = self.backend.read_bytes(entry_name(stage, key), MANIFEST_LIMIT)
        if raw is None:
            return Miss(f"{stage} {key} is not on the remote", absent=True)
        manifest = _parse_manifest(raw, stage, key)
        if isinstance(manifest, Miss):
            return manifest
        outside = _missing_outside_root(self.store, manifest)
        if outside is not None:  # e.g. a local source folder at another path on this machine
            return Miss(f"{stage} {key} references {outside}, absent here", absent=True)
        if depth < _MAX_DEPTH:
            miss = self._pull_references(manifest, depth)
            if miss is not None:
                return miss
        if locked:
            return self._download(stage, key, manifest, raw)
        with self.store.lock(key):
            found = self.store.lookup(stage, key)
            if isinstance(found, Artifact):  # pulled or built by another process meanwhile
                return found
            return self._download(stage, key, manifest, raw)

    def _pull_references(self, manifest: dict[str, Any], depth: int) -> Miss | None:
        for ref_stage, ref_key in _references(self.store, manifest):
            got = self.pull(ref_stage, ref_key, depth=depth + 1)
            if isinstance(got, Miss):
                return Miss(f"needs {ref_stage} {ref_key}: {got.reason}")
        return None

    def _download(
        self, stage: str, key: str, manifest: dict[str, Any], raw: bytes
    ) -> Artifact | Miss:
        staging = self.store.new_staging_dir(stage, key)
        try:
            files = manifest["files"]
            total = sum(int(meta["size"]) for meta in files.values())
            with self.progress.task(f"pull {stage}", total=total) as task:
                for name, meta in sorted(files.items()):
                    dest = staging / name
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    if self.store.blobs.place(str(meta["digest"]), int(meta["size"]), dest):
                        task.advance(int(meta["size"]))  # held here already: not downloaded
                        continue
                    blob = blob_name(str(meta["digest"]))
                    assert blob is not None  # checked by _parse_manifest
                    self.backend.download(blob, dest, int(meta["size"]), task.advance)
                    point("remote.pull.after_file")
            (staging / MANIFEST).write_bytes(raw)
            point("remote.pull.before_install")
            installed = self.store.install(stage, key, staging)
        except RemoteObjectDamaged as err:
            shutil.rmtree(staging, ignore_errors=True)
            return Miss(f"remote entry {stage} {key} is incomplete: {err.message}")
        except OSError as exc:  # writing here failed: a full disk is the store's problem
            shutil.rmtree(staging, ignore_errors=True)
            full = disk_full_error(exc, f"pulling the {stage} artifact")
            if full is not None:
                raise full from None
            return Miss(f"remote entry {stage} {key} cannot be written here: {exc}")
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        if isinstance(installed, Invalid):
            shutil.rmtree(staging, ignore_errors=True)
            return Miss(f"remote entry {stage} {key} is damaged: {installed.reason}")
        return installed

    # -- push -------------------------------------------------------------------
    def push(self, artifact: Artifact, *, depth: int = 0) -> list[Pushed]:
        """Upload one valid local entry and what it references; files first, manifest last."""
        done: list[Pushed] = []
        if depth < _MAX_DEPTH:
            for ref_stage, ref_key in _references(self.store, artifact.manifest):
                ref = self.store.lookup(ref_stage, ref_key)
                if isinstance(ref, Artifact):
                    done += self.push(ref, depth=depth + 1)
        done.append(self._push_one(artifact))
        return done

    def _push_one(self, artifact: Artifact) -> Pushed:
        result = Pushed(artifact.stage, artifact.key)
        name = entry_name(artifact.stage, artifact.key)
        if self.backend.size(name) is not None:
            result.already = True  # files first, manifest last: its blobs are there
            return result
        files = artifact.manifest.get("files", {})
        total = sum(int(meta["size"]) for meta in files.values())
        with self.progress.task(f"push {artifact.stage}", total=total) as task:
            for rel, meta in sorted(files.items()):
                blob = blob_name(str(meta["digest"]))
                if blob is None:
                    raise store_error(f"{artifact.stage} {artifact.key}: bad digest for {rel}")
                if self.backend.size(blob) == int(meta["size"]):
                    task.advance(int(meta["size"]))  # pushed before (resumed push, shared file)
                    continue
                self.backend.upload(artifact.path / rel, blob, task.advance)
                result.uploaded_files += 1
                result.uploaded_bytes += int(meta["size"])
                point("remote.push.after_blob")
        point("remote.push.before_manifest")
        raw = (artifact.path / MANIFEST).read_bytes()
        result.already = not self.backend.put_if_absent(name, raw)
        point("remote.push.after_manifest")
        return result

    # -- listing ----------------------------------------------------------------
    def entries(self) -> list[tuple[str, str]]:
        """(stage, key) of every manifest on the remote."""
        out = []
        for name in self.backend.list(f"{ENTRIES}/"):
            parsed = parse_entry_name(name)
            if parsed is not None:
                out.append(parsed)
        return sorted(out)


def _parse_manifest(raw: bytes, stage: str, key: str) -> dict[str, Any] | Miss:
    """The remote manifest if it is well-formed and names only safe files and digests."""
    try:
        data = json.loads(raw)
    except ValueError:
        return Miss(f"remote manifest of {stage} {key} is not JSON")
    if not isinstance(data, dict) or data.get("schema") != MANIFEST_SCHEMA:
        return Miss(f"remote manifest of {stage} {key} has an unknown schema")
    if data.get("stage") != stage or data.get("key") != key:
        return Miss(f"remote manifest of {stage} {key} belongs to another key")
    external = data.get("external")
    if external is not None and (
        not isinstance(external, dict) or ".." in Path(str(external.get("root"))).parts
    ):
        return Miss(f"remote manifest of {stage} {key} references a path that climbs out")
    files = data.get("files")
    if not isinstance(files, dict):
        return Miss(f"remote manifest of {stage} {key} lists no files")
    for name, meta in files.items():
        problem = _bad_file(name, meta)
        if problem:
            return Miss(f"remote manifest of {stage} {key}: {problem}")
    return data


def _bad_file(name: Any, meta: Any) -> str | None:
    path = Path(str(name))
    if not isinstance(name, str) or not name or path.is_absolute() or ".." in path.parts:
        return f"file name {name!r} escapes the entry"
    if name == MANIFEST:
        return "a file named manifest.json"
    if not isinstance(meta, dict) or not isinstance(meta.get("size"), int) or meta["size"] < 0:
        return f"{name}: bad size"
    if blob_name(str(meta.get("digest"))) is None:
        return f"{name}: bad digest {meta.get('digest')!r:.80}"
    return None


def _missing_outside_root(store: Store, manifest: dict[str, Any]) -> Path | None:
    """An external root outside the store (a source folder, the HF cache) that this
    machine does not have: the entry cannot be used here, and nothing is wrong with it."""
    external = manifest.get("external")
    if not isinstance(external, dict) or not isinstance(external.get("root"), str):
        return None
    root = resolve_recorded(store.root, external["root"])
    if root.is_relative_to(store.root) or root.is_dir():
        return None
    return root


def _references(store: Store, manifest: dict[str, Any]) -> list[tuple[str, str]]:
    """Store entries this one needs: an external root inside the store, and ``uses``."""
    refs: list[tuple[str, str]] = []
    external = manifest.get("external")
    if isinstance(external, dict) and isinstance(external.get("root"), str):
        root = resolve_recorded(store.root, external["root"])
        try:
            rel = root.relative_to(store.root / "artifacts")
        except ValueError:
            rel = None
        if rel is not None and len(rel.parts) == 2:
            refs.append((rel.parts[0], f"blake3:{rel.parts[1]}"))
    uses = manifest.get("uses")
    if isinstance(uses, dict):
        refs += sorted(uses.items())
    return [(stage, key) for stage, key in refs if valid_ref(stage, key)]


class AutoRemote:
    """The remote as ``forge build`` uses it: pull on a local miss, push after a commit.

    Best effort by design: a remote that is down or refuses us is a warning and the
    build carries on locally (the first such failure turns the remote off for the rest
    of the run, so an unreachable endpoint costs one timeout, not one per stage).
    """

    def __init__(self, cache: RemoteCache, *, push: bool) -> None:
        self.cache = cache
        self.push_enabled = push
        self.failed: str | None = None

    @classmethod
    def from_settings(cls, store: Store, ctx: Any) -> AutoRemote | None:
        """None when FORGE_REMOTE is unset; exit 2/4 for a bad URL or a missing plugin."""
        from trtllm_forge.store.remote import open_remote, redact

        url = ctx.settings.remote
        if not url:
            return None
        try:
            backend = open_remote(url)
        except ForgeError as err:
            if err.code != ExitCode.STORE:
                raise
            ctx.progress.log(f"warning: remote cache {redact(url)} unusable: {err.message}")
            return None
        return cls(RemoteCache(store, backend, ctx.progress), push=ctx.settings.remote_push)

    def pull(self, stage: str, key: str) -> Artifact | None:
        """The entry from the remote (the key's lock is held), or None on any miss."""
        if self.failed:
            return None
        got = self._guard(lambda: self.cache.pull(stage, key, locked=True), stage, key)
        if isinstance(got, Miss):
            if not got.absent:  # damaged or partial: say so, then build locally
                self.cache.progress.log(f"warning: {got.reason}; building locally")
                events.record(self.cache.store.root, "remote-miss", stage, key, reason=got.reason)
            return None
        if isinstance(got, Artifact):
            events.record(self.cache.store.root, "pull", stage, key)
        return got

    def push(self, artifact: Artifact) -> None:
        if self.failed or not self.push_enabled:
            return
        pushed = self._guard(lambda: self.cache.push(artifact), artifact.stage, artifact.key)
        if pushed is not None:
            events.record(self.cache.store.root, "push", artifact.stage, artifact.key)

    def _guard(self, action: Any, stage: str, key: str) -> Any:
        try:
            return action()
        except (ForgeError, OSError) as exc:
            if isinstance(exc, ForgeError) and exc.code != ExitCode.STORE:
                raise
            why = exc.message if isinstance(exc, ForgeError) else str(exc)
            self.failed = why
            self.cache.progress.log(
                f"warning: remote cache unavailable ({why}); continuing with the local store"
            )
            events.record(self.cache.store.root, "remote-error", stage, key, error=why)
            return None
