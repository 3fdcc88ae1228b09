"""Stat-memoised file digests so an unchanged multi-GB file is never re-read.

The memo maps (device, inode, size, mtime_ns, ctime_ns) → digest. Any write to
the file changes mtime/ctime, so a stale entry can never be returned for
changed bytes (a write that restores the old mtime still changes ctime).
Stored in SQLite under the store root; safe for concurrent processes.
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


class DigestMemo:
    def __init__(self, db_path: Path) -> None:
        db_path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(db_path), timeout=60, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(_SCHEMA)
        self.hits = 0
        self.misses = 0

    def close(self) -> None:
        self._db.close()

    def digest(self, path: Path) -> str:
        st = os.stat(path)
        stamp = (st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        row = self._db.execute(
            "SELECT size, mtime_ns, ctime_ns, digest FROM file_digest WHERE dev=? AND ino=?",
            (st.st_dev, st.st_ino),
        ).fetchone()
        if row is not None and tuple(row[:3]) == stamp:
            self.hits += 1
            return str(row[3])
        self.misses += 1
        value = digest_file(path)
        self._db.execute(
            "INSERT OR REPLACE INTO file_digest VALUES (?,?,?,?,?,?)",
            (st.st_dev, st.st_ino, *stamp, value),
        )
        return value
