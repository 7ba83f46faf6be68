"""Device simulator: N devices send photos through ``GatewayClient`` at a set rate and time the verdicts.

Photos come from a folder of JPEG/PNG files, or are generated colposcope-like scenes with a known
expected outcome (``gateway.scenes``), so a demo or a test needs no clinic photos.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

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


@dataclass(frozen=True)
class Result:
    device: str
    photo: Photo
    verdict: VerdictMessage | None
    latency_ms: float


def folder_photos(folder: Path) -> list[Photo]:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    return [Photo(p.name, p.read_bytes()) for p in files]


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
) -> list[Result]:
    """Each device sends ``per_device`` photos (cycling through ``photos``), one every 1/rate_hz seconds. Devices are
    named sim-00, sim-01, ..., or ``device_name`` (one device: the identity of its account or certificate)."""
    access = access or DeviceAccess()
    results: list[Result] = []
    lock = threading.Lock()

    def device_loop(index: int) -> None:
        name = device_name or f"sim-{index:02d}"
        with GatewayClient(
            broker_url,
            site,
            name,
            prefix=prefix,
            username=access.username,
            password=access.password,
            ca_file=access.ca_file,
            cert_file=access.cert_file,
            key_file=access.key_file,
        ) as client:
            start = time.monotonic()
            for k in range(per_device):
                photo = photos[(index + k * devices) % len(photos)]
                if rate_hz > 0:
                    time.sleep(max(0.0, start + k / rate_hz - time.monotonic()))
                sent = time.monotonic()
                try:
                    verdict: VerdictMessage | None = client.submit(
                        photo.payload, image_id=f"{name}-{k:04d}", timeout_s=timeout_s, retries=0
                    )
                except SubmitTimeout:
                    verdict = None
                result = Result(name, photo, verdict, (time.monotonic() - sent) * 1e3)
                with lock:
                    results.append(result)
                if on_result is not None:
                    on_result(result)

    threads = [threading.Thread(target=device_loop, args=(i,), daemon=True) for i in range(devices)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def summarize(results: list[Result], wall_s: float) -> str:
    answered = [r for r in results if r.verdict is not None]
    verdicts = Counter(r.verdict.verdict for r in answered if r.verdict)
    reasons = Counter(reason for r in answered if r.verdict for reason in r.verdict.reasons)
    lines = [
        f"photos sent: {len(results)}, answered: {len(answered)}, unanswered: {len(results) - len(answered)}",
        "verdicts: " + ", ".join(f"{k}={v}" for k, v in sorted(verdicts.items())),
        "reasons: " + (", ".join(f"{k}={v}" for k, v in sorted(reasons.items())) or "none"),
    ]
    if answered:
        lat = np.array([r.latency_ms for r in answered])
        p50, p95, p99 = np.percentile(lat, [50, 95, 99])
        lines.append(f"latency ms: p50={p50:.1f} p95={p95:.1f} p99={p99:.1f} max={lat.max():.1f}")
        lines.append(f"throughput: {len(answered) / wall_s:.2f} photos/s over {wall_s:.1f} s")
    known = [r for r in answered if r.photo.expected is not None and r.verdict]
    if known:
        agree = sum(r.verdict.verdict == r.photo.expected for r in known if r.verdict)
        lines.append(f"agreement with the scenes' expected verdicts: {agree}/{len(known)}")
    return "\n".join(lines)
