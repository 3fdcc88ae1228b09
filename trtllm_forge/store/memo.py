"""Stat-memoised file digests so an unchanged multi-GB file is never re-read.

The memo maps (device, inode, size, mtime_ns, ctime_ns) → digest. Any write to
the file changes mtime/ctime, so a stale entry can never be returned for
changed bytes (a write that restores the old mtime still changes ctime).
Stored in SQLite under the store root; safe for concurrent processes. The
memo is only a cache: a damaged database file is deleted and started afresh
(files are then re-hashed once), and one that cannot be used at all (disk
full, lock timeout) is bypassed — never a reason to fail a build.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from trtllm_forge.store.digest import digest_file

_SCHEMA = """
CREATE TABLE IF NOT EXISTS file_digest (
  dev INTEGER, ino INTEGER, size INTEGER, mtime_ns INTEGER, ctime_ns INTEGER,
  digest TEXT NOT NULL,
  PRIMARY KEY (dev, ino)
)
"""


def _is_damage(exc: sqlite3.DatabaseError) -> bool:
    # OperationalError covers "locked", "disk full", "disk I/O error", "readonly": not the file's fault.
    return not isinstance(exc, sqlite3.OperationalError)


class DigestMemo:
    """The memo is a cache: when SQLite cannot be used (a full disk, a lock held
    past the timeout), digests are computed without it rather than failing."""

    def __init__(self, db_path: Path) -> None:
        db_path.parent.mkdir(parents=True, exist_ok=True)
        self._path = db_path
        self.hits = 0
        self.misses = 0
        self._db: sqlite3.Connection | None = None
        try:
            self._db = self._open()
        except sqlite3.DatabaseError as exc:
            self._recover(exc)

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(str(self._path), timeout=60, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(_SCHEMA)
        except BaseException:
            db.close()
            raise
        return db

    def _recover(self, exc: sqlite3.DatabaseError) -> None:
        """A damaged file is deleted and started afresh; an unusable one is bypassed."""
        if self._db is not None:
            self._db.close()
        self._db = None
        if not _is_damage(exc):
            return
        for suffix in ("", "-wal", "-shm"):
            Path(f"{self._path}{suffix}").unlink(missing_ok=True)
        try:
            self._db = self._open()
        except sqlite3.DatabaseError:
            self._db = None

    def close(self) -> None:
        if self._db is not None:
            self._db.close()

    def digest(self, path: Path, *, fresh: bool = False) -> str:
        """The file's digest; ``fresh`` re-reads the bytes even when the stat matches
        (a scrub: catches bit rot that left size and times alone) and refreshes the memo."""
        st = os.stat(path)
        stamp = (st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        row = None if fresh else self._lookup(st.st_dev, st.st_ino)
        if row is not None and tuple(row[:3]) == stamp:
            self.hits += 1
            return str(row[3])
        self.misses += 1
        value = digest_file(path)
        self._remember(st.st_dev, st.st_ino, stamp, value)
        return value

    def cached(self, path: Path) -> str | None:
        """The memo's digest when its stat stamp is current, without reading the file."""
        try:
            st = os.stat(path)
        except OSError:
            return None
        row = self._lookup(st.st_dev, st.st_ino)
        if row is None or tuple(row[:3]) != (st.st_size, st.st_mtime_ns, st.st_ctime_ns):
            return None
        return str(row[3])

    def record(self, path: Path, digest: str) -> None:
        """Remember a digest the caller knows (a file it just linked: linking changes an
        inode's ctime, not its bytes, and would otherwise make every holder re-hash)."""
        st = os.stat(path)
        self._remember(st.st_dev, st.st_ino, (st.st_size, st.st_mtime_ns, st.st_ctime_ns), digest)

    def _lookup(self, dev: int, ino: int) -> tuple[int, int, int, str] | None:
        if self._db is None:
            return None
        try:
            row = self._db.execute(
                "SELECT size, mtime_ns, ctime_ns, digest FROM file_digest WHERE dev=? AND ino=?",
                (dev, ino),
            ).fetchone()
        except sqlite3.DatabaseError as exc:
            self._recover(exc)
            return None
        return None if row is None else (int(row[0]), int(row[1]), int(row[2]), str(row[3]))

    def _remember(self, dev: int, ino: int, stamp: tuple[int, int, int], value: str) -> None:
        if self._db is None:
            return
        try:
            self._db.execute(
                "INSERT OR REPLACE INTO file_digest VALUES (?,?,?,?,?,?)", (dev, ino, *stamp, value)
            )
        except sqlite3.DatabaseError as exc:
            self._recover(exc)
