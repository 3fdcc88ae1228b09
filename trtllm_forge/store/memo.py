"""Stat-memoised file digests so an unchanged multi-GB file is never re-read.

The memo maps (device, inode, size, mtime_ns, ctime_ns) → digest. Any write to
the file changes mtime/ctime, so a stale entry can never be returned for
changed bytes (a write that restores the old mtime still changes ctime).
Stored in SQLite under the store root; safe for concurrent processes. The
memo is only a cache: a damaged database file is deleted and started afresh
(files are then re-hashed once), never a reason to fail a build.
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
    # OperationalError covers "locked", "disk full", "readonly": not the file's fault.
    return not isinstance(exc, sqlite3.OperationalError)


class DigestMemo:
    def __init__(self, db_path: Path) -> None:
        db_path.parent.mkdir(parents=True, exist_ok=True)
        self._path = db_path
        self.hits = 0
        self.misses = 0
        try:
            self._db = self._open()
        except sqlite3.DatabaseError as exc:
            if not _is_damage(exc):
                raise
            self._db = self._start_afresh()

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(str(self._path), timeout=60, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(_SCHEMA)
        except BaseException:
            db.close()
            raise
        return db

    def _start_afresh(self) -> sqlite3.Connection:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{self._path}{suffix}").unlink(missing_ok=True)
        return self._open()

    def close(self) -> None:
        self._db.close()

    def digest(self, path: Path, *, fresh: bool = False) -> str:
        """The file's digest; ``fresh`` re-reads the bytes even when the stat matches
        (a scrub: catches bit rot that left size and times alone) and refreshes the memo."""
        st = os.stat(path)
        stamp = (st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        try:
            row = self._db.execute(
                "SELECT size, mtime_ns, ctime_ns, digest FROM file_digest WHERE dev=? AND ino=?",
                (st.st_dev, st.st_ino),
            ).fetchone()
        except sqlite3.DatabaseError as exc:
            if not _is_damage(exc):
                raise
            self._db.close()
            self._db = self._start_afresh()
            row = None
        if row is not None and tuple(row[:3]) == stamp and not fresh:
            self.hits += 1
            return str(row[3])
        self.misses += 1
        value = digest_file(path)
        self._db.execute(
            "INSERT OR REPLACE INTO file_digest VALUES (?,?,?,?,?,?)",
            (st.st_dev, st.st_ino, *stamp, value),
        )
        return value
