"""The verdict store: what was decided is found again by (site, device, image id, payload hash), across a reopen,
and the store stays bounded by age and by row count."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from gateway.store import PhotoKey, StoredVerdict, VerdictStore


def key(n: int, payload: bytes = b"jpeg") -> PhotoKey:
    return PhotoKey.of("site", "dev", f"img-{n}", payload)


def test_a_verdict_is_found_by_its_full_key_only(tmp_path: Path) -> None:
    store = VerdictStore(tmp_path / "v.sqlite3", 3600, 1000)
    store.put(key(1), b'{"verdict":"accept"}', None)
    store.put(key(2), b'{"verdict":"recapture"}', b'{"reasons":["not_sharp"]}')
    assert store.get(key(1)) == StoredVerdict(b'{"verdict":"accept"}', None)
    assert store.get(key(2)) == StoredVerdict(b'{"verdict":"recapture"}', b'{"reasons":["not_sharp"]}')
    assert store.get(key(1, b"other bytes")) is None  # the same id with other bytes is another photo
    assert store.get(PhotoKey.of("site", "dev2", "img-1", b"jpeg")) is None
    assert PhotoKey.of("s", "d", "i", b"x").payload_sha256 == (
        "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881"
    )


def test_verdicts_survive_closing_and_reopening(tmp_path: Path) -> None:
    path = tmp_path / "state" / "v.sqlite3"
    store = VerdictStore(path, 3600, 1000)
    store.put(key(1), b"v1", None)
    store.close()
    again = VerdictStore(path, 3600, 1000)
    assert again.get(key(1)) == StoredVerdict(b"v1", None) and len(again) == 1


def test_old_verdicts_are_forgotten(tmp_path: Path) -> None:
    store = VerdictStore(tmp_path / "v.sqlite3", 0.2, 1000)
    store.put(key(1), b"v1", None)
    assert store.get(key(1)) is not None
    time.sleep(0.3)
    assert store.get(key(1)) is None  # expired verdicts are not answered even before pruning
    assert store.prune() == 1 and len(store) == 0


def test_the_newest_rows_are_kept_when_over_the_limit(tmp_path: Path) -> None:
    store = VerdictStore(tmp_path / "v.sqlite3", 3600, 100)
    for n in range(150):
        store.put(key(n), f"v{n}".encode(), None)
        time.sleep(0.0005)  # distinct decision times
    store.prune()
    assert len(store) == 100
    assert store.get(key(49)) is None and store.get(key(50)) == StoredVerdict(b"v50", None)


def test_in_memory_store() -> None:
    store = VerdictStore(None, 3600, 1000)
    store.put(key(1), b"v1", None)
    assert store.get(key(1)) == StoredVerdict(b"v1", None)


def test_an_unwritable_store_falls_back_to_memory_and_says_so(tmp_path: Path) -> None:
    from gateway.config import parse_config
    from gateway.service import _open_store

    (tmp_path / "file").write_text("not a folder")
    config = parse_config(f"store:\n  path: {tmp_path / 'file' / 'v.sqlite3'}\n")
    store = _open_store(config)
    assert store.in_memory and store.fault is not None and "cannot be opened" in store.fault
    store.put(key(1), b"v1", None)
    assert store.get(key(1)) == StoredVerdict(b"v1", None)
    assert not store.probe() and store.fault is not None  # still no file: still degraded


@pytest.mark.parametrize("damage", ["not a database", "a damaged page"])
def test_a_damaged_file_is_moved_aside_and_a_fresh_one_started(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "v.sqlite3"
    store = VerdictStore(path, 3600, 10_000)
    for n in range(2000):
        store.put(key(n), b"v" * 200, None)
    store.close()
    data = bytearray(path.read_bytes())
    if damage == "not a database":
        data[:100] = b"\xff" * 100
    else:  # a power cut tore a page in the middle of the file
        data[len(data) // 2 : len(data) // 2 + 4096] = b"\x17" * 4096
    path.write_bytes(bytes(data))
    store = VerdictStore(path, 3600, 10_000)
    assert store.fault is None and not store.in_memory
    [aside] = tmp_path.glob("v.sqlite3.damaged-*")
    assert aside.read_bytes() == bytes(data)  # kept for a post-mortem
    assert store.get(key(1)) is None and len(store) == 0  # a fresh store
    store.put(key(1), b"v1", None)
    store.close()
    assert VerdictStore(path, 3600, 10_000).get(key(1)) == StoredVerdict(b"v1", None)


def test_a_device_flooding_the_store_evicts_only_its_own_verdicts(tmp_path: Path) -> None:
    store = VerdictStore(tmp_path / "v.sqlite3", 3600, 100, max_per_device=40)
    quiet = PhotoKey.of("site", "quiet", "img-1", b"jpeg")
    store.put(quiet, b"kept", None)
    for n in range(150):
        store.put(PhotoKey.of("site", "flood", f"img-{n}", b"jpeg"), f"v{n}".encode(), None)
        time.sleep(0.0005)  # distinct decision times
    store.prune()
    assert store.get(quiet) == StoredVerdict(b"kept", None)
    assert len(store) == 41  # the flooding device keeps its newest 40
    assert store.get(PhotoKey.of("site", "flood", "img-109", b"jpeg")) is None
    assert store.get(PhotoKey.of("site", "flood", "img-110", b"jpeg")) == StoredVerdict(b"v110", None)


def test_a_judgement_left_unfinished_is_counted_across_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "v.sqlite3"
    store = VerdictStore(path, 3600, 1000)
    assert store.begin(key(1)) == 0
    store.close()  # the gateway died judging it
    store = VerdictStore(path, 3600, 1000)
    assert store.begin(key(1)) == 1 and store.begin(key(2)) == 0
    store.finish(key(1))
    assert store.begin(key(1)) == 0  # a judgement that finished is not held against the photo
