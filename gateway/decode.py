"""Safe, fast decoding of device photos (raw JPEG/PNG bytes) into upright BGR arrays.

Order of work in :func:`decode`, cheapest and most defensive first:

1. size limits on the payload (empty -> ``undecodable``, over ``max_bytes`` -> ``too_large``);
2. header parse in pure Python (JPEG: marker walk to SOFn plus the APP1 Exif orientation; PNG:
   signature + IHDR with its CRC) and the pixel limit, so a decompression bomb is refused in
   microseconds, before any decoder runs or any pixel buffer is allocated;
3. a structural completeness check: a JPEG must reach its EOI marker through its segment and scan
   structure (the entropy-coded data is scanned for markers; an ``FFD9`` inside an Exif thumbnail
   does not count), a PNG must reach its IEND chunk with valid CRCs on its critical chunks.
   Truncated photos are refused as ``undecodable``: a health worker must never get a verdict on half
   a photo; then the memory the decode will take, from the header (:func:`plan`), against
   ``max_decoded_bytes`` (``too_large``). The caller may hold that much of a shared budget meanwhile
   (:mod:`gateway.memory_budget`); :func:`decode_planned` runs the rest;
4. the decoder. JPEG: libjpeg-turbo's TurboJPEG API (``PyTurboJPEG``) with ``TJFLAG_STOPONWARNING``, so
   damage *inside* the entropy-coded data while the EOI is intact (a missing or zeroed middle piece), which
   libjpeg would conceal with grey or colour-shifted bands and a warning, is ``undecodable`` (a single flipped
   byte usually resynchronises unseen and spoils only a few blocks: not detectable without a checksum);
   its DCT scaling decodes at 1/2, 1/4 or 1/8 directly when the caller only needs ``min_long_side``
   pixels on the long side. PNG: ``cv2.imdecode`` to 8-bit BGR, which libpng reduces row by row from
   16 bits (keeping the high byte) and alpha (dropped), with no full-size 16-bit intermediate;
5. normalisation to HxWx3 ``uint8`` BGR and the EXIF orientation.

TurboJPEG never applies the EXIF orientation; we apply the orientation parsed by :func:`read_header`
exactly once ourselves (the same mapping as OpenCV's own), and the decoded size is checked against the
header. PNG is decoded with ``IMREAD_IGNORE_ORIENTATION``: its orientation is always 1 (an ``eXIf`` chunk
is ignored).
"""

from __future__ import annotations

import functools
import re
import struct
import zlib
from dataclasses import dataclass
from typing import Final, Literal

import cv2
import numpy as np
import numpy.typing as npt
from turbojpeg import TJFLAG_STOPONWARNING, TJPF_BGR, TJPF_CMYK, TurboJPEG

__all__ = [
    "DecodeError",
    "DecodeLimits",
    "DecodePlan",
    "DecodedImage",
    "ImageHeader",
    "Reason",
    "check_decoders",
    "decode",
    "decode_planned",
    "plan",
    "read_header",
]

Reason = Literal["undecodable", "too_large"]
ImageFormat = Literal["jpeg", "png"]
BGRImage = npt.NDArray[np.uint8]


class DecodeError(Exception):
    """The payload cannot be turned into an image; ``reason`` is machine-readable, ``detail`` is for logs."""

    reason: Reason
    detail: str

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail

    def __reduce__(self) -> tuple[type[DecodeError], tuple[Reason, str]]:
        return (DecodeError, (self.reason, self.detail))

    def __repr__(self) -> str:
        return f"DecodeError({self.reason!r}, {self.detail!r})"


@dataclass(frozen=True)
class DecodeLimits:
    """Resource limits checked before any decoder runs."""

    max_bytes: int = 16 * 1024 * 1024
    max_pixels: int = 50_000_000
    max_decoded_bytes: int = 256 * 1024 * 1024
    """The most memory one photo's decode may take (:attr:`DecodePlan.decoded_bytes`)."""


@dataclass(frozen=True)
class ImageHeader:
    """What the headers say. ``width``/``height`` are as stored, before the EXIF orientation."""

    format: ImageFormat
    width: int
    height: int
    orientation: int
    """EXIF orientation 1..8; 1 when absent, invalid, or for PNG."""


@dataclass(frozen=True)
class DecodePlan:
    """What decoding a payload will do and cost, from its headers alone (no decoder has run)."""

    header: ImageHeader
    reduction: int
    """1, 2, 4 or 8: the scale the decoder works at (PNG: always 1)."""
    decoded_bytes: int
    """The memory the decode takes at its peak, from the header: the decoded pixels (width x height at the
    decode scale x channels x bytes per sample) plus what the decoder holds beside them (see :func:`plan`)."""
    layout: _Layout


@dataclass(frozen=True)
class DecodedImage:
    """An upright BGR image, possibly shrunk by the decoder."""

    pixels: BGRImage
    """HxWx3 uint8 BGR, C-contiguous, upright (EXIF orientation applied)."""
    full_width: int
    """Upright width of the full-resolution image."""
    full_height: int
    """Upright height of the full-resolution image."""
    reduction: int
    """1, 2, 4 or 8: ``pixels`` is the full image shrunk by this factor (each side is ``ceil(full / r)``)."""
    format: ImageFormat


# --------------------------------------------------------------------------------------------- constants

_PNG_SIGNATURE: Final = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC: Final = b"\xff\xd8\xff"

# SOFn: C0-CF except DHT (C4), JPG (C8) and DAC (CC).
_JPEG_SOF: Final = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
_JPEG_PROGRESSIVE: Final = frozenset({0xC2, 0xC6, 0xCA, 0xCE})
_JPEG_SOI: Final = 0xD8
_JPEG_EOI: Final = 0xD9
_JPEG_SOS: Final = 0xDA
_JPEG_APP1: Final = 0xE1
_JPEG_TEM: Final = 0x01
# A marker: FF followed by anything but a stuffed 00, a fill FF or a restart marker (RST0-7 live inside
# entropy-coded data and carry no length). Fill FFs before a marker are skipped by the search itself.
_JPEG_MARKER_RE: Final = re.compile(rb"\xff[^\x00\xff\xd0-\xd7]")
# Real files have ~10 scans (progressive) and a few dozen segments; each empty progressive scan still
# costs the decoder a pass over the whole image, so cap them (tiny-file CPU-exhaustion defence).
_JPEG_MAX_SCANS: Final = 100
_JPEG_MAX_SEGMENTS: Final = 2000

# Valid PNG (colour type -> bit depths).
_PNG_DEPTHS: Final = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}
_PNG_CHANNELS: Final = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
_PNG_MAX_CHUNK: Final = 2**31 - 1

# 8-bit BGR straight from libpng, row by row: 16 bits keep their high byte, alpha is dropped (no compositing).
# No full-size 16-bit or 4-channel intermediate: a 7071x7071 16-bit RGBA PNG peaks at 288 MiB, not 574 MiB.
_PNG_FLAGS: Final = cv2.IMREAD_COLOR


def _quiet_opencv() -> None:
    """Lower OpenCV's own log level to ERROR (never raise it). libpng writes some warnings straight to
    the C stderr; those cannot be silenced per call, but the structural checks above keep truncated
    files (the usual source) away from the decoder."""
    try:
        logging = cv2.utils.logging
        if logging.getLogLevel() > logging.LOG_LEVEL_ERROR:
            logging.setLogLevel(logging.LOG_LEVEL_ERROR)
    except Exception:  # pragma: no cover - builds without utils.logging
        pass


_quiet_opencv()


class _TurboJPEGError(Exception):
    """libjpeg-turbo refused the data: a fatal error, or a warning (corrupt data) under stop-on-warning."""


class _StrictTurboJPEG(TurboJPEG):  # type: ignore[misc]
    """PyTurboJPEG (1.x) only *warns* (``warnings.warn``) when libjpeg-turbo fails with a warning, even under
    ``TJFLAG_STOPONWARNING``, and returns the half-filled image. Warning filters are process-wide, so they
    cannot be switched per call from worker threads; its error report is overridden to raise instead."""

    def _TurboJPEG__report_error(self, handle: object) -> None:
        raise _TurboJPEGError(self._TurboJPEG__get_error_string(handle))


@functools.cache
def _turbojpeg() -> TurboJPEG:
    """The TurboJPEG library, loaded once (each call makes its own handle, so threads can share it)."""
    try:
        return _StrictTurboJPEG()
    except (OSError, RuntimeError) as exc:
        raise RuntimeError(
            f"cannot load libjpeg-turbo's TurboJPEG library (Debian/Ubuntu package libturbojpeg0): {exc}"
        ) from None


def check_decoders() -> None:
    """Load the decoders now, so a missing library stops the gateway at start with a clear message
    (RuntimeError), not each JPEG later."""
    _turbojpeg()


# --------------------------------------------------------------------------------------------- public API


def read_header(payload: bytes) -> ImageHeader:
    """Parse only the headers of a JPEG or PNG; no decoder runs and nothing is allocated per pixel.

    Raises ``DecodeError("undecodable")`` for empty, unknown or malformed headers.
    """
    header, _ = _read_header(_as_bytes(payload))
    return header


def plan(payload: bytes, limits: DecodeLimits, min_long_side: int = 0) -> DecodePlan:
    """Steps 1 to 3 of the module docstring, and the memory the decode will take, checked against
    ``limits.max_decoded_bytes`` (``too_large``). Nothing is allocated per pixel.

    The memory is what the decoders were measured to hold at their peak (``bench/decode_bench.py``), at the
    scale they decode at, 8 bits and 3 channels since no decoder here keeps 16 bits or alpha:

    - JPEG: the decoded pixels (4-component CMYK/YCCK: 15 bytes a pixel, for the CMYK output and its
      conversion), two more such buffers when the EXIF orientation turns the image, and, for a progressive or
      multi-scan JPEG, libjpeg's full-size coefficient buffer (2 bytes a sample, per component at its sampling);
    - PNG: twice the decoded pixels (OpenCV's PNG reader fills a buffer of its own, then copies it), whatever
      the stored depth and alpha: libpng reduces 16-bit and alpha to 8-bit BGR row by row.
    """
    data = _as_bytes(payload)
    if not data:
        raise DecodeError("undecodable", "empty payload")
    if len(data) > limits.max_bytes:
        raise DecodeError("too_large", f"payload is {len(data)} bytes, limit {limits.max_bytes}")
    header, layout = _read_header(data)
    pixels_declared = header.width * header.height
    if pixels_declared > limits.max_pixels:
        raise DecodeError(
            "too_large",
            f"{header.format} declares {header.width}x{header.height} = {pixels_declared} pixels, "
            f"limit {limits.max_pixels}",
        )
    if header.format == "jpeg":
        scans = _check_jpeg_complete(data)
        reduction = _pick_reduction(max(header.width, header.height), min_long_side)
        pixels = -(-header.width // reduction) * -(-header.height // reduction)
        needed = pixels * (15 if layout.channels == 4 else 3)
        if header.orientation != 1:
            needed += 2 * pixels * 3
        if layout.progressive or scans > 1:
            needed += _jpeg_coefficient_bytes(header, layout)
    else:
        _check_png_complete(data)
        reduction = 1
        needed = 2 * pixels_declared * 3
    if needed > limits.max_decoded_bytes:
        raise DecodeError(
            "too_large",
            f"decoding this {header.width}x{header.height} {header.format} ({layout.channels} channels of "
            f"{layout.bit_depth} bits) at 1/{reduction} takes {needed} bytes, limit {limits.max_decoded_bytes}",
        )
    return DecodePlan(header, reduction, needed, layout)


def decode(payload: bytes, limits: DecodeLimits, min_long_side: int = 0) -> DecodedImage:
    """Decode a JPEG/PNG payload into an upright BGR image, enforcing ``limits`` before decoding.

    For JPEG, the largest reduction ``r`` in 8, 4, 2 with ``long_side / r >= min_long_side`` is decoded
    directly by libjpeg (much faster); ``min_long_side <= 0`` means full size. PNG is always full size.
    Raises only :class:`DecodeError` for any bytes (``TypeError`` if ``payload`` is not bytes-like).
    """
    return decode_planned(payload, plan(payload, limits, min_long_side))


def decode_planned(payload: bytes, planned: DecodePlan) -> DecodedImage:
    """Run the decoder for a :func:`plan` of these same bytes (steps 4 and 5). TurboJPEG (through ctypes) and
    ``cv2.imdecode`` release the GIL, so decoding in worker threads runs in parallel."""
    data = _as_bytes(payload)
    header, reduction = planned.header, planned.reduction
    if header.format == "jpeg":
        image = _bgr8(_decode_jpeg(data, reduction, planned.layout.channels))
    else:
        image = _bgr8(_imdecode(data, _PNG_FLAGS | cv2.IMREAD_IGNORE_ORIENTATION))
    expected = (-(-header.height // reduction), -(-header.width // reduction))
    if image.shape[:2] != expected:
        raise DecodeError(
            "undecodable",
            f"decoder returned {image.shape[1]}x{image.shape[0]}, header implies {expected[1]}x{expected[0]}",
        )

    image = _apply_orientation(image, header.orientation)
    if header.orientation >= 5:
        full_width, full_height = header.height, header.width
    else:
        full_width, full_height = header.width, header.height
    return DecodedImage(
        pixels=np.ascontiguousarray(image),
        full_width=full_width,
        full_height=full_height,
        reduction=reduction,
        format=header.format,
    )


# --------------------------------------------------------------------------------------------- helpers


def _as_bytes(payload: bytes | bytearray | memoryview) -> bytes:
    if isinstance(payload, bytes):
        return payload
    if isinstance(payload, (bytearray, memoryview)):
        return bytes(payload)
    raise TypeError(f"payload must be bytes, not {type(payload).__name__}")


def _pick_reduction(long_side: int, min_long_side: int) -> int:
    """Largest r in 8, 4, 2 with long_side / r >= min_long_side; 1 when min_long_side <= 0."""
    if min_long_side <= 0:
        return 1
    for r in (8, 4, 2):
        if long_side >= min_long_side * r:
            return r
    return 1


@dataclass(frozen=True)
class _Layout:
    """How the samples are stored, from the header."""

    bit_depth: int
    channels: int
    """Samples per pixel as stored: PNG 1 (gray, palette index), 2 (gray+alpha), 3 or 4 (RGBA); JPEG 1, 3 or 4."""
    progressive: bool = False
    sampling: tuple[tuple[int, int], ...] = ()
    """JPEG: each component's horizontal and vertical sampling factors."""


def _read_header(data: bytes) -> tuple[ImageHeader, _Layout]:
    """Header plus the stored sample layout."""
    if not data:
        raise DecodeError("undecodable", "empty payload")
    try:
        if data.startswith(_PNG_SIGNATURE):
            return _png_header(data)
        if data.startswith(_JPEG_MAGIC):
            return _jpeg_header(data)
    except (struct.error, IndexError, ValueError) as exc:  # safety net: bounds are checked explicitly
        raise DecodeError("undecodable", f"malformed header: {exc}") from None
    raise DecodeError("undecodable", f"not a JPEG or PNG (starts with {data[:8].hex()})")


def _png_header(data: bytes) -> tuple[ImageHeader, _Layout]:
    if len(data) < 33:
        raise DecodeError("undecodable", "PNG shorter than signature + IHDR")
    length, ctype = struct.unpack_from(">I4s", data, 8)
    if ctype != b"IHDR" or length != 13:
        raise DecodeError("undecodable", "PNG does not start with a 13-byte IHDR chunk")
    width, height, depth, color, compression, filtering, interlace = struct.unpack_from(">IIBBBBB", data, 16)
    (crc,) = struct.unpack_from(">I", data, 29)
    if zlib.crc32(data[12:29]) != crc:
        raise DecodeError("undecodable", "PNG IHDR CRC mismatch")
    if not (0 < width <= _PNG_MAX_CHUNK and 0 < height <= _PNG_MAX_CHUNK):
        raise DecodeError("undecodable", f"PNG has invalid size {width}x{height}")
    if depth not in _PNG_DEPTHS.get(color, ()) or compression or filtering or interlace > 1:
        raise DecodeError("undecodable", f"PNG IHDR invalid (colour type {color}, bit depth {depth})")
    return ImageHeader("png", width, height, 1), _Layout(depth, _PNG_CHANNELS[color])


def _check_png_complete(data: bytes) -> None:
    """Walk the chunks to IEND. A missing IEND or a chunk running past the end means truncation.
    Critical chunks (IHDR, PLTE, IDAT, IEND) must match their CRC, as libpng requires; checking here
    is cheap (~1 ms per 4 MB) and keeps libpng's error messages off stderr."""
    view = memoryview(data)
    pos, end, seen_idat = 8, len(data), False
    while True:
        if pos + 12 > end:
            raise DecodeError("undecodable", "PNG truncated (no IEND chunk)")
        length, ctype = struct.unpack_from(">I4s", data, pos)
        if length > _PNG_MAX_CHUNK:
            raise DecodeError("undecodable", "PNG chunk length out of range")
        crc_at = pos + 8 + length
        if crc_at + 4 > end:
            raise DecodeError("undecodable", "PNG truncated (last chunk incomplete, no IEND chunk)")
        if not ctype[0] & 0x20:  # critical chunk: upper-case first letter
            (crc,) = struct.unpack_from(">I", data, crc_at)
            if zlib.crc32(view[pos + 4 : crc_at]) != crc:
                raise DecodeError("undecodable", f"PNG {ctype.decode('latin-1')!r} chunk CRC mismatch")
        if ctype == b"IEND":
            break
        seen_idat = seen_idat or ctype == b"IDAT"
        pos = crc_at + 4
    if not seen_idat:
        raise DecodeError("undecodable", "PNG has no IDAT chunk")


def _next_jpeg_segment(data: bytes, pos: int) -> tuple[int, int, int] | None:
    """Find the next marker at or after ``pos`` (skipping entropy-coded data and fill bytes, like
    libjpeg's ``next_marker``). Returns ``(marker, body_start, body_end)``, the body empty for
    standalone markers, or None when no marker is left."""
    match = _JPEG_MARKER_RE.search(data, pos)
    if match is None:
        return None
    marker = data[match.start() + 1]
    start = match.end()
    if marker in (_JPEG_EOI, _JPEG_TEM):
        return marker, start, start
    if marker == _JPEG_SOI:
        raise DecodeError("undecodable", "JPEG has a second SOI marker")
    if start + 2 > len(data):
        raise DecodeError("undecodable", f"JPEG truncated in marker 0x{marker:02X}")
    (length,) = struct.unpack_from(">H", data, start)
    if length < 2:
        raise DecodeError("undecodable", f"JPEG marker 0x{marker:02X} has bogus length {length}")
    if start + length > len(data):
        raise DecodeError("undecodable", f"JPEG truncated in marker 0x{marker:02X} segment")
    return marker, start + 2, start + length


def _jpeg_header(data: bytes) -> tuple[ImageHeader, _Layout]:
    """Walk the markers up to the first SOS: first SOFn gives the size, first Exif APP1 the orientation."""
    size: tuple[int, int, int, int] | None = None
    sof = 0
    sampling: tuple[tuple[int, int], ...] = ()
    orientation: int | None = None
    pos = 2
    for _ in range(_JPEG_MAX_SEGMENTS):
        try:
            segment = _next_jpeg_segment(data, pos)
        except DecodeError:
            if size is None:
                raise
            break  # header damaged after the SOF: the size is known, completeness is checked later
        if segment is None:
            break
        marker, start, end = segment
        if marker in (_JPEG_SOS, _JPEG_EOI):
            break
        if marker in _JPEG_SOF and size is None:
            if end - start < 6:
                raise DecodeError("undecodable", "JPEG SOF segment too short")
            size = struct.unpack_from(">BHHB", data, start)
            sof = marker
            specs = data[start + 6 : end]
            sampling = tuple((b >> 4, b & 15) for b in specs[1 : 3 * size[3] : 3])
        elif marker == _JPEG_APP1 and orientation is None and data.startswith(b"Exif\x00\x00", start):
            orientation = _exif_orientation(data[start + 6 : end])
        pos = end
    if size is None:
        raise DecodeError("undecodable", "JPEG has no frame header (SOFn) before its first scan")
    precision, height, width, components = size
    if width == 0 or height == 0:
        raise DecodeError("undecodable", f"JPEG declares size {width}x{height} (DNL is not supported)")
    if len(sampling) != components or not all(1 <= h <= 4 and 1 <= v <= 4 for h, v in sampling):
        raise DecodeError("undecodable", "JPEG SOF segment has bad component specifications")
    layout = _Layout(precision, components, sof in _JPEG_PROGRESSIVE, sampling)
    return ImageHeader("jpeg", width, height, orientation or 1), layout


def _jpeg_coefficient_bytes(header: ImageHeader, layout: _Layout) -> int:
    """libjpeg's whole-image coefficient buffer (multi-scan JPEGs): 64 two-byte coefficients a block, for every
    block of every component at its own sampling, in whole MCUs."""
    h_max = max(h for h, _ in layout.sampling)
    v_max = max(v for _, v in layout.sampling)
    mcus_x = -(-header.width // (8 * h_max))
    mcus_y = -(-header.height // (8 * v_max))
    return sum(mcus_x * h * mcus_y * v * 128 for h, v in layout.sampling)


def _exif_orientation(tiff: bytes) -> int:
    """Orientation tag (0x0112) of IFD0 in a TIFF blob; 1 when absent, malformed or out of range."""
    if len(tiff) < 8:
        return 1
    if tiff[:4] == b"II*\x00":
        order = "<"
    elif tiff[:4] == b"MM\x00*":
        order = ">"
    else:
        return 1
    (ifd,) = struct.unpack_from(order + "I", tiff, 4)
    if ifd + 2 > len(tiff):
        return 1
    (count,) = struct.unpack_from(order + "H", tiff, ifd)
    for i in range(min(count, (len(tiff) - ifd - 2) // 12)):
        entry = ifd + 2 + 12 * i
        tag, kind, n = struct.unpack_from(order + "HHI", tiff, entry)
        if tag != 0x0112:
            continue
        if n < 1 or kind not in (3, 4):  # SHORT (standard) or LONG (seen from sloppy writers)
            return 1
        (value,) = struct.unpack_from(order + ("H" if kind == 3 else "I"), tiff, entry + 8)
        return int(value) if 1 <= value <= 8 else 1
    return 1


def _check_jpeg_complete(data: bytes) -> int:
    """Follow segments and scans to the EOI marker; refuse truncated files and absurd scan counts. Returns the
    number of scans."""
    pos = 2
    scans = 0
    for _ in range(_JPEG_MAX_SEGMENTS):
        segment = _next_jpeg_segment(data, pos)
        if segment is None:
            raise DecodeError("undecodable", "JPEG truncated (no EOI marker after the last scan)")
        marker, _, pos = segment
        if marker == _JPEG_EOI:
            if scans == 0:
                raise DecodeError("undecodable", "JPEG has no scan (SOS) before EOI")
            return scans
        if marker == _JPEG_SOS:
            scans += 1
            if scans > _JPEG_MAX_SCANS:
                raise DecodeError("undecodable", f"JPEG has more than {_JPEG_MAX_SCANS} scans")
    raise DecodeError("undecodable", f"JPEG has more than {_JPEG_MAX_SEGMENTS} marker segments")


def _apply_orientation(image: BGRImage, orientation: int) -> BGRImage:
    """Turn the stored image upright for EXIF ``orientation`` (same mapping as OpenCV's own)."""
    if orientation == 2:
        out = cv2.flip(image, 1)  # mirror left-right
    elif orientation == 3:
        out = cv2.rotate(image, cv2.ROTATE_180)
    elif orientation == 4:
        out = cv2.flip(image, 0)  # mirror top-bottom
    elif orientation == 5:
        out = cv2.transpose(image)  # mirror across the main diagonal
    elif orientation == 6:
        out = cv2.rotate(image, cv2.ROTATE_90_CLOCKWISE)
    elif orientation == 7:
        out = cv2.flip(cv2.transpose(image), -1)  # mirror across the anti-diagonal
    elif orientation == 8:
        out = cv2.rotate(image, cv2.ROTATE_90_COUNTERCLOCKWISE)
    else:
        return image
    return np.asarray(out, dtype=np.uint8)


def _decode_jpeg(data: bytes, reduction: int, components: int) -> npt.NDArray[np.uint8]:
    """TurboJPEG decode at 1/``reduction``, refusing what libjpeg would conceal; 4-component (CMYK, YCCK)
    JPEGs come out as Adobe-convention CMYK and are turned into BGR here."""
    decoder = _turbojpeg()
    scale = (1, reduction)
    try:
        if components == 4:
            cmyk = decoder.decode(data, TJPF_CMYK, scale, TJFLAG_STOPONWARNING)
            return _cmyk_to_bgr(np.asarray(cmyk, dtype=np.uint8))
        return np.asarray(decoder.decode(data, TJPF_BGR, scale, TJFLAG_STOPONWARNING), dtype=np.uint8)
    except _TurboJPEGError as exc:
        raise DecodeError("undecodable", f"JPEG data is damaged or unsupported: {exc}") from None
    except Exception as exc:  # MemoryError, ValueError, ...
        raise DecodeError("undecodable", f"decoder failed: {type(exc).__name__}: {exc}") from None


def _cmyk_to_bgr(cmyk: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """Adobe's inverted CMYK (255 = no ink), as libjpeg gives it, to BGR: each of B, G, R is Y, M, C times K / 255.
    In bands of rows, so the 16-bit intermediates stay small: the whole photo at once took 20 bytes a pixel more,
    past what ``plan`` reserves."""
    bgr = np.empty((*cmyk.shape[:2], 3), np.uint8)
    for top in range(0, cmyk.shape[0], _CMYK_BAND_ROWS):
        wide = cmyk[top : top + _CMYK_BAND_ROWS].astype(np.uint16)
        bgr[top : top + _CMYK_BAND_ROWS] = (wide[:, :, 2::-1] * wide[:, :, 3:4] + 127) // 255
    return bgr


_CMYK_BAND_ROWS = 64


def _imdecode(data: bytes, flags: int) -> npt.NDArray[np.generic]:
    try:
        image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags)
    except Exception as exc:  # cv2.error, MemoryError, ...
        raise DecodeError("undecodable", f"decoder failed: {type(exc).__name__}: {exc}") from None
    if not isinstance(image, np.ndarray) or image.size == 0:
        raise DecodeError("undecodable", "decoder rejected the data")
    return image


def _bgr8(image: npt.NDArray[np.generic]) -> BGRImage:
    """The decoders here always give HxWx3 uint8 BGR; anything else is refused rather than guessed at."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise DecodeError("undecodable", f"decoder returned an array of shape {image.shape}, {image.dtype}")
    return image.astype(np.uint8, copy=False)
