"""Decode speed and memory: what ``gateway/decode.py`` costs per photo.

    .venv/bin/python bench/decode_bench.py [--rounds 15] [--threads 2] [--baseline OLD_DECODE_PY]

1. speed: p50/p95 of ``decode()`` on 12 MP (4000x3000) noisy JPEGs of 3-4 MB (baseline and progressive), full
   size and at the gateway's analysis scale (``decode.analysis_long_side``), with ``--threads`` threads decoding
   at once; beside it ``cv2.imdecode`` (OpenCV's libjpeg, which conceals damage) on the same photos, and, with
   ``--baseline``, an older ``decode.py`` (e.g. ``git show 9bbb50e:gateway/decode.py > /tmp/old_decode.py``);
2. memory: the peak resident memory (``ru_maxrss``, each in a fresh subprocess) of decoding the 7071x7071
   16-bit RGBA PNG bomb (380 KiB, under ``max_pixels``), and the bytes ``plan()`` reserves for it.

Timings are of this machine as it is (other processes included); quote them with the machine's load.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import os
import resource
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gateway import decode as current  # noqa: E402
from gateway.config import DecodeConfig  # noqa: E402
from gateway.scenes import SceneSpec, render  # noqa: E402


def phone_jpegs() -> dict[str, bytes]:
    image = render(SceneSpec(width=4000, height=3000, noise=6.0, seed=500)).image
    out = {}
    for name, extra in (("baseline", []), ("progressive", [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])):
        ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 92, *extra])
        assert ok
        out[name] = bytes(buf.tobytes())
    return out


def png_bomb(side: int = 7071) -> bytes:
    """A side x side 16-bit RGBA PNG of zeros: a few hundred KiB that decode to side^2 x 8 bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = bytes(1 + side * 8)
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 16, 6, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def timed(fn: Callable[[], object], rounds: int, threads: int) -> tuple[float, float]:
    """p50 and p95 in ms of ``fn`` with ``threads`` callers at once, ``rounds`` calls each."""

    def one() -> float:
        start = time.perf_counter()
        fn()
        return (time.perf_counter() - start) * 1e3

    fn()  # warm-up
    with ThreadPoolExecutor(threads) as pool:
        ms = list(pool.map(lambda _: one(), range(rounds * threads)))
    p50, p95 = np.percentile(np.array(ms), [50, 95])
    return float(p50), float(p95)


def load_module(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("baseline_decode", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def speed(rounds: int, threads: int, baseline: Path | None) -> list[str]:
    photos = phone_jpegs()
    long_side = DecodeConfig().analysis_long_side
    limits = current.DecodeLimits()
    rows = []
    decoders: list[tuple[str, Callable[[bytes, int], object]]] = [
        ("decode() (TurboJPEG, stop on warning)", lambda p, s: current.decode(p, limits, s))
    ]
    if baseline is not None:
        old = load_module(baseline)
        old_limits = old.DecodeLimits()
        decoders.append((f"decode() of {baseline.name}", lambda p, s: old.decode(p, old_limits, s)))
    flags = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4}

    def imdecode(payload: bytes, min_long_side: int) -> object:
        reduction = current._pick_reduction(4000, min_long_side)
        return cv2.imdecode(np.frombuffer(payload, np.uint8), flags[reduction] | cv2.IMREAD_IGNORE_ORIENTATION)

    decoders.append(("cv2.imdecode alone (no checks)", imdecode))
    for kind, payload in photos.items():
        for scale, min_long_side in (("full size", 0), (f"analysis scale ({long_side} px)", long_side)):
            for name, fn in decoders:
                p50, p95 = timed(functools.partial(fn, payload, min_long_side), rounds, threads)
                rows.append(f"| {kind} {len(payload) / 1e6:.1f} MB, {scale} | {name} | {p50:.1f} | {p95:.1f} |")
                print(rows[-1], flush=True)
    return rows


def high_water_kib() -> int:
    """This process's peak resident memory (VmHWM: unlike ``ru_maxrss``, not inherited from the parent at exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def peak_child(mode: str) -> None:
    """In a fresh process: decode the bomb one way, print the peak resident memory added."""
    payload = png_bomb()
    before = high_water_kib()
    if mode == "16-bit intermediate":  # what decode() did before: keep 16 bits, then scale to 8
        wide = cv2.imdecode(np.frombuffer(payload, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH)
        cv2.convertScaleAbs(wide, alpha=255 / 65535)
    else:
        current.decode(payload, current.DecodeLimits(max_decoded_bytes=2**40))
    print((high_water_kib() - before) / 1024)


def memory() -> list[str]:
    payload = png_bomb()
    plan = current.plan(payload, current.DecodeLimits(max_decoded_bytes=2**40))
    rows = [f"| bomb: {len(payload) / 1024:.0f} KiB PNG, 7071x7071 16-bit RGBA | plan() reserves | "
            f"{plan.decoded_bytes / 2**20:.0f} |"]  # fmt: skip
    print(rows[-1], flush=True)
    for mode in ("16-bit intermediate", "decode()"):
        out = subprocess.run(
            [sys.executable, __file__, "--peak-child", mode], capture_output=True, text=True, check=True, cwd=REPO
        )
        rows.append(f"| bomb | peak resident memory added, {mode} | {float(out.stdout.strip()):.0f} |")
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=15, help="decodes per thread per row")
    parser.add_argument("--threads", type=int, default=2, help="threads decoding at once")
    parser.add_argument("--baseline", type=Path, help="an older gateway/decode.py to compare with")
    parser.add_argument("--peak-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peak_child:
        peak_child(args.peak_child)
        return
    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}, threads {args.threads}", flush=True)
    print("| photo | decoder | p50 ms | p95 ms |\n| --- | --- | --- | --- |", flush=True)
    speed(args.rounds, args.threads, args.baseline)
    print(f"load average after {os.getloadavg()[0]:.1f}\n\n| what | how | MiB |\n| --- | --- | --- |", flush=True)
    memory()


if __name__ == "__main__":
    main()
