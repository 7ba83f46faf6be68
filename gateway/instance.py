"""One gateway per state folder: an exclusive ``flock`` on ``<folder>/gateway.lock``, held while the process runs.

Two gateways with the same config would share one MQTT session (taking it over from each other) and one verdict
store, and judge photos twice. The kernel releases the lock when the process dies, however it dies, so a crash
never leaves a stale lock behind.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)

LOCK_NAME = "gateway.lock"


class AlreadyRunning(RuntimeError):
    """Another process holds the state folder."""

    def __init__(self, folder: Path, pid: str) -> None:
        self.folder, self.pid = folder, pid
        super().__init__(
            f"another colpo-gateway (pid {pid or 'unknown'}) already runs with the state folder {folder}: this one"
            " exits; stop that one first, or give this one its own state folder (store.path)"
        )


def hold_state_folder(folder: Path) -> int | None:
    """Lock ``folder`` for this process; returns the descriptor to keep open for as long as it runs.

    Raises ``AlreadyRunning`` when another process holds it. A folder where no lock file can be opened (missing and
    not creatable, read-only) is logged and the gateway runs unlocked: a state-disk fault must not stop it."""
    path = folder / LOCK_NAME
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as exc:
            log.warning("state_folder_not_locked", folder=str(folder), why=str(exc))
            return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            pid = os.pread(fd, 32, 0).decode(errors="replace").strip()
        except OSError:
            pid = ""
        os.close(fd)
        raise AlreadyRunning(folder, pid) from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError:
        pass  # read-only: the lock holds all the same, only the message lacks the pid
    return fd
