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


@pytest.fixture
def wall_clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Steps the wall clock (``time.time``) by the seconds held in the returned list, as NTP or a person would."""
    step = [0.0]
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + step[0])
    return step


DAY = 86400.0


def test_a_wall_clock_step_forward_forgets_no_verdict(tmp_path: Path, wall_clock: list[float]) -> None:
    store = VerdictStore(tmp_path / "v.sqlite3", 3600, 1000)
    store.put(key(1), b"v1", None)
    wall_clock[0] = 2 * DAY  # NTP steps a box that booted in the past forward, far beyond store.max_age_s
    assert store.get(key(1)) == StoredVerdict(b"v1", None)
    assert store.prune() == 0 and len(store) == 1
    store.close()
    again = VerdictStore(tmp_path / "v.sqlite3", 3600, 1000)  # and a restart in the same boot after the step
    assert again.get(key(1)) == StoredVerdict(b"v1", None)


def test_a_wall_clock_step_backward_leaves_no_row_in_the_future(tmp_path: Path, wall_clock: list[float]) -> None:
    store = VerdictStore(tmp_path / "v.sqlite3", 30 * DAY, 100)
    for n in range(100):
        store.put(key(n), f"v{n}".encode(), None)
    wall_clock[0] = -10 * DAY
    for n in range(100, 200):
        store.put(key(n), f"v{n}".encode(), None)
    store.prune()
    kept = [n for n in range(200) if store.get(key(n)) is not None]
    assert kept == list(range(100, 200))  # the newest are kept, not the rows dated before the step


def test_rows_dated_in_the_future_are_redated_and_a_reboot_in_the_past_keeps_the_verdicts(
    tmp_path: Path, wall_clock: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    import sqlite3

    path = tmp_path / "v.sqlite3"
    old = sqlite3.connect(path)  # a store written by an older version while the clock was 10 days ahead
    old.executescript(
        "CREATE TABLE verdicts (site TEXT NOT NULL, device TEXT NOT NULL, image_id TEXT NOT NULL,"
        " payload_sha256 TEXT NOT NULL, decided_at REAL NOT NULL, verdict BLOB NOT NULL, recapture BLOB,"
        " PRIMARY KEY (site, device, image_id, payload_sha256)) WITHOUT ROWID;"
    )
    k = key(1)
    ahead = time.time() + 10 * DAY
    old.execute("INSERT INTO verdicts VALUES (?, ?, ?, ?, ?, ?, NULL)", (*vars(k).values(), ahead, b"v"))
    old.commit()
    old.close()
    store = VerdictStore(path, 3600, 1000)
    assert store.get(k) == StoredVerdict(b"v", None)
    with sqlite3.connect(path) as db:
        [(decided_at,)] = db.execute("SELECT decided_at FROM verdicts").fetchall()
    assert decided_at <= store.now()  # re-dated: it ages from now like any other row
    store.close()

    from gateway import store as store_module

    monkeypatch.setattr(store_module, "_boot_id", lambda: "another boot")
    wall_clock[0] = -365 * DAY  # the box reboots without a battery-backed clock: a year in the past
    again = VerdictStore(path, 3600, 1000)
    assert again.get(k) == StoredVerdict(b"v", None)
    again.put(key(2), b"v2", None)
    wall_clock[0] = 0.0  # then NTP steps it forward by a year
    assert again.get(k) == StoredVerdict(b"v", None) and again.get(key(2)) == StoredVerdict(b"v2", None)
