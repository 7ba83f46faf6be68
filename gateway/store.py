"""Verdicts already decided, kept on disk so that a photo delivered twice is answered twice with the same verdict.

A photo comes again when the broker redelivers it (QoS 1, after a gateway crash or a lost connection) or when a
device resends it. Its key is (site, device, image id, payload sha256): the same id with other bytes is another
photo. The verdict is written here before it is published, so a gateway killed between the two still has it.

SQLite in WAL mode with ``synchronous=NORMAL``: a committed verdict survives a crash of the process (SIGKILL, OOM);
after a power cut the last few commits may be lost, never the database. Bounded by age and by row count.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS verdicts (
    site TEXT NOT NULL,
    device TEXT NOT NULL,
    image_id TEXT NOT NULL,
    payload_sha256 TEXT NOT NULL,
    decided_at REAL NOT NULL,
    verdict BLOB NOT NULL,
    recapture BLOB,
    PRIMARY KEY (site, device, image_id, payload_sha256)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS verdicts_by_age ON verdicts (decided_at);
"""


@dataclass(frozen=True)
class PhotoKey:
    site: str
    device: str
    image_id: str
    payload_sha256: str

    @classmethod
    def of(cls, site: str, device: str, image_id: str, payload: bytes) -> PhotoKey:
        return cls(site, device, image_id, hashlib.sha256(payload).hexdigest())


@dataclass(frozen=True)
class StoredVerdict:
    verdict: bytes
    """The verdict message exactly as published (JSON)."""
    recapture: bytes | None


class VerdictStore:
    """Thread-safe; one connection behind a lock (each call is a single indexed statement, well under 1 ms)."""

    def __init__(self, path: Path | None, max_age_s: float, max_entries: int) -> None:
        """``path`` None keeps the store in memory (duplicates are still recognised, but not across a restart)."""
        self.path = path
        self._max_age_s = max_age_s
        self._max_entries = max_entries
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path) if path else ":memory:", check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        self._puts = 0
        self.prune()

    def get(self, key: PhotoKey) -> StoredVerdict | None:
        with self._lock:
            row = self._db.execute(
                "SELECT verdict, recapture FROM verdicts"
                " WHERE site = ? AND device = ? AND image_id = ? AND payload_sha256 = ? AND decided_at >= ?",
                (key.site, key.device, key.image_id, key.payload_sha256, time.time() - self._max_age_s),
            ).fetchone()
        return StoredVerdict(bytes(row[0]), bytes(row[1]) if row[1] is not None else None) if row else None

    def put(self, key: PhotoKey, verdict: bytes, recapture: bytes | None) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO verdicts VALUES (?, ?, ?, ?, ?, ?, ?)",
                (key.site, key.device, key.image_id, key.payload_sha256, time.time(), verdict, recapture),
            )
            self._puts += 1
            due = self._puts % 256 == 0
        if due:
            self.prune()

    def prune(self) -> int:
        """Drop verdicts older than the age limit and the oldest beyond the row limit; the number dropped."""
        with self._lock:
            aged = self._db.execute("DELETE FROM verdicts WHERE decided_at < ?", (time.time() - self._max_age_s,))
            over = self._db.execute(
                "DELETE FROM verdicts WHERE decided_at <= "
                "(SELECT decided_at FROM verdicts ORDER BY decided_at DESC LIMIT 1 OFFSET ?)",
                (self._max_entries,),
            )
            dropped = aged.rowcount + over.rowcount
        if dropped:
            log.info("verdict_store_pruned", dropped=dropped)
        return dropped

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM verdicts").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()
