"""sd_notify: tell systemd (Type=notify) when the gateway is ready, what it is doing, and that it is alive.

The protocol is one datagram per message to the AF_UNIX socket named by $NOTIFY_SOCKET (an abstract
socket when it starts with '@'). Without $NOTIFY_SOCKET (not under systemd) every call is a no-op.

``Notifier`` runs one thread that sends READY=1 as soon as it starts (the service starts it once the config and
the backend are loaded), STATUS= whenever the status line changes, and WATCHDOG=1 every WATCHDOG_USEC/2 while
every worker's heartbeat is fresh: a worker stuck on one photo for longer than the watchdog interval stops the
pings and systemd restarts the gateway; an idle worker keeps beating while it waits for photos.

READY does not wait for the broker. The broker may start after the gateway, or live on another box that boots
later: a READY held back until it answers turned such a boot into a failed start and a restart loop, and a
restart does not bring the broker any sooner (the gateway reconnects by itself, with backoff). So the gateway is
"started" once it can judge photos; while the broker is away, WATCHDOG=1 keeps going (the process is healthy), and
STATUS= and /readyz say "waiting for broker ..." with the last connect failure's cause. Being connected is
readiness for traffic (/readyz, the retained status message), not for systemd.

No EXTEND_TIMEOUT_USEC: nothing slow happens before READY. TensorRT plans are built in the background after
READY (``gateway.backends.select``), and EXTEND_TIMEOUT_USEC does not apply to a running service.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Mapping

import structlog

log = structlog.get_logger(__name__)


def notify(*fields: str, address: str | None = None) -> bool:
    """Send ``KEY=value`` fields, e.g. ``notify("READY=1", "STATUS=serving")``; True when sent.

    ``address`` defaults to $NOTIFY_SOCKET."""
    address = address or os.environ.get("NOTIFY_SOCKET")
    if not address or not fields:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.connect(address)
            sock.sendall("\n".join(fields).encode())
        except OSError:
            return False
    return True


def watchdog_interval(environ: Mapping[str, str]) -> float | None:
    """WatchdogSec= in seconds as systemd passes it (WATCHDOG_USEC, for WATCHDOG_PID), else None."""
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    pid = environ.get("WATCHDOG_PID")
    if usec <= 0 or (pid and pid != str(os.getpid())):
        return None
    return usec / 1e6


class Notifier:
    """READY=1, STATUS= and a heartbeat-gated WATCHDOG=1 for the service; inert without $NOTIFY_SOCKET."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self._address = env.get("NOTIFY_SOCKET") or None
        self.watchdog_s = watchdog_interval(env) if self._address else None
        self.heartbeat_s = min(1.0, self.watchdog_s / 4) if self.watchdog_s else 1.0
        """How often workers beat: they wait for a photo at most this long."""
        self._stall_s = self.watchdog_s or 60.0
        self._beats: dict[str, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def beat(self, worker: str) -> None:
        """``worker`` is alive: it is waiting for a photo or has just finished one."""
        with self._lock:
            self._beats[worker] = time.monotonic()

    def forget(self, worker: str) -> None:
        """``worker`` has exited cleanly (a worker that dies without this keeps its stale beat)."""
        with self._lock:
            self._beats.pop(worker, None)

    def stalled(self) -> dict[str, float]:
        """Workers whose last beat is older than the watchdog interval, with its age in seconds."""
        now = time.monotonic()
        with self._lock:
            return {name: now - at for name, at in self._beats.items() if now - at > self._stall_s}

    def start(self, status: Callable[[], str]) -> None:
        """Start the notify thread: READY=1 at once, then STATUS=``status()`` and WATCHDOG=1."""
        if self._address is None or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, args=(status,), name="sd-notify", daemon=True)
        self._thread.start()

    def stopping(self, status: str) -> None:
        """STOPPING=1 and stop the notify thread (no more WATCHDOG=1)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._send("STOPPING=1", f"STATUS={status}")

    def _send(self, *fields: str) -> None:
        if self._address is not None:
            notify(*fields, address=self._address)

    def _run(self, status: Callable[[], str]) -> None:
        fields, shown, was_stalled = ["READY=1"], "", False
        period = self.watchdog_s / 2 if self.watchdog_s else 2.0
        pinged = -period
        while not self._stop.is_set():
            stalled = self.stalled()
            text = status()
            if stalled:
                ages = ", ".join(f"{name} for {age:.0f} s" for name, age in sorted(stalled.items()))
                text = f"stalled: {ages} on one photo"
                if not was_stalled:
                    log.error("workers_stalled", workers=sorted(stalled), watchdog_s=self.watchdog_s)
            was_stalled = bool(stalled)
            if text != shown:
                fields.append(f"STATUS={text}")
                shown = text
            now = time.monotonic()
            if self.watchdog_s and not stalled and now - pinged >= period:
                fields.append("WATCHDOG=1")
                pinged = now
            if fields:
                self._send(*fields)
            fields = []
            self._stop.wait(min(period, 1.0))  # STATUS= follows within a second (e.g. the broker answering)
