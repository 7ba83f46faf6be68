"""sd_notify: tell systemd (Type=notify) when the gateway is ready, what it is doing, and when it stops.

The protocol is one datagram per message to the AF_UNIX socket named by $NOTIFY_SOCKET (an abstract
socket when it starts with '@'). Without $NOTIFY_SOCKET (not under systemd) every call is a no-op.
"""

from __future__ import annotations

import os
import socket


def notify(*fields: str) -> bool:
    """Send ``KEY=value`` fields, e.g. ``notify("READY=1", "STATUS=serving")``; True when sent."""
    address = os.environ.get("NOTIFY_SOCKET")
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
