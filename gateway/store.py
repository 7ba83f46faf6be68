"""Verdicts already decided, kept on disk so that a photo delivered twice is answered twice with the same verdict.

A photo comes again when the broker redelivers it (QoS 1, after a gateway crash or a lost connection) or when a
device resends it. Its key is (site, device, image id, payload sha256): the same id with other bytes is another
photo. The verdict is written here before it is published, so a gateway killed between the two still has it.

SQLite in WAL mode with ``synchronous=NORMAL``: a committed verdict survives a crash of the process (SIGKILL, OOM);
after a power cut the last few commits may be lost, never the database. Bounded by age and by row count.

Ages are counted on the store's own clock, which does not jump when the wall clock is stepped (a Jetson without a
battery-backed clock boots in the past, then NTP steps it): it runs on ``CLOCK_BOOTTIME`` and is saved in the file;
a restart in the same boot goes on by the boot time elapsed, one after a reboot by the wall-clock time the gateway
was down, never backwards. Rows dated after the clock (written by an older version by a clock then ahead) are
re-dated to it.

The store is a cache, not the truth: a statement that fails (full disk, read-only, I/O error, a lock) never raises.
A failed read finds nothing, a failed write is dropped; ``fault`` then says why (the gateway reports ``degraded``)
until a statement succeeds again (``probe`` tries one while no photo comes).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import structlog

log = structlog.get_logger(__name__)

T = TypeVar("T")

_PROBE_BYTES = 64 * 1024

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
CREATE INDEX IF NOT EXISTS verdicts_by_device ON verdicts (site, device, decided_at);
CREATE TABLE IF NOT EXISTS runs (
    site TEXT NOT NULL,
    device TEXT NOT NULL,
    run TEXT NOT NULL,
    saved_at REAL NOT NULL,
    PRIMARY KEY (site, device)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS in_progress (
    site TEXT NOT NULL,
    device TEXT NOT NULL,
    image_id TEXT NOT NULL,
    payload_sha256 TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    started_at REAL NOT NULL,
    PRIMARY KEY (site, device, image_id, payload_sha256)
) WITHOUT ROWID;
"""


BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def _boot_id() -> str:
    """Changes at every boot (Linux); empty where unknown, which counts as another boot."""
    try:
        return BOOT_ID.read_text().strip()
    except OSError:
        return ""


def _boot_time() -> float:
    """Seconds since boot, suspend included; never stepped by NTP or by hand."""
    return time.clock_gettime(time.CLOCK_BOOTTIME) if hasattr(time, "CLOCK_BOOTTIME") else time.monotonic()


def _connect(where: str) -> sqlite3.Connection:
    """A connection with the schema in place; raises for a file that is not a sound database."""
    db = sqlite3.connect(where, check_same_thread=False, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(_SCHEMA)
        problem = db.execute("PRAGMA quick_check").fetchone()[0]
        if problem != "ok":
            raise sqlite3.DatabaseError(f"database disk image is malformed: {problem}")
    except BaseException:
        db.close()
        raise
    return db


def _is_damage(exc: sqlite3.DatabaseError) -> bool:
    """A damaged file (not a database, or a malformed one), as opposed to one that cannot be reached or written."""
    name = getattr(exc, "sqlite_errorname", None)
    if name is not None:
        return name in ("SQLITE_CORRUPT", "SQLITE_NOTADB")
    return not isinstance(exc, sqlite3.OperationalError)


def _move_aside(path: Path) -> Path:
    """Rename a damaged database (and its WAL and shared-memory files) to ``<name>.damaged-<UTC time>``."""
    aside = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}")
    for suffix in ("-wal", "-shm", ""):
        part = path.with_name(path.name + suffix)
        if part.exists():
            part.rename(aside.with_name(aside.name + suffix))
    return aside


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

    def __init__(
        self, path: Path | None, max_age_s: float, max_entries: int, max_per_device: int | None = None
    ) -> None:
        """``path`` None keeps the store in memory (duplicates are still recognised, but not across a restart).

        A file that is damaged (a power cut on an SD card) is moved aside and a fresh one started; one that cannot
        be opened at all leaves the store in memory, with ``fault`` saying why, until ``probe`` opens it."""
        self.path = path
        self._max_age_s = max_age_s
        self._max_entries = max_entries
        self._max_per_device = max_per_device or max_entries
        self._lock = threading.Lock()
        self._puts = 0
        self._fault: str | None = None
        """Why the last statement failed."""
        self._open_fault: str | None = None
        """Why the file is not in use (the store is in memory meanwhile)."""
        self._damaged = False
        self._clock_base = (0.0, _boot_time())
        """(store time, boot time) at the clock's start: ``now`` adds the boot time elapsed since."""
        self._boot_id = _boot_id()
        """This boot's id, read once: it cannot change while the process runs."""
        self._db = self._open()
        self._run("clock", lambda db: self._start_clock(db, time.time()), None)
        self.prune()

    def now(self) -> float:
        """The store's clock (seconds): what rows are dated and aged by."""
        base, at = self._clock_base
        return base + max(0.0, _boot_time() - at)

    def _start_clock(self, db: sqlite3.Connection, unsaved: float) -> None:
        """Set the clock from the one saved in the file, else to ``unsaved``; re-date rows dated after it."""
        saved_text = db.execute("SELECT value FROM meta WHERE name = 'clock'").fetchone()
        wall, boot = time.time(), _boot_time()
        start = unsaved  # a new file, or one written by an older version that dated rows by the wall clock
        try:
            saved = json.loads(saved_text[0]) if saved_text is not None else None
            if saved is not None and saved["boot_id"] == self._boot_id:
                start = float(saved["now"]) + max(0.0, boot - float(saved["boot_time"]))
            elif saved is not None:
                start = float(saved["now"]) + max(0.0, wall - float(saved["wall"]))
        except (ValueError, KeyError, TypeError):
            log.warning("verdict_store_clock_unreadable", path=str(self.path))
        self._clock_base = (start, boot)
        redated = 0
        for table, column in (("verdicts", "decided_at"), ("in_progress", "started_at"), ("runs", "saved_at")):
            redated += db.execute(f"UPDATE {table} SET {column} = ?1 WHERE {column} > ?1", (start,)).rowcount
        if redated:
            log.warning("verdict_store_redated", rows=redated, why="dated after the store's clock")
        self._save_clock(db)

    def _save_clock(self, db: sqlite3.Connection) -> None:
        """Saved at start, with each prune and at close: the clock is derived from boot time, so a copy a few hundred
        verdicts old restarts it as well as a fresh one would."""
        clock = {"now": self.now(), "boot_time": _boot_time(), "boot_id": self._boot_id, "wall": time.time()}
        db.execute("INSERT OR REPLACE INTO meta VALUES ('clock', ?)", (json.dumps(clock),))

    def _open_file(self, path: Path) -> sqlite3.Connection:
        """The file's connection, a damaged file moved aside first; raises OSError or sqlite3.Error."""
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            return _connect(str(path))
        except sqlite3.DatabaseError as exc:
            if not _is_damage(exc):
                raise
            aside = _move_aside(path)
            log.error("verdict_store_damaged", path=str(path), error=str(exc), moved_to=str(aside))
            return _connect(str(path))

    def _cannot_open(self, exc: BaseException) -> str:
        return f"the verdict store at {self.path} cannot be opened ({exc}): verdicts kept in memory"

    def _open(self) -> sqlite3.Connection:
        """The file's connection; in memory, with ``_open_fault``, if it cannot be opened."""
        if self.path is None:
            return _connect(":memory:")
        try:
            return self._open_file(self.path)
        except (OSError, sqlite3.Error) as exc:
            self._open_fault = self._cannot_open(exc)
            log.error("verdict_store_unavailable", path=str(self.path), error=str(exc), fallback="memory")
            return _connect(":memory:")

    @property
    def in_memory(self) -> bool:
        return self.path is None or self._open_fault is not None

    @property
    def fault(self) -> str | None:
        """Why the store cannot be used as configured, None while it works."""
        return self._open_fault or self._fault

    def _run(self, what: str, statement: Callable[[sqlite3.Connection], T], failed: T, clears: bool = False) -> T:
        """Run ``statement`` under the lock; on a database or disk error, record the fault and return ``failed``.
        Only a probe clears the fault: reads, deletes that find nothing and small writes still work on a full disk
        (in space that a failed write left in the WAL)."""
        with self._lock:
            try:
                result = statement(self._db)
            except (sqlite3.Error, OSError) as exc:
                self._damaged = self._damaged or (isinstance(exc, sqlite3.DatabaseError) and _is_damage(exc))
                if self._fault is None:
                    log.error("verdict_store_failed", path=str(self.path), during=what, error=str(exc))
                self._fault = f"the verdict store at {self.path or 'memory'} cannot be used ({what}: {exc})"
                return failed
            if self._fault is not None and clears:
                log.info("verdict_store_recovered", path=str(self.path))
                self._fault = None
            return result

    def get(self, key: PhotoKey) -> StoredVerdict | None:
        def select(db: sqlite3.Connection) -> StoredVerdict | None:
            row = db.execute(
                "SELECT verdict, recapture FROM verdicts"
                " WHERE site = ? AND device = ? AND image_id = ? AND payload_sha256 = ? AND decided_at >= ?",
                (key.site, key.device, key.image_id, key.payload_sha256, self.now() - self._max_age_s),
            ).fetchone()
            return StoredVerdict(bytes(row[0]), bytes(row[1]) if row[1] is not None else None) if row else None

        return self._run("read", select, None)

    def put(self, key: PhotoKey, verdict: bytes, recapture: bytes | None) -> bool:
        """Store a verdict; False if it could not be written (see ``fault``)."""

        def insert(db: sqlite3.Connection) -> bool:
            db.execute(
                "INSERT OR REPLACE INTO verdicts VALUES (?, ?, ?, ?, ?, ?, ?)",
                (key.site, key.device, key.image_id, key.payload_sha256, self.now(), verdict, recapture),
            )
            # the device's own quota: a device that floods the store evicts only its own oldest verdicts
            db.execute(
                "DELETE FROM verdicts WHERE site = ?1 AND device = ?2 AND decided_at <= (SELECT decided_at"
                " FROM verdicts WHERE site = ?1 AND device = ?2 ORDER BY decided_at DESC LIMIT 1 OFFSET ?3)",
                (key.site, key.device, self._max_per_device),
            )
            return True

        stored = self._run("write", insert, False)
        if stored and self._fault is not None:
            self.probe()
        if stored:
            self._puts += 1
            if self._puts % 256 == 0:
                self.prune()
        return stored

    def begin(self, key: PhotoKey) -> int:
        """Mark a photo as being judged; how many earlier judgements of it never finished (the gateway died in them).
        0 when it cannot be written: a store that fails does not stop judging."""

        def mark(db: sqlite3.Connection) -> int:
            row = db.execute(
                "INSERT INTO in_progress VALUES (?, ?, ?, ?, 1, ?) ON CONFLICT DO UPDATE"
                " SET attempts = attempts + 1, started_at = excluded.started_at RETURNING attempts",
                (key.site, key.device, key.image_id, key.payload_sha256, self.now()),
            ).fetchone()
            return int(row[0]) - 1

        return self._run("write", mark, 0)

    def finish(self, key: PhotoKey) -> None:
        """The judgement ``begin`` marked is over (whatever its verdict)."""
        self._run(
            "write",
            lambda db: db.execute(
                "DELETE FROM in_progress WHERE site = ? AND device = ? AND image_id = ? AND payload_sha256 = ?",
                (key.site, key.device, key.image_id, key.payload_sha256),
            ),
            None,
        )

    def load_run(self, site: str, device: str, max_idle_s: float) -> str | None:
        """A device's recapture run as saved (``save_run``), unless it was saved longer than ``max_idle_s`` ago."""

        def select(db: sqlite3.Connection) -> str | None:
            row = db.execute(
                "SELECT run FROM runs WHERE site = ? AND device = ? AND saved_at >= ?",
                (site, device, self.now() - max_idle_s),
            ).fetchone()
            return str(row[0]) if row else None

        return self._run("read", select, None)

    def save_run(self, site: str, device: str, run: str | None) -> None:
        """Keep a device's recapture run across a restart; None: the run is over."""

        def write(db: sqlite3.Connection) -> None:
            if run is None:
                db.execute("DELETE FROM runs WHERE site = ? AND device = ?", (site, device))
            else:
                db.execute("INSERT OR REPLACE INTO runs VALUES (?, ?, ?, ?)", (site, device, run, self.now()))

        self._run("write", write, None)

    def probe(self) -> bool:
        """Try a write of some pages (the disk may have been freed), then take it back; True when the store works.
        A write of one page could still fit where a verdict does not."""

        def write(db: sqlite3.Connection) -> None:
            db.execute("INSERT OR REPLACE INTO meta VALUES ('probe', ?)", (bytes(_PROBE_BYTES),))
            db.execute("DELETE FROM meta WHERE name = 'probe'")

        if self.path is not None and (self._open_fault is not None or self._damaged):
            try:  # the connection in use (the in-memory fallback, with its verdicts) is kept until this works
                db = self._open_file(self.path)
            except (OSError, sqlite3.Error) as exc:
                if self._open_fault is not None:  # in memory already; a damaged file's own fault stays as it is
                    self._open_fault = self._cannot_open(exc)
                return False
            running = self.now()
            with self._lock:
                self._db.close()
                self._db, self._fault = db, None
            if self._open_fault is not None:
                log.info("verdict_store_reopened", path=str(self.path))
            self._open_fault, self._damaged = None, False
            self._run("clock", lambda db: self._start_clock(db, running), None)
        self._run("write", write, None, clears=True)
        return self.fault is None

    def prune(self) -> int:
        """Drop verdicts older than the age limit and the oldest beyond the row limit (all devices together: each
        device's own quota is kept on every ``put``); the number dropped."""

        def delete(db: sqlite3.Connection) -> int:
            aged = db.execute("DELETE FROM verdicts WHERE decided_at < ?", (self.now() - self._max_age_s,))
            db.execute("DELETE FROM in_progress WHERE started_at < ?", (self.now() - self._max_age_s,))
            db.execute("DELETE FROM runs WHERE saved_at < ?", (self.now() - self._max_age_s,))
            over = db.execute(
                "DELETE FROM verdicts WHERE decided_at <= "
                "(SELECT decided_at FROM verdicts ORDER BY decided_at DESC LIMIT 1 OFFSET ?)",
                (self._max_entries,),
            )
            self._save_clock(db)
            return int(aged.rowcount + over.rowcount)

        dropped = self._run("prune", delete, 0)
        if dropped:
            log.info("verdict_store_pruned", dropped=dropped)
        return dropped

    def __len__(self) -> int:
        count = "SELECT COUNT(*) FROM verdicts"
        return self._run("count", lambda db: int(db.execute(count).fetchone()[0]), 0)

    def close(self) -> None:
        self._run("clock", self._save_clock, None)
        with self._lock:
            self._db.close()
