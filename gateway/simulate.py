"""Device simulator: N devices send photos through ``GatewayClient`` at a set rate and time the verdicts.

Photos come from a folder of JPEG/PNG files, or are generated colposcope-like scenes with a known
expected outcome (``gateway.scenes``), so a demo or a test needs no clinic photos. Each run sends fresh image ids
(``<run id>-<device>-<n>``), so a second run is judged again rather than answered from the gateway's verdict store;
a verdict that was decided before its photo was sent (a repeat from the store) is counted apart.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

from gateway.check import image_files
from gateway.client import GatewayClient, SubmitTimeout
from gateway.protocol import VerdictMessage


@dataclass(frozen=True)
class Photo:
    name: str
    payload: bytes
    expected: str | None = None
    """The verdict a good gateway should give (generated scenes only)."""


@dataclass(frozen=True)
class DeviceAccess:
    """How the simulated devices reach a secured broker (``GatewayClient``'s options)."""

    username: str | None = None
    password: str | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None


REPEAT_CLOCK_SLACK = timedelta(seconds=1)
"""A verdict whose photo the gateway received more than this before the send began is a repeat."""


@dataclass(frozen=True)
class Result:
    device: str
    photo: Photo
    verdict: VerdictMessage | None
    latency_ms: float

    sent_at: datetime | None = None
    """Wall clock (UTC) when this send began."""

    @property
    def repeat(self) -> bool:
        """Answered from the gateway's verdict store, decided for an earlier send of the same photo and id: the
        verdict's own received-to-decided time is longer than this send's whole round trip (no clocks involved),
        or the gateway received the photo more than ``REPEAT_CLOCK_SLACK`` before this send began (a loaded
        machine answers a repeat more slowly than it once judged the photo; clocks on a LAN agree far closer)."""
        if self.verdict is None:
            return False
        if self.latency_ms < self.verdict.timings_ms.get("total", 0.0):
            return True
        if self.sent_at is None:
            return False
        try:
            received = datetime.fromisoformat(self.verdict.received_at.replace("Z", "+00:00"))  # 3.10: no Z
        except ValueError:
            return False
        return received < self.sent_at - REPEAT_CLOCK_SLACK


class BrokerUnreachable(ConnectionError):
    """A simulated device could not connect to the broker."""


def fresh_run_id() -> str:
    return secrets.token_hex(4)


def folder_photos(folder: Path) -> list[Photo]:
    return [Photo(p.name, p.read_bytes()) for p in image_files(folder)]


def generated_photos(width: int = 1600, height: int = 1200) -> list[Photo]:
    """The scene generator's standard set, JPEG-encoded, each with the verdict it should get."""
    from gateway.scenes import encode_jpeg, standard_set

    photos = []
    for n, scene in enumerate(standard_set(width, height)):
        spec = scene.spec
        good = scene.expected_sharp and spec.cervix and 0.35 <= spec.brightness <= 1.8
        name = f"scene-{n:02d}-{spec.stage}-{spec.blur}{'' if spec.cervix else '-nocervix'}-b{spec.brightness:g}"
        photos.append(Photo(name, encode_jpeg(scene.image), "accept" if good else "recapture"))
    return photos


def run_devices(
    broker_url: str,
    photos: list[Photo],
    devices: int,
    per_device: int,
    rate_hz: float,
    site: str = "demo",
    prefix: str = "colposcopy",
    timeout_s: float = 30.0,
    on_result: Callable[[Result], None] | None = None,
    access: DeviceAccess | None = None,
    device_name: str | None = None,
    run_id: str | None = None,
) -> list[Result]:
    """Each device sends ``per_device`` photos (cycling through ``photos``), one every 1/rate_hz seconds. Devices are
    named sim-00, sim-01, ..., or ``device_name`` (one device: the identity of its account or certificate); image
    ids are ``<run_id>-<device>-<n>`` (``run_id`` fresh when None). Raises ``BrokerUnreachable`` when a device cannot
    connect. On Ctrl-C, returns the results so far."""
    access = access or DeviceAccess()
    run_id = run_id or fresh_run_id()
    results: list[Result] = []
    failures: list[OSError] = []
    lock = threading.Lock()

    def device_loop(index: int) -> None:
        name = device_name or f"sim-{index:02d}"
        try:
            client = GatewayClient(
                broker_url,
                site,
                name,
                prefix=prefix,
                username=access.username,
                password=access.password,
                ca_file=access.ca_file,
                cert_file=access.cert_file,
                key_file=access.key_file,
            )
        except OSError as exc:  # refused, unreachable, unknown host, TLS, or no CONNACK in time
            with lock:
                failures.append(exc)
            return
        with client:
            start = time.monotonic()
            for k in range(per_device):
                photo = photos[(index + k * devices) % len(photos)]
                if rate_hz > 0:
                    time.sleep(max(0.0, start + k / rate_hz - time.monotonic()))
                sent, sent_at = time.monotonic(), datetime.now(timezone.utc)
                try:
                    verdict: VerdictMessage | None = client.submit(
                        photo.payload, image_id=f"{run_id}-{name}-{k:04d}", timeout_s=timeout_s, retries=0
                    )
                except SubmitTimeout:
                    verdict = None
                result = Result(name, photo, verdict, (time.monotonic() - sent) * 1e3, sent_at)
                with lock:
                    results.append(result)
                if on_result is not None:
                    on_result(result)

    threads = [threading.Thread(target=device_loop, args=(i,), daemon=True) for i in range(devices)]
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            thread.join()
    except KeyboardInterrupt:
        with lock:
            return list(results)
    if failures:
        reason = failures[0].strerror or str(failures[0])
        raise BrokerUnreachable(f"{len(failures)} of {devices} devices could not connect to {broker_url}: {reason}")
    return results


def _latencies(results: list[Result]) -> str:
    lat = np.array([r.latency_ms for r in results])
    p50, p95, p99 = np.percentile(lat, [50, 95, 99])
    return f"p50={p50:.1f} p95={p95:.1f} p99={p99:.1f} max={lat.max():.1f}"


def summarize(results: list[Result], wall_s: float) -> str:
    answered = [r for r in results if r.verdict is not None]
    judged = [r for r in answered if not r.repeat]
    repeats = [r for r in answered if r.repeat]
    verdicts = Counter(r.verdict.verdict for r in answered if r.verdict)
    reasons = Counter(reason for r in answered if r.verdict for reason in r.verdict.reasons)
    lines = [
        f"photos sent: {len(results)}, answered: {len(answered)}, unanswered: {len(results) - len(answered)}",
        f"repeats (answered from the gateway's verdict store, not judged again): {len(repeats)}",
        "verdicts: " + ", ".join(f"{k}={v}" for k, v in sorted(verdicts.items())),
        "reasons: " + (", ".join(f"{k}={v}" for k, v in sorted(reasons.items())) or "none"),
    ]
    if judged:
        lines.append(f"latency ms: {_latencies(judged)}")
        lines.append(f"throughput: {len(judged) / wall_s:.2f} photos/s over {wall_s:.1f} s")
    if repeats:
        lines.append(f"latency ms of the repeats: {_latencies(repeats)}")
    known = [r for r in answered if r.photo.expected is not None and r.verdict]
    if known:
        agree = sum(r.verdict.verdict == r.photo.expected for r in known if r.verdict)
        lines.append(f"agreement with the scenes' expected verdicts: {agree}/{len(known)}")
    return "\n".join(lines)
