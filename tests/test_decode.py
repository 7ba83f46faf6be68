"""Tests for gateway.decode: limits before decoding, truncation, EXIF orientation, colour formats, fuzzing.

All test images are made here: JPEG/PNG via cv2.imencode, and by hand where OpenCV cannot write the
variant (EXIF APP1, CMYK/YCCK and 12-bit JPEG, gray+alpha / palette / 16-bit PNG).
"""

from __future__ import annotations

import pickle
import struct
import time
import tracemalloc
import zlib
from collections.abc import Callable

import cv2
import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from gateway import decode as decode_module
from gateway.decode import DecodedImage, DecodeError, DecodeLimits, ImageHeader, decode, plan, read_header

U8 = npt.NDArray[np.uint8]
LIMITS = DecodeLimits()

# ----------------------------------------------------------------------------------------------- builders


def _jpeg(img: U8, *params: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", img, list(params))
    assert ok
    return bytes(buf.tobytes())


def _png_cv(img: npt.NDArray[np.uint8] | npt.NDArray[np.uint16]) -> bytes:
    ok, buf = cv2.imencode(".png", img)
    assert ok
    return bytes(buf.tobytes())


def _segment(marker: int, body: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(body) + 2) + body


def _exif_app1(orientation: int, *, big_endian: bool = False, kind: int = 3, thumbnail: bytes = b"") -> bytes:
    """APP1 'Exif' segment whose IFD0 holds one Orientation entry, optionally followed by a thumbnail blob."""
    e = ">" if big_endian else "<"
    tiff = (b"MM\x00*" if big_endian else b"II*\x00") + struct.pack(e + "I", 8)
    value = struct.pack(e + "H", orientation) + b"\x00\x00" if kind == 3 else struct.pack(e + "I", orientation)
    tiff += struct.pack(e + "H", 1) + struct.pack(e + "HHI", 0x0112, kind, 1) + value + struct.pack(e + "I", 0)
    return _segment(0xE1, b"Exif\x00\x00" + tiff + thumbnail)


def _with_app1(jpeg: bytes, app1: bytes) -> bytes:
    """Splice an APP1 segment in right after SOI."""
    assert jpeg[:2] == b"\xff\xd8"
    return jpeg[:2] + app1 + jpeg[2:]


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(
    samples: npt.NDArray[np.generic],
    color_type: int,
    bit_depth: int = 8,
    *,
    extra: tuple[bytes, ...] = (),
    width: int | None = None,
    height: int | None = None,
) -> bytes:
    """Hand-written PNG. ``samples``: (H, W) or (H, W, C); 16-bit stored big-endian, 1-bit packed."""
    h, w = samples.shape[:2]
    rows = samples.reshape(h, -1)
    if bit_depth == 16:
        raw = rows.astype(">u2")
        lines = [raw[y].tobytes() for y in range(h)]
    elif bit_depth == 1:
        lines = [np.packbits(rows[y].astype(np.uint8)).tobytes() for y in range(h)]
    else:
        lines = [rows[y].astype(np.uint8).tobytes() for y in range(h)]
    idat = zlib.compress(b"".join(b"\x00" + line for line in lines))
    ihdr = struct.pack(">IIBBBBB", width or w, height or h, bit_depth, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + b"".join(extra)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def _dc_only_jpeg(blocks: npt.NDArray[np.integer], *, adobe_transform: int | None = None, precision: int = 8) -> bytes:
    """Minimal hand-written baseline/extended JPEG: every 8x8 block of component c is flat, value
    ``blocks[by, bx, c]``; components are not subsampled. Lets us make CMYK, YCCK and 12-bit files."""
    nby, nbx, ncomp = blocks.shape
    out = bytearray(b"\xff\xd8")
    if adobe_transform is not None:
        out += _segment(0xEE, b"Adobe" + struct.pack(">HHHB", 100, 0, 0, adobe_transform))
    out += _segment(0xDB, b"\x00" + b"\x01" * 64)  # all-ones quantisation table
    sof = 0xC0 if precision == 8 else 0xC1
    comps = b"".join(bytes([c + 1, 0x11, 0]) for c in range(ncomp))
    out += _segment(sof, struct.pack(">BHHB", precision, nby * 8, nbx * 8, ncomp) + comps)
    out += _segment(0xC4, b"\x00" + bytes([0, 0, 0, 0, 16] + [0] * 11) + bytes(range(16)))  # DC: 5-bit codes
    out += _segment(0xC4, b"\x10" + bytes([1] + [0] * 15) + b"\x00")  # AC: EOB only, code '0'
    out += _segment(0xDA, bytes([ncomp]) + b"".join(bytes([c + 1, 0]) for c in range(ncomp)) + b"\x00\x3f\x00")
    bits: list[str] = []
    pred = [0] * ncomp
    half = 1 << (precision - 1)
    for y in range(nby):
        for x in range(nbx):
            for c in range(ncomp):
                dc = 8 * (int(blocks[y, x, c]) - half)
                diff, pred[c] = dc - pred[c], dc
                size = abs(diff).bit_length()
                bits.append(format(size, "05b"))
                if size:
                    bits.append(format(diff if diff >= 0 else diff + (1 << size) - 1, f"0{size}b"))
                bits.append("0")  # EOB
    stream = "".join(bits)
    stream += "1" * (-len(stream) % 8)
    for i in range(0, len(stream), 8):
        byte = int(stream[i : i + 8], 2)
        out.append(byte)
        if byte == 0xFF:
            out.append(0)
    return bytes(out + b"\xff\xd9")


def _noise(h: int, w: int, seed: int = 0) -> U8:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _corner_image(h: int = 48, w: int = 80) -> U8:
    """Gray image with big coloured corner blocks: TL red, TR green, BL blue, BR white (BGR)."""
    img = np.full((h, w, 3), 128, np.uint8)
    img[:16, :16] = (0, 0, 255)
    img[:16, -16:] = (0, 255, 0)
    img[-16:, :16] = (255, 0, 0)
    img[-16:, -16:] = (255, 255, 255)
    return img


def _corner_colours(img: U8) -> dict[str, str]:
    h, w = img.shape[:2]
    names: dict[tuple[int, ...], str] = {
        (0, 0, 1): "red",
        (0, 1, 0): "green",
        (1, 0, 0): "blue",
        (1, 1, 1): "white",
        (0, 0, 0): "gray",
    }
    out = {}
    for corner, (y, x) in {"tl": (0, 0), "tr": (0, w - 1), "bl": (h - 1, 0), "br": (h - 1, w - 1)}.items():
        key = tuple(int(v) for v in img[y, x] > 200)
        out[corner] = names.get(key, str(img[y, x]))
    return out


def _upright_reference(stored: U8, orientation: int) -> U8:
    """EXIF orientation semantics written with numpy only (independent of the implementation)."""
    transforms: dict[int, Callable[[U8], U8]] = {
        1: lambda a: a,
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.transpose(1, 0, 2),
        6: lambda a: np.rot90(a, k=-1),  # 90 degrees clockwise
        7: lambda a: a.transpose(1, 0, 2)[::-1, ::-1],
        8: lambda a: np.rot90(a, k=1),  # 90 degrees counter-clockwise
    }
    return np.ascontiguousarray(transforms[orientation](stored))


def _assert_valid(result: DecodedImage) -> None:
    px = result.pixels
    assert isinstance(px, np.ndarray)
    assert px.dtype == np.uint8
    assert px.ndim == 3 and px.shape[2] == 3
    assert px.flags["C_CONTIGUOUS"]
    assert result.reduction in (1, 2, 4, 8)
    r = result.reduction
    assert px.shape[:2] == (-(-result.full_height // r), -(-result.full_width // r))
    assert result.format in ("jpeg", "png")


# ----------------------------------------------------------------------------------------------- error type


def test_decode_error_carries_reason_and_detail() -> None:
    err = DecodeError("too_large", "3 > 2")
    assert err.reason == "too_large"
    assert err.detail == "3 > 2"
    assert str(err) == "3 > 2"
    clone = pickle.loads(pickle.dumps(err))
    assert (clone.reason, clone.detail) == ("too_large", "3 > 2")


# ----------------------------------------------------------------------------------------------- headers


def test_read_header_jpeg_and_png() -> None:
    img = _noise(30, 50)
    assert read_header(_jpeg(img)) == ImageHeader("jpeg", 50, 30, 1)
    assert read_header(_png_cv(img)) == ImageHeader("png", 50, 30, 1)


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("big_endian", [False, True])
def test_read_header_exif_orientation(orientation: int, big_endian: bool) -> None:
    payload = _with_app1(_jpeg(_noise(30, 50)), _exif_app1(orientation, big_endian=big_endian))
    assert read_header(payload) == ImageHeader("jpeg", 50, 30, orientation)


def test_read_header_exif_orientation_as_long() -> None:
    payload = _with_app1(_jpeg(_noise(8, 8)), _exif_app1(6, kind=4))
    assert read_header(payload).orientation == 6


@pytest.mark.parametrize(
    "app1",
    [
        _exif_app1(0),
        _exif_app1(9),
        _exif_app1(0xFFFF),
        _segment(0xE1, b"Exif\x00\x00II*\x00"),  # TIFF header cut short
        _segment(0xE1, b"Exif\x00\x00II*\x00\xff\xff\xff\x7f"),  # IFD offset far outside
        _segment(0xE1, b"Exif\x00\x00II*\x00\x08\x00\x00\x00\xff\xff"),  # 65535 entries, none present
        _segment(0xE1, b"Exif\x00\x00XX*\x00\x08\x00\x00\x00"),  # bad byte order
        _segment(0xE1, b"http://ns.adobe.com/xap/1.0/\x00<x/>"),  # XMP, not Exif
    ],
)
def test_malformed_or_invalid_exif_means_orientation_1(app1: bytes) -> None:
    payload = _with_app1(_jpeg(_noise(8, 16)), app1)
    assert read_header(payload).orientation == 1
    assert decode(payload, LIMITS).pixels.shape == (8, 16, 3)


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"GIF89a\x01\x00\x01\x00",
        b"BM" + b"\x00" * 60,
        b"RIFF\x00\x00\x00\x00WEBPVP8 ",
        b"%PDF-1.7",
        b"\x00\x00\x00\x0cjP  \r\n\x87\n",
        b"\xff\xd8",  # SOI alone
        b"\xff\xd8\xff",
        b"\x89PNG\r\n\x1a\n",  # signature alone
        b"hello world",
    ],
)
def test_garbage_is_undecodable(payload: bytes) -> None:
    with pytest.raises(DecodeError) as info:
        read_header(payload)
    assert info.value.reason == "undecodable"
    with pytest.raises(DecodeError) as info:
        decode(payload, LIMITS)
    assert info.value.reason == "undecodable"


def test_png_bad_ihdr_crc_is_undecodable() -> None:
    payload = bytearray(_png_cv(_noise(4, 4)))
    payload[29] ^= 0xFF
    with pytest.raises(DecodeError, match="CRC"):
        read_header(bytes(payload))


def test_jpeg_zero_height_is_undecodable() -> None:
    payload = bytearray(_jpeg(_noise(8, 8)))
    sof = payload.index(b"\xff\xc0")
    payload[sof + 5 : sof + 7] = b"\x00\x00"  # height 0 (DNL)
    with pytest.raises(DecodeError) as info:
        decode(bytes(payload), LIMITS)
    assert info.value.reason == "undecodable"


# ----------------------------------------------------------------------------------------------- limits


def test_empty_and_oversized_payloads() -> None:
    with pytest.raises(DecodeError) as info:
        decode(b"", LIMITS)
    assert info.value.reason == "undecodable"
    payload = _jpeg(_noise(16, 16))
    assert decode(payload, DecodeLimits(max_bytes=len(payload))).pixels.shape == (16, 16, 3)
    with pytest.raises(DecodeError) as info:
        decode(payload, DecodeLimits(max_bytes=len(payload) - 1))
    assert info.value.reason == "too_large"
    # size is checked before the magic bytes
    with pytest.raises(DecodeError) as info:
        decode(b"x" * 11, DecodeLimits(max_bytes=10))
    assert info.value.reason == "too_large"


@pytest.mark.parametrize("fmt", ["jpeg", "png"])
def test_pixel_limit_boundary(fmt: str) -> None:
    img = _noise(100, 101)
    payload = _jpeg(img) if fmt == "jpeg" else _png_cv(img)
    assert decode(payload, DecodeLimits(max_pixels=100 * 101)).pixels.shape == (100, 101, 3)
    with pytest.raises(DecodeError) as info:
        decode(payload, DecodeLimits(max_pixels=100 * 101 - 1))
    assert info.value.reason == "too_large"


def _png_bomb() -> bytes:
    """Valid-looking PNG declaring 100000 x 100000 gray pixels with a few bytes of IDAT."""
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 100_001)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def _jpeg_bomb() -> bytes:
    payload = bytearray(_jpeg(_noise(8, 8)))
    sof = payload.index(b"\xff\xc0")
    payload[sof + 5 : sof + 9] = struct.pack(">HH", 65_535, 65_535)
    return bytes(payload)


@pytest.mark.parametrize("make", [_png_bomb, _jpeg_bomb], ids=["png", "jpeg"])
def test_decompression_bomb_rejected_before_decoding(
    make: Callable[[], bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    payload = make()
    assert len(payload) < 2000

    def no_decoder(*args: object, **kwargs: object) -> None:
        raise AssertionError("a decoder was called for a decompression bomb")

    monkeypatch.setattr(cv2, "imdecode", no_decoder)
    tracemalloc.start()
    start = time.perf_counter()
    with pytest.raises(DecodeError) as info:
        decode(payload, LIMITS)
    elapsed = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert info.value.reason == "too_large"
    assert elapsed < 0.05  # microseconds in practice; generous for a loaded CI box
    assert peak < 256 * 1024


def test_truncated_bomb_is_still_too_large() -> None:
    """Limits come first: a bomb that is also truncated is reported as too large."""
    assert decode_module.read_header(_png_bomb()[:40]).width == 100_000
    with pytest.raises(DecodeError) as info:
        decode(_png_bomb()[:40], LIMITS)
    assert info.value.reason == "too_large"


def png_bomb(side: int = 7071, color_type: int = 6, bit_depth: int = 16) -> bytes:
    """The memory bomb under the pixel and payload limits: side x side zeros (default 16-bit RGBA, 380 KiB),
    compressed row by row so making it allocates no image."""
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[color_type]
    row = bytes(1 + side * channels * bit_depth // 8)
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, bit_depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def test_memory_bomb_under_the_pixel_limit_is_too_large_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """7071x7071 16-bit RGBA: 50 M pixels, under max_pixels and max_payload_bytes, 400 MB as stored. Decoded to
    8-bit BGR it still takes twice 150 MB in OpenCV's PNG reader: over the per-photo default, refused unread."""
    payload = png_bomb()
    assert len(payload) < 400 * 1024
    assert read_header(payload).width * read_header(payload).height <= LIMITS.max_pixels

    def no_decoder(*args: object, **kwargs: object) -> None:
        raise AssertionError("a decoder was called for a memory bomb")

    monkeypatch.setattr(cv2, "imdecode", no_decoder)
    with pytest.raises(DecodeError) as info:
        decode(payload, LIMITS)
    assert info.value.reason == "too_large"
    assert "7071x7071 png (4 channels of 16 bits)" in info.value.detail
    assert plan(payload, DecodeLimits(max_decoded_bytes=2**40)).decoded_bytes == 2 * 7071 * 7071 * 3


@pytest.mark.parametrize("fmt", ["jpeg", "png"])
def test_decoded_bytes_limit_boundary(fmt: str) -> None:
    img = _noise(100, 101)
    payload = _jpeg(img) if fmt == "jpeg" else _png_cv(img)
    needed = plan(payload, LIMITS).decoded_bytes
    assert needed == (1 if fmt == "jpeg" else 2) * 100 * 101 * 3
    assert decode(payload, DecodeLimits(max_decoded_bytes=needed)).pixels.shape == (100, 101, 3)
    with pytest.raises(DecodeError) as info:
        decode(payload, DecodeLimits(max_decoded_bytes=needed - 1))
    assert info.value.reason == "too_large"
    assert f"takes {needed} bytes" in info.value.detail


def test_decoded_bytes_follow_scale_orientation_and_progressive_scans() -> None:
    img = _noise(480, 640)
    baseline = _jpeg(img)
    assert plan(baseline, LIMITS, 160).decoded_bytes == 120 * 160 * 3  # decoded at 1/4
    assert plan(baseline, LIMITS, 0).decoded_bytes == 480 * 640 * 3
    rotated = _with_app1(baseline, _exif_app1(6))
    assert plan(rotated, LIMITS, 160).decoded_bytes == 3 * 120 * 160 * 3  # plus the turned copies
    # progressive: libjpeg keeps every coefficient of the full image, whatever the scale (4:2:0 here)
    progressive = _jpeg(img, cv2.IMWRITE_JPEG_PROGRESSIVE, 1)
    coefficients = (640 // 8) * (480 // 8) * 128 + 2 * (640 // 16) * (480 // 16) * 128
    assert plan(progressive, LIMITS, 160).decoded_bytes == 120 * 160 * 3 + coefficients


def test_cmyk_jpeg_counts_its_conversion() -> None:
    cmyk = np.full((2, 3, 4), 200, np.uint8)
    assert plan(_dc_only_jpeg(cmyk, adobe_transform=0), LIMITS).decoded_bytes == 16 * 24 * 15


# ----------------------------------------------------------------------------------------------- basic decode


def test_decode_jpeg_full_size() -> None:
    img = np.zeros((60, 90, 3), np.uint8)
    img[:, :, 1] = 200
    result = decode(_jpeg(img, cv2.IMWRITE_JPEG_QUALITY, 95), LIMITS)
    _assert_valid(result)
    assert (result.full_width, result.full_height, result.reduction, result.format) == (90, 60, 1, "jpeg")
    assert np.abs(result.pixels.astype(int) - img).max() <= 3


def test_decode_png_is_lossless() -> None:
    img = _noise(33, 47)
    result = decode(_png_cv(img), LIMITS, min_long_side=5)
    _assert_valid(result)
    assert (result.full_width, result.full_height, result.reduction, result.format) == (47, 33, 1, "png")
    assert np.array_equal(result.pixels, img)


def test_decode_accepts_bytearray_and_memoryview() -> None:
    payload = _png_cv(_noise(5, 6))
    assert decode(bytearray(payload), LIMITS).pixels.shape == (5, 6, 3)  # type: ignore[arg-type]
    assert decode(memoryview(payload), LIMITS).pixels.shape == (5, 6, 3)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("min_long_side", "reduction"),
    [(0, 1), (-5, 1), (1, 8), (80, 8), (81, 4), (160, 4), (161, 2), (320, 2), (321, 1), (10_000, 1)],
)
def test_reduction_choice(min_long_side: int, reduction: int) -> None:
    payload = _jpeg(_noise(480, 640))
    result = decode(payload, LIMITS, min_long_side)
    _assert_valid(result)
    assert result.reduction == reduction
    assert result.pixels.shape == (480 // reduction, 640 // reduction, 3)
    assert max(result.pixels.shape[:2]) >= min(min_long_side, 640)


@pytest.mark.parametrize("reduction", [1, 2, 4, 8])
def test_reduced_sizes_round_up(reduction: int) -> None:
    payload = _jpeg(_noise(37, 101))
    result = decode(payload, LIMITS, min_long_side=max(1, 101 // reduction) if reduction > 1 else 0)
    assert result.reduction == reduction
    assert result.pixels.shape == (-(-37 // reduction), -(-101 // reduction), 3)


def test_reduced_decode_matches_downscaled_content() -> None:
    img = np.asarray(cv2.resize(_noise(6, 8), (640, 480), interpolation=cv2.INTER_NEAREST), dtype=np.uint8)
    result = decode(_jpeg(img, cv2.IMWRITE_JPEG_QUALITY, 95), LIMITS, min_long_side=80)
    assert result.reduction == 8
    expected = cv2.resize(img, (80, 60), interpolation=cv2.INTER_AREA)
    assert np.abs(result.pixels.astype(int) - expected).mean() < 4


def test_gray_jpeg_becomes_three_identical_channels() -> None:
    gray = _noise(40, 64)[:, :, 0]
    for min_long_side, shape in [(0, (40, 64, 3)), (16, (10, 16, 3))]:
        result = decode(_jpeg(gray), LIMITS, min_long_side)
        _assert_valid(result)
        assert result.pixels.shape == shape
        assert np.array_equal(result.pixels[:, :, 0], result.pixels[:, :, 1])
        assert np.array_equal(result.pixels[:, :, 0], result.pixels[:, :, 2])


def test_progressive_and_restart_interval_jpegs() -> None:
    img = _noise(64, 96)
    for payload in (_jpeg(img, cv2.IMWRITE_JPEG_PROGRESSIVE, 1), _jpeg(img, cv2.IMWRITE_JPEG_RST_INTERVAL, 1)):
        for min_long_side in (0, 24):
            _assert_valid(decode(payload, LIMITS, min_long_side))


# ----------------------------------------------------------------------------------------------- orientation


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("min_long_side", [0, 40, 20, 10])  # reductions 1, 2, 4, 8
def test_exif_orientation_applied_exactly_once(orientation: int, min_long_side: int) -> None:
    base = _jpeg(_corner_image(), cv2.IMWRITE_JPEG_QUALITY, 95)
    stored = decode(base, LIMITS, min_long_side)
    payload = _with_app1(base, _exif_app1(orientation))
    result = decode(payload, LIMITS, min_long_side)
    _assert_valid(result)
    assert result.reduction == stored.reduction == {0: 1, 40: 2, 20: 4, 10: 8}[min_long_side]
    swapped = orientation >= 5
    assert (result.full_width, result.full_height) == ((48, 80) if swapped else (80, 48))
    assert np.array_equal(result.pixels, _upright_reference(stored.pixels, orientation))


@pytest.mark.parametrize(
    ("orientation", "corners"),
    [
        (3, {"tl": "white", "tr": "blue", "bl": "green", "br": "red"}),  # 180 degrees
        (6, {"tl": "blue", "tr": "red", "bl": "white", "br": "green"}),  # 90 degrees clockwise
        (8, {"tl": "green", "tr": "white", "bl": "red", "br": "blue"}),  # 90 degrees counter-clockwise
    ],
)
@pytest.mark.parametrize("min_long_side", [0, 10])
@pytest.mark.parametrize("big_endian", [False, True])
def test_exif_rotation_semantics(
    orientation: int, corners: dict[str, str], min_long_side: int, big_endian: bool
) -> None:
    payload = _with_app1(_jpeg(_corner_image()), _exif_app1(orientation, big_endian=big_endian))
    result = decode(payload, LIMITS, min_long_side)
    assert _corner_colours(result.pixels) == corners
    expected_hw = (80, 48) if orientation in (6, 8) else (48, 80)
    r = result.reduction
    assert result.pixels.shape[:2] == (expected_hw[0] // r, expected_hw[1] // r)


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("flag", [cv2.IMREAD_COLOR, cv2.IMREAD_REDUCED_COLOR_2, cv2.IMREAD_REDUCED_COLOR_8])
def test_agrees_with_opencv_own_exif_handling(orientation: int, flag: int) -> None:
    """OpenCV (verified 4.x-5.0) rotates by EXIF itself in IMREAD_COLOR and the REDUCED modes; our
    explicit handling (which always passes IMREAD_IGNORE_ORIENTATION) must give the same pixels."""
    payload = _with_app1(_jpeg(_noise(24, 40)), _exif_app1(orientation))
    theirs = cv2.imdecode(np.frombuffer(payload, np.uint8), flag)
    assert theirs is not None
    ours = decode(payload, LIMITS, {cv2.IMREAD_COLOR: 0, cv2.IMREAD_REDUCED_COLOR_2: 20}.get(flag, 5))
    assert np.array_equal(ours.pixels, theirs)


def test_png_orientation_is_always_1() -> None:
    img = _corner_image()
    exif = _png_chunk(b"eXIf", b"II*\x00\x08\x00\x00\x00\x01\x00\x12\x01\x03\x00\x01\x00\x00\x00\x06\x00\x00\x00")
    payload = _png(img[:, :, ::-1], 2, extra=(exif,))  # PNG stores RGB
    assert read_header(payload).orientation == 1
    assert np.array_equal(decode(payload, LIMITS).pixels, img)


# ----------------------------------------------------------------------------------------------- truncation


def test_truncated_jpegs_are_undecodable() -> None:
    payload = _jpeg(_noise(64, 96))
    sos = payload.index(b"\xff\xda")
    for cut in (len(payload) - 2, len(payload) - 1, (sos + len(payload)) // 2, sos + 20, sos + 3, sos, 30):
        for min_long_side in (0, 12):
            with pytest.raises(DecodeError) as info:
                decode(payload[:cut], LIMITS, min_long_side)
            assert info.value.reason == "undecodable", cut


def test_truncated_progressive_jpeg_is_undecodable() -> None:
    payload = _jpeg(_noise(64, 96), cv2.IMWRITE_JPEG_PROGRESSIVE, 1)
    assert payload.count(b"\xff\xda") > 1
    last_scan = payload.rindex(b"\xff\xda")
    for cut in (len(payload) - 2, last_scan, last_scan - 5):
        with pytest.raises(DecodeError):
            decode(payload[:cut], LIMITS)


def test_eoi_inside_exif_thumbnail_does_not_count() -> None:
    """A truncated photo whose Exif APP1 embeds a complete thumbnail (with its own FFD9) is still truncated."""
    thumb = _jpeg(_noise(8, 8))
    payload = _with_app1(_jpeg(_noise(64, 96)), _exif_app1(1, thumbnail=thumb))
    assert decode(payload, LIMITS).pixels.shape == (64, 96, 3)
    cut = payload.index(b"\xff\xda", payload.index(thumb) + len(thumb)) + 40
    with pytest.raises(DecodeError, match="truncated"):
        decode(payload[:cut], LIMITS)


def test_trailing_bytes_after_eoi_and_fill_bytes_are_fine() -> None:
    payload = _jpeg(_noise(16, 24))
    _assert_valid(decode(payload + b"\x00trailing junk\xff", LIMITS))
    _assert_valid(decode(payload[:-2] + b"\xff\xff\xff\xd9", LIMITS))


def test_too_many_scans_is_undecodable() -> None:
    payload = _jpeg(_noise(8, 8), cv2.IMWRITE_JPEG_PROGRESSIVE, 1)
    eoi = len(payload) - 2
    empty_scan = _segment(0xDA, b"\x01\x01\x00\x01\x01\x10")  # refinement scan header, no data
    bloated = payload[:eoi] + empty_scan * 200 + payload[eoi:]
    with pytest.raises(DecodeError, match="scans"):
        decode(bloated, LIMITS)


def test_second_soi_is_undecodable() -> None:
    payload = _jpeg(_noise(8, 8))
    with pytest.raises(DecodeError) as info:
        decode(payload[:2] + b"\xff\xd8" + payload[2:], LIMITS)
    assert info.value.reason == "undecodable"


def test_truncated_pngs_are_undecodable() -> None:
    payload = _png_cv(_noise(64, 96))
    for cut in (len(payload) - 12, len(payload) - 1, len(payload) // 2, 45, 33):
        with pytest.raises(DecodeError) as info:
            decode(payload[:cut], LIMITS)
        assert info.value.reason == "undecodable", cut


def test_png_without_idat_or_with_trailing_bytes() -> None:
    header = _png_cv(_noise(4, 4))[:33]
    with pytest.raises(DecodeError, match="IDAT"):
        decode(header + _png_chunk(b"IEND", b""), LIMITS)
    _assert_valid(decode(_png_cv(_noise(4, 4)) + b"trailing junk", LIMITS))


def test_png_with_corrupt_idat_is_undecodable() -> None:
    payload = bytearray(_png_cv(_noise(32, 32)))
    payload[60] ^= 0xFF  # inside the IDAT: CRC no longer matches
    with pytest.raises(DecodeError) as info:
        decode(bytes(payload), LIMITS)
    assert info.value.reason == "undecodable"


# ----------------------------------------------------------------------------------------------- hidden damage


def _entropy_start(jpeg: bytes) -> int:
    """Offset of the first byte of entropy-coded data (after the first SOS header)."""
    sos = jpeg.index(b"\xff\xda")
    return sos + 2 + int.from_bytes(jpeg[sos + 2 : sos + 4], "big")


def hide_damage(jpeg: bytes, fraction: float, mode: str, seed: int) -> bytes:
    """Lose ``fraction`` of the entropy-coded data at a random place, zeroed or cut out; SOI, headers and the
    final EOI stay, so the structural checks pass and only the decoder can tell."""
    rng = np.random.default_rng(seed)
    start, end = _entropy_start(jpeg), len(jpeg) - 2
    assert jpeg[end:] == b"\xff\xd9"
    lost = int((end - start) * fraction)
    at = int(rng.integers(start, end - lost))
    damaged = jpeg[:at] + (bytes(lost) if mode == "zeroed" else b"") + jpeg[at + lost :]
    assert damaged.endswith(b"\xff\xd9") and damaged[:at] == jpeg[:at]
    return damaged


def _scene_jpegs() -> dict[str, bytes]:
    """Real encoder output of a rendered colposcope scene: baseline, progressive, with restart markers."""
    from gateway.scenes import SceneSpec, render

    image = render(SceneSpec(width=1600, height=1200, noise=4.0, seed=21)).image
    return {
        "baseline": _jpeg(image, cv2.IMWRITE_JPEG_QUALITY, 92),
        "progressive": _jpeg(image, cv2.IMWRITE_JPEG_QUALITY, 92, cv2.IMWRITE_JPEG_PROGRESSIVE, 1),
        "restarts": _jpeg(image, cv2.IMWRITE_JPEG_QUALITY, 92, cv2.IMWRITE_JPEG_RST_INTERVAL, 4),
    }


@pytest.fixture(scope="module")
def scene_jpegs() -> dict[str, bytes]:
    return _scene_jpegs()


@pytest.mark.parametrize("kind", ["baseline", "progressive", "restarts"])
@pytest.mark.parametrize("mode", ["zeroed", "cut"])
@pytest.mark.parametrize("fraction", [0.2, 0.4, 0.6])
def test_damage_hidden_inside_a_jpeg_is_undecodable(
    scene_jpegs: dict[str, bytes], kind: str, mode: str, fraction: float
) -> None:
    """libjpeg conceals lost entropy-coded data (grey or colour-shifted bands); the decoder must refuse it,
    at every scale the gateway uses."""
    intact = scene_jpegs[kind]
    assert decode(intact, LIMITS, 800).pixels.shape == (600, 800, 3)
    for seed in range(3):
        damaged = hide_damage(intact, fraction, mode, seed)
        for min_long_side in (0, 800, 200):  # reductions 1, 2, 8
            with pytest.raises(DecodeError) as info:
                decode(damaged, LIMITS, min_long_side)
            assert info.value.reason == "undecodable", (seed, min_long_side)
            assert "damaged" in info.value.detail


@pytest.mark.dev_photos
def test_real_camera_jpegs_with_hidden_damage_are_undecodable() -> None:
    from tests.conftest import DEV_PHOTOS

    paths = sorted((DEV_PHOTOS / "images").glob("*.jpg"))[::40]
    if not paths:
        pytest.skip(f"no photos in {DEV_PHOTOS}")
    for path in paths:
        intact = path.read_bytes()
        _assert_valid(decode(intact, LIMITS, 400))
        for n, (mode, fraction) in enumerate([("zeroed", 0.2), ("cut", 0.4), ("zeroed", 0.6), ("cut", 0.2)]):
            with pytest.raises(DecodeError) as info:
                decode(hide_damage(intact, fraction, mode, n), LIMITS, 400)
            assert info.value.reason == "undecodable", (path.name, mode, fraction)


# ----------------------------------------------------------------------------------------------- colour formats


def test_png_16bit_rgb_keeps_the_high_byte() -> None:
    """libpng reduces 16 bits to 8 row by row (no full-size 16-bit intermediate): the high byte, at most one
    level below rounding."""
    rgb = np.random.default_rng(3).integers(0, 65536, (9, 11, 3)).astype(np.uint16)
    rgb[0, :4, 0] = (0, 65535, 128, 129)
    result = decode(_png(rgb, 2, 16), LIMITS)
    expected = (rgb >> 8).astype(np.uint8)[:, :, ::-1]
    assert np.array_equal(result.pixels, expected)


@pytest.mark.parametrize("bit_depth", [8, 16])
def test_png_gray_alpha_drops_alpha(bit_depth: int) -> None:
    rng = np.random.default_rng(4)
    top = 255 if bit_depth == 8 else 65535
    ga = rng.integers(0, top + 1, (7, 5, 2)).astype(np.uint16)
    ga[:, :, 1] = 0  # fully transparent: the colour must survive unchanged (no compositing)
    result = decode(_png(ga, 4, bit_depth), LIMITS)
    gray = ga[:, :, 0].astype(np.uint32)
    expected = gray if bit_depth == 8 else gray >> 8
    assert np.array_equal(result.pixels, np.repeat(expected.astype(np.uint8)[:, :, None], 3, axis=2))


@pytest.mark.parametrize("bit_depth", [8, 16])
def test_png_rgba_drops_alpha(bit_depth: int) -> None:
    rng = np.random.default_rng(5)
    top = 255 if bit_depth == 8 else 65535
    rgba = rng.integers(0, top + 1, (6, 9, 4)).astype(np.uint16)
    result = decode(_png(rgba, 6, bit_depth), LIMITS)
    rgb = rgba[:, :, :3].astype(np.uint32)
    expected = rgb if bit_depth == 8 else rgb >> 8
    assert np.array_equal(result.pixels, expected.astype(np.uint8)[:, :, ::-1])


@pytest.mark.parametrize(("bit_depth", "top"), [(1, 1), (8, 255), (16, 65535)])
def test_png_grayscale(bit_depth: int, top: int) -> None:
    gray = np.random.default_rng(6).integers(0, top + 1, (10, 16)).astype(np.uint16)
    result = decode(_png(gray, 0, bit_depth), LIMITS)
    wide = gray.astype(np.uint32)
    expected = {1: wide * 255, 8: wide, 16: wide >> 8}[bit_depth]
    assert np.array_equal(result.pixels, np.repeat(expected.astype(np.uint8)[:, :, None], 3, axis=2))


def test_png_palette_with_transparency() -> None:
    palette = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 20, 30]], np.uint8)  # RGB
    idx = np.random.default_rng(7).integers(0, 4, (8, 12)).astype(np.uint8)
    plte = _png_chunk(b"PLTE", palette.tobytes())
    trns = _png_chunk(b"tRNS", bytes([0, 128, 255, 255]))
    result = decode(_png(idx, 3, extra=(plte, trns)), LIMITS)
    assert np.array_equal(result.pixels, palette[idx][:, :, ::-1])


@pytest.mark.parametrize("adobe_transform", [None, 0])
@pytest.mark.parametrize("min_long_side", [0, 8])
def test_cmyk_jpeg_becomes_bgr(adobe_transform: int | None, min_long_side: int) -> None:
    # Adobe convention (what OpenCV assumes): stored values are inverted, 255 = no ink.
    cmyk = np.array(
        [
            [[255, 0, 0, 255], [0, 255, 255, 255]],  # red (M+Y ink) | cyan (C ink)
            [[255, 255, 255, 255], [255, 255, 255, 0]],  # white (no ink) | black (K ink)
        ],
        np.uint8,
    )
    result = decode(_dc_only_jpeg(cmyk, adobe_transform=adobe_transform), LIMITS, min_long_side)
    _assert_valid(result)
    px = result.pixels.astype(int)
    h, w = px.shape[:2]
    assert (h, w) == ((16, 16) if min_long_side == 0 else (8, 8))
    expected = {(0, 0): (0, 0, 255), (0, 1): (255, 255, 0), (1, 0): (255, 255, 255), (1, 1): (0, 0, 0)}
    for (by, bx), bgr in expected.items():
        block = px[by * h // 2 : (by + 1) * h // 2, bx * w // 2 : (bx + 1) * w // 2]
        assert np.abs(block - np.array(bgr)).max() <= 2, (by, bx, block[0, 0])


def test_ycck_jpeg_becomes_bgr() -> None:
    # YCCK with neutral chroma: Y carries the (inverted-convention) CMY amount, K' = 255 is no black ink.
    ycck = np.array([[[200, 128, 128, 255], [200, 128, 128, 128]]], np.uint8)
    result = decode(_dc_only_jpeg(ycck, adobe_transform=2), LIMITS)
    px = result.pixels.astype(int)
    assert px.shape == (8, 16, 3)
    assert np.abs(px[:, :8] - 55).max() <= 2
    assert np.abs(px[:, 8:] - 28).max() <= 2


def test_hand_written_jpeg_encoder_sanity() -> None:
    gray = np.array([[[255], [128]], [[60], [0]]], np.uint8)
    result = decode(_dc_only_jpeg(gray), LIMITS)
    assert result.pixels[0, 0].tolist() == [255] * 3
    assert result.pixels[0, 8].tolist() == [128] * 3
    assert result.pixels[8, 0].tolist() == [60] * 3


def test_12bit_jpeg_is_refused_or_scaled() -> None:
    """OpenCV 5.0's build cannot decode 12-bit JPEG (-> undecodable); if a build can, output must be 8-bit."""
    blocks = np.array([[[4095], [2048]]], np.uint16)
    payload = _dc_only_jpeg(blocks, precision=12)
    assert read_header(payload) == ImageHeader("jpeg", 16, 8, 1)
    try:
        result = decode(payload, LIMITS)
    except DecodeError as exc:
        assert exc.reason == "undecodable"
    else:
        _assert_valid(result)
        assert abs(int(result.pixels[0, 0, 0]) - 255) <= 2
        assert abs(int(result.pixels[0, 8, 0]) - 128) <= 2


# ----------------------------------------------------------------------------------------------- fuzzing

_SEEDS: tuple[bytes, ...] = (
    _with_app1(_jpeg(_noise(24, 40)), _exif_app1(6)),
    _jpeg(_noise(24, 40, 1), cv2.IMWRITE_JPEG_PROGRESSIVE, 1),
    _jpeg(_noise(17, 9, 2)[:, :, 0], cv2.IMWRITE_JPEG_RST_INTERVAL, 1),
    _png_cv(_noise(20, 30, 3)),
    _png(np.random.default_rng(8).integers(0, 65536, (6, 7, 4)).astype(np.uint16), 6, 16),
    _png(
        np.random.default_rng(9).integers(0, 3, (5, 9)).astype(np.uint8),
        3,
        extra=(_png_chunk(b"PLTE", bytes(range(9))),),
    ),
    _dc_only_jpeg(np.random.default_rng(10).integers(0, 256, (2, 3, 4)).astype(np.uint8), adobe_transform=0),
)
_FUZZ_LIMITS = DecodeLimits(max_bytes=1 << 20, max_pixels=1 << 20)


@st.composite
def _mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(_SEEDS)))
    for _ in range(draw(st.integers(0, 3))):  # 0: the seed itself, so valid results stay common
        op = draw(st.sampled_from(["truncate", "flip", "insert", "delete", "overwrite"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "truncate":
            del data[pos:]
        elif op == "flip" and data:
            data[pos] ^= draw(st.integers(1, 255))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 64))]
        else:
            chunk = draw(st.binary(min_size=1, max_size=8))
            data[pos : pos + len(chunk)] = chunk
    return bytes(data)


def _concat(head: bytes, tail: bytes) -> bytes:
    return head + tail


_PAYLOADS = st.one_of(
    st.binary(max_size=256),
    _mutated(),
    st.builds(_concat, st.sampled_from([b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n"]), st.binary()),
    _mutated(),
)


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload=_PAYLOADS, min_long_side=st.integers(-1, 64))
def test_fuzz_decode_returns_image_or_decode_error(payload: bytes, min_long_side: int) -> None:
    try:
        result = decode(payload, _FUZZ_LIMITS, min_long_side)
    except DecodeError as exc:
        event(exc.reason)
        assert exc.reason in ("undecodable", "too_large")
        assert isinstance(exc.detail, str) and exc.detail
        return
    event(f"decoded {result.format}")
    _assert_valid(result)
    header = read_header(payload)
    assert result.format == header.format
    assert {result.full_width, result.full_height} == {header.width, header.height}
    assert header.width * header.height <= _FUZZ_LIMITS.max_pixels


@settings(max_examples=300, deadline=None, database=None)
@given(payload=_PAYLOADS)
def test_fuzz_read_header_returns_header_or_decode_error(payload: bytes) -> None:
    try:
        header = read_header(payload)
    except DecodeError as exc:
        assert exc.reason == "undecodable"
        return
    assert header.format in ("jpeg", "png")
    assert header.width > 0 and header.height > 0
    assert 1 <= header.orientation <= 8
