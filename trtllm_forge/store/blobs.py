"""Content-addressed blobs: a file held by several artifacts is stored once.

Layout::

    blobs/<hex[:2]>/<hex>    a hard link to a file that some artifact holds

When an artifact is published, each of its files at least ``MIN_BLOB_BYTES`` long
is *interned*: if a blob with its digest exists, the staged copy is replaced by a
hard link to the blob; if not, the staged file becomes that blob. Identical files
(a converted checkpoint and its tp = 1 shard, a calibrate that changed nothing)
then share one inode, as in DVC's and the Hugging Face cache's blob stores.

Why hard links and not symlinks: an artifact stays a plain folder of regular files,
complete on its own. Nothing reads ``blobs/``; it is only the index that finds an
equal file. So a store copied without its links (``cp -r``) still works (each copy
is whole; the unshared blobs are swept by gc), a file system that refuses links
(EXDEV, EPERM, EMLINK, ...) keeps the copy, and a blob deleted at any moment
costs future sharing, never an artifact.

Shared files are made read-only (0444): editing one artifact's file in place would
change every artifact holding it. A blob is trusted only after its digest is
checked through the stat memo; a damaged one is rewritten in place from the good
file being published, which repairs every artifact that shares it.

A blob no artifact holds has a link count of 1; :meth:`Blobs.sweep` removes it.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import stat
import uuid
from collections.abc import Iterable
from pathlib import Path

from trtllm_forge.store.memo import DigestMemo

BLOBS = "blobs"
# Configs and tokenizer files are small and differ between artifacts: an inode each
# would cost more than the bytes it saves.
MIN_BLOB_BYTES = 64 << 10
READ_ONLY = 0o444
_DIGEST = re.compile(r"blake3:([0-9a-f]{64})")
_ATTEMPTS = 4  # a concurrent gc or publish can change a blob between two calls


class Blobs:
    def __init__(self, store_root: Path, memo: DigestMemo) -> None:
        self.root = store_root / BLOBS
        self.memo = memo

    def path(self, digest: str) -> Path | None:
        match = _DIGEST.fullmatch(digest)
        if match is None:
            return None
        hexd = match.group(1)
        return self.root / hexd[:2] / hexd

    def intern(self, file: Path, digest: str, size: int) -> bool:
        """Store ``file`` (whose digest is known) once; True when it now shares a blob.

        ``file`` must not be visible to readers yet (a staging dir): it may be
        replaced by a link. Must be called with the artifact key's lock held.
        """
        blob = self.path(digest)
        if blob is None or size < MIN_BLOB_BYTES:
            return False
        _fsync(file)  # a blob's bytes are durable before another artifact may link to them
        if stat.S_IMODE(file.stat().st_mode) != READ_ONLY:
            # Only when needed: chmod changes the inode's ctime, which would make every
            # holder of a file already shared (an engine's link to its shard) re-hash it.
            os.chmod(file, READ_ONLY)
        for _ in range(_ATTEMPTS):
            try:
                return self._intern_once(file, blob, digest, size)
            except (FileExistsError, FileNotFoundError):
                continue  # raced with another publish or a sweep: look again
            except OSError:
                # No links here (EXDEV, EPERM, EMLINK, ...), a full disk, a blob that would not
                # repair: the artifact keeps its own copy, which is always correct.
                return False
        return False

    def _intern_once(self, file: Path, blob: Path, digest: str, size: int) -> bool:
        try:
            st = blob.lstat()
        except FileNotFoundError:
            blob.parent.mkdir(parents=True, exist_ok=True)
            os.link(file, blob)
            self.memo.record(file, digest)
            return True
        if not stat.S_ISREG(st.st_mode):
            return False  # not ours to touch: keep the copy
        if os.path.samestat(st, file.stat()):
            self.memo.record(file, digest)  # linked before publishing: its ctime moved
            return True
        if st.st_size != size or self.memo.digest(blob) != digest:
            self._repair(blob, file, st, digest)
        _replace_with_link(blob, file)
        self.memo.record(file, digest)
        return True

    def _repair(self, blob: Path, good: Path, st: os.stat_result, digest: str) -> None:
        """A damaged blob: unlinked when nothing holds it, else rewritten in place
        (same inode) from ``good``, so every artifact sharing it is whole again."""
        if st.st_nlink <= 1:
            blob.unlink()
            raise FileNotFoundError(blob)  # the caller looks again and links ``good``
        os.chmod(blob, 0o644)
        try:
            shutil.copyfile(good, blob)  # opens the existing inode, truncated
            _fsync(blob)
        finally:
            os.chmod(blob, READ_ONLY)
        if self.memo.digest(blob, fresh=True) != digest:
            raise OSError(errno.EIO, f"could not repair blob {blob}")

    def place(self, digest: str, size: int, dest: Path) -> bool:
        """Link a held blob of ``digest`` at ``dest`` (a pull that needs no download);
        False when there is none, or it is damaged, or links are impossible."""
        blob = self.path(digest)
        if blob is None or size < MIN_BLOB_BYTES:
            return False
        try:
            st = blob.lstat()
            if not stat.S_ISREG(st.st_mode) or st.st_size != size:
                return False
            if self.memo.digest(blob) != digest:
                return False
            os.link(blob, dest)
        except OSError:
            return False
        self.memo.record(dest, digest)
        return True

    def holding(self, digests: Iterable[str]) -> dict[Path, str | None]:
        """The blobs of ``digests``, each with its digest when the memo vouches for its
        bytes now (checked, and nothing wrote to it since): see :meth:`release`."""
        out: dict[Path, str | None] = {}
        for digest in digests:
            blob = self.path(digest)
            if blob is not None:
                out[blob] = digest if self.memo.cached(blob) == digest else None
        return out

    def release(self, held: dict[Path, str | None]) -> int:
        """After an artifact holding these blobs was deleted: sweep the blobs nobody
        holds now, and re-record the vouched-for rest in the memo. Unlinking a name
        changes the inode's ctime, which would otherwise make every holder re-hash."""
        freed = self.sweep(held)
        for blob, digest in held.items():
            if digest is not None and blob.exists():
                self.memo.record(blob, digest)
        return freed

    def sweep(self, blobs: Iterable[Path] | None = None) -> int:
        """Delete blobs no artifact (nor staging dir) holds; returns the bytes freed."""
        freed = 0
        for blob in self.all() if blobs is None else blobs:
            try:
                st = blob.lstat()
                if stat.S_ISREG(st.st_mode) and st.st_nlink == 1:
                    blob.unlink()
                    freed += st.st_size
            except FileNotFoundError:
                continue
        return freed

    def all(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.glob("??/*") if _DIGEST.fullmatch(f"blake3:{p.name}"))


def _replace_with_link(blob: Path, file: Path) -> None:
    """Swap ``file`` for a link to ``blob`` atomically (a reader sees one or the other)."""
    tmp = file.with_name(f".{file.name}.{uuid.uuid4().hex[:8]}.link")
    os.link(blob, tmp)
    try:
        os.replace(tmp, file)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
