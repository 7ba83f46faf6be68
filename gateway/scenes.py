"""Synthetic colposcope-like scenes with known truth, for the demo, the device simulator, tests and benchmarks.

The project may not ship clinic photos, so this module paints look-alikes: the view through a speculum of a
pink cervix (a dome filling 25-50 % of the frame width, a little off-centre) with its external os (a dark
slit or small ellipse), a redder, grainier squamo-columnar junction region around the os, thin curvy vessels
and mucosal mottling at several scales, reddish vaginal wall with folds and a dark fornix around the cervix,
two grey brushed-metal speculum blades (top/bottom, or left/right for about a quarter of the seeds), small
specular glints on the wet tissue, and a dark vignette.  The tissue carries real fine detail down to the
pixel, so focus measures (high-frequency energy on the cervix) see blur.

Known truth per scene: the cervix disc's box (``Scene.cervix_box``), whether it should be judged sharp
(``Scene.expected_sharp``) and the exposure asked for (``spec.brightness``).

Pipeline: paint in float32 (colours of the chosen stage) -> scale by ``brightness`` -> blur (disk PSF or a
motion line through ``cv2.filter2D``; ``cervix_defocus`` blurs only the cervix through a soft mask) ->
Gaussian sensor noise -> round and clip to uint8.

``cervix=False`` alternates by seed: even seeds give the same wall + speculum view with no cervix (the
vaginal canal folds into a dark lumen), odd seeds an unrelated everyday scene (a grey desk seen from
above with a book, a sheet of printed paper, a mug, a pen ...).

Everything is drawn from ``numpy.random.Generator`` streams seeded by ``spec.seed`` (one stream per
component), so a spec always gives the same image, and specs that differ only in blur, brightness, noise or
stage share the same geometry and texture.  The layout is defined in units of the frame, so one seed gives
the same scene at every resolution (only the finest texture differs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Literal, cast, get_args

import cv2
import numpy as np
import numpy.typing as npt

Blur = Literal["none", "defocus", "motion", "cervix_defocus"]
"""``cervix_defocus``: only the cervix is blurred, the speculum stays sharp (focused on the wrong plane)."""
Stage = Literal["saline", "acetic", "iodine", "green"]
Box = tuple[float, float, float, float]

F32 = npt.NDArray[np.float32]
U8 = npt.NDArray[np.uint8]
F64 = npt.NDArray[np.float64]

_BLURS: tuple[Blur, ...] = get_args(Blur)
_STAGES: tuple[Stage, ...] = get_args(Stage)
_TAU = 2.0 * math.pi

# Unit-variance Gaussian quantiles: 256 levels, looked up from random bytes (several times faster than
# Generator.standard_normal, which matters for full-resolution noise at 4000x3000).
_GAUSS_LUT = np.array([NormalDist().inv_cdf((i + 0.5) / 256.0) for i in range(256)], dtype=np.float32)
_GAUSS_LUT /= np.float32(_GAUSS_LUT.std())


@dataclass(frozen=True)
class SceneSpec:
    """What to render.  Sizes are pixels; ``blur_px`` is a defocus disk radius / motion length in pixels at
    this resolution (0 with ``blur="none"``).  ``brightness`` < 0.35 gives a too-dark photo, > 1.8 an
    overexposed one.  ``noise`` is the sensor noise std in 8-bit levels."""

    width: int = 1600
    height: int = 1200
    cervix: bool = True
    blur: Blur = "none"
    blur_px: float = 0.0
    brightness: float = 1.0
    stage: Stage = "acetic"
    noise: float = 2.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.width < 64 or self.height < 64:
            raise ValueError(f"scene must be at least 64x64, got {self.width}x{self.height}")
        if self.blur not in _BLURS:
            raise ValueError(f"blur must be one of {_BLURS}, got {self.blur!r}")
        if self.stage not in _STAGES:
            raise ValueError(f"stage must be one of {_STAGES}, got {self.stage!r}")
        if not (math.isfinite(self.blur_px) and self.blur_px >= 0):
            raise ValueError(f"blur_px must be finite and >= 0, got {self.blur_px}")
        if self.blur == "none" and self.blur_px != 0:
            raise ValueError("blur_px must be 0 when blur is 'none'")
        if self.blur != "none" and self.blur_px <= 0:
            raise ValueError(f"blur {self.blur!r} needs blur_px > 0")
        if not (math.isfinite(self.brightness) and self.brightness > 0):
            raise ValueError(f"brightness must be finite and > 0, got {self.brightness}")
        if not (math.isfinite(self.noise) and self.noise >= 0):
            raise ValueError(f"noise must be finite and >= 0, got {self.noise}")


@dataclass(frozen=True, eq=False)  # eq=False: an ndarray field makes the generated __eq__ ambiguous
class Scene:
    """A rendered scene and its truth."""

    image: U8
    """HxWx3 uint8 BGR."""
    cervix_box: Box | None
    """Normalised (x0, y0, x1, y1) in 0..1 of the cervix disc; None when ``spec.cervix`` is False."""
    spec: SceneSpec

    @property
    def expected_sharp(self) -> bool:
        """True when no blur was applied."""
        return self.spec.blur == "none"


# --------------------------------------------------------------------------------------------- helpers


def _f32(a: object) -> F32:
    """Type a float32 array returned by OpenCV (whose stubs type results loosely)."""
    return cast(F32, a)


def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed & 0xFFFF_FFFF_FFFF_FFFF, stream])


def _gauss(rng: np.random.Generator, rows: int, cols: int, std: float = 1.0, dst: F32 | None = None) -> F32:
    """(rows, cols) float32 noise, quantised Gaussian with the given std (fast: random bytes + LUT)."""
    raw = np.frombuffer(rng.bytes(rows * cols), dtype=np.uint8).reshape(rows, cols)
    lut = _GAUSS_LUT if std == 1.0 else _GAUSS_LUT * np.float32(std)
    return _f32(cv2.LUT(raw, lut, dst=dst))


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: float) -> F32:
    """(h, w) smooth noise with features about ``cell`` pixels across, std ~1."""
    gh, gw = int(h / cell) + 3, int(w / cell) + 3
    coarse = rng.standard_normal((gh, gw), dtype=np.float32)
    out = _f32(cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC))
    out *= np.float32(1.0 / (float(out.std()) + 1e-6))
    return out


def _ramp(a: F32, lo: float, hi: float) -> F32:
    """clip((a - lo) / (hi - lo), 0, 1) as float32."""
    out = _f32((a - np.float32(lo)) * np.float32(1.0 / (hi - lo)))
    return _f32(np.clip(out, 0.0, 1.0, out=out))


def _smoothstep(a: F32, lo: float, hi: float) -> F32:
    t = _ramp(a, lo, hi)
    return (t * t * (3.0 - 2.0 * t)).astype(np.float32, copy=False)


@dataclass(frozen=True)
class _Blob:
    """A wobbly ellipse (centre, semi-axes, tilt, radial harmonics); ``rho`` < 1 inside, = 1 on the outline."""

    cx: float
    cy: float
    rx: float
    ry: float
    tilt: float
    harmonics: tuple[tuple[int, float, float], ...]

    def rho(self, x: F32, y: F32) -> F32:
        c, s = math.cos(self.tilt), math.sin(self.tilt)
        dx = x - np.float32(self.cx)
        dy = y - np.float32(self.cy)
        u = (dx * np.float32(c) + dy * np.float32(s)) * np.float32(1.0 / self.rx)
        v = (dy * np.float32(c) - dx * np.float32(s)) * np.float32(1.0 / self.ry)
        th = np.arctan2(v, u)
        m = np.ones_like(th)
        for k, amp, phase in self.harmonics:
            m += np.float32(amp) * np.sin(np.float32(k) * th + np.float32(phase))
        return _f32((np.hypot(u, v) / m).astype(np.float32, copy=False))

    def outline(self, scale: float = 1.0, n: int = 720) -> tuple[F64, F64]:
        th = np.linspace(0.0, _TAU, n, endpoint=False)
        m = np.ones_like(th)
        for k, amp, phase in self.harmonics:
            m += amp * np.sin(k * th + phase)
        u = scale * m * np.cos(th) * self.rx
        v = scale * m * np.sin(th) * self.ry
        c, s = math.cos(self.tilt), math.sin(self.tilt)
        return self.cx + u * c - v * s, self.cy + u * s + v * c

    def bbox(self, scale: float = 1.0, pad: float = 0.0) -> tuple[float, float, float, float]:
        xs, ys = self.outline(scale)
        return float(xs.min()) - pad, float(ys.min()) - pad, float(xs.max()) + pad, float(ys.max()) + pad


def _crop(bbox: tuple[float, float, float, float], w: int, h: int) -> tuple[int, int, int, int] | None:
    x0, y0 = max(0, math.floor(bbox[0])), max(0, math.floor(bbox[1]))
    x1, y1 = min(w, math.ceil(bbox[2]) + 1), min(h, math.ceil(bbox[3]) + 1)
    return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


def _crop_grid(c: tuple[int, int, int, int]) -> tuple[F32, F32]:
    x = np.arange(c[0], c[2], dtype=np.float32)[None, :]
    y = np.arange(c[1], c[3], dtype=np.float32)[:, None]
    return x, y


@dataclass(frozen=True)
class _Grid:
    """The low-resolution grid (about 400 px across) on which smooth fields are computed.  Rows are ``q``
    full-resolution rows apart (integer, so ``_Rows`` can upsample in row blocks); ``x``/``y`` are the
    full-resolution coordinates of the samples."""

    q: int
    w: int
    h: int
    x: F32  # (1, w)
    y: F32  # (h, 1)

    @staticmethod
    def of(width: int, height: int) -> _Grid:
        q = max(1, math.ceil(max(width, height) / 400))
        w, h = max(2, math.ceil(width / q)), max(2, math.ceil(height / q))
        x = ((np.arange(w) + 0.5) * (width / w) - 0.5).astype(np.float32)[None, :]
        y = ((np.arange(h) + 0.5) * q - 0.5).astype(np.float32)[:, None]
        return _Grid(q, w, h, x, y)


class _Rows:
    """Bilinear upsampling of a coarse field whose rows are ``cell`` full-resolution rows apart, to
    ``width`` columns, one block of rows at a time: rows(r0, r1) equals rows r0..r1 of a whole-image
    ``cv2.resize`` to (width, rows * cell), without ever holding the whole image."""

    def __init__(self, coarse: F32, cell: int, width: int) -> None:
        self.pad = _f32(cv2.copyMakeBorder(coarse, 1, 1, 0, 0, cv2.BORDER_REPLICATE))
        self.cell = cell
        self.width = width

    def rows(self, r0: int, r1: int) -> F32:
        c = self.cell
        i0, i1 = r0 // c - 1, -(-r1 // c) + 1
        block = self.pad[i0 + 1 : i1 + 1]
        up = _f32(cv2.resize(block, (self.width, (i1 - i0) * c), interpolation=cv2.INTER_LINEAR))
        off = r0 - i0 * c
        return up[off : off + r1 - r0]


@dataclass(frozen=True)
class _Layout:
    """Geometry of one colposcope scene, in full-resolution pixels."""

    disc: _Blob
    scj: _Blob  # squamo-columnar junction region, centred on the os
    os_xy: tuple[float, float]
    os_ab: tuple[float, float]
    os_angle: float
    blades_tb: bool  # blades at top and bottom (else left and right)
    blade_edge: tuple[float, float, float, float, float]  # b1, c1, b2, c2, along-centre
    blade_phase: float
    light: tuple[float, float]
    vignette: tuple[float, float]
    fold_period: float


def _layout(spec: SceneSpec, s: float) -> _Layout:
    w, h = spec.width, spec.height
    g = _rng(spec.seed, 1)
    r = min(g.uniform(0.125, 0.235) * w, 0.40 * h)
    rx, ry = r, r * g.uniform(0.82, 1.0)
    tilt = g.uniform(-0.35, 0.35)
    harm = tuple((k, float(g.uniform(0.0, 0.03)), float(g.uniform(0.0, _TAU))) for k in (2, 3, 4))
    ext = (1.0 + sum(a for _, a, _ in harm)) * rx
    mx = max(0.0, min(0.12 * w, w / 2 - ext - 0.02 * w))
    my = max(0.0, min(0.08 * h, h / 2 - ext - 0.08 * h))
    cx, cy = w / 2 + g.uniform(-1, 1) * mx, h / 2 + g.uniform(-1, 1) * my
    disc = _Blob(cx, cy, rx, ry, tilt, harm)

    ox, oy = cx + g.uniform(-0.08, 0.08) * rx, cy + g.uniform(-0.08, 0.08) * ry
    rs = g.uniform(0.28, 0.45) * rx
    scj_h = tuple((k, float(g.uniform(0.03, 0.1)), float(g.uniform(0.0, _TAU))) for k in (2, 3, 4, 5))
    scj = _Blob(ox, oy, rs, rs * g.uniform(0.75, 1.0), g.uniform(0.0, math.pi), scj_h)
    oa = g.uniform(0.05, 0.11) * rx
    os_ab = (oa, oa * g.uniform(0.18, 0.75))
    os_angle = g.uniform(-0.5, 0.5)

    tb = bool(g.random() < 0.75)
    c1, c2 = g.uniform(0.1, 0.6), g.uniform(0.1, 0.6)
    len_a, len_b = (w, h) if tb else (h, w)
    gap1, gap2 = g.uniform(0.015, 0.06) * len_b, g.uniform(0.015, 0.06) * len_b
    xs, ys = disc.outline()
    pa, pb = (xs, ys) if tb else (ys, xs)
    ca = cx if tb else cy
    bend = ((pa - ca) / len_a) ** 2 * len_b
    b1 = float((pb + c1 * bend).min()) - gap1
    b2 = float((pb - c2 * bend).max()) + gap2

    light = (cx + g.uniform(-0.05, 0.05) * w, cy + g.uniform(-0.05, 0.05) * h)
    vignette = (g.uniform(0.55, 0.7), g.uniform(0.95, 1.08))
    return _Layout(
        disc=disc,
        scj=scj,
        os_xy=(ox, oy),
        os_ab=os_ab,
        os_angle=os_angle,
        blades_tb=tb,
        blade_edge=(b1, c1, b2, c2, ca),
        blade_phase=g.uniform(0.0, _TAU),
        light=light,
        vignette=vignette,
        fold_period=g.uniform(40.0, 75.0) * s,
    )


def _blade_sd(lay: _Layout, x: F32, y: F32, width: int, height: int) -> F32:
    """Signed distance (px) to the nearer blade edge: > 0 on metal, < 0 on tissue."""
    b1, c1, b2, c2, ca = lay.blade_edge
    a, b, len_a, len_b = (x, y, width, height) if lay.blades_tb else (y, x, height, width)
    t = (a - np.float32(ca)) * np.float32(1.0 / len_a)
    bend = t * t * np.float32(len_b)
    slope = np.abs(t) * np.float32(2.0 * len_b / len_a)
    norm = 1.0 / np.sqrt(1.0 + slope * slope * np.float32(max(c1, c2) ** 2))
    sd1 = (np.float32(b1) - np.float32(c1) * bend) - b
    sd2 = b - (np.float32(b2) + np.float32(c2) * bend)
    return _f32((np.maximum(sd1, sd2) * norm).astype(np.float32, copy=False))


# Stage palettes (BGR at full light): tissue base, blood-rich tissue, patch (acetowhite / iodine-unstained).
_PALETTES: dict[str, tuple[tuple[float, float, float], ...]] = {
    "saline": ((160, 152, 235), (62, 50, 180), (160, 152, 235)),
    "acetic": ((175, 170, 235), (75, 62, 185), (215, 218, 232)),
    "iodine": ((60, 112, 190), (32, 50, 120), (95, 200, 232)),
}
_METAL = (192.0, 192.0, 200.0)
# Green (red-free) filter: luminance of mostly the green band, shown in greens.
_GREEN = np.outer(np.array([0.6, 1.22, 0.5]), np.array([0.06, 0.84, 0.10]))


def _colour_matrix(stage: str, brightness: float) -> F32:
    """3x4 matrix from (L*(1-A), L*H*(1-A), L*A, metal) to BGR."""
    base, blood, patch = _PALETTES["saline" if stage == "green" else stage]
    m = np.array(
        [[base[i], blood[i] - base[i], patch[i], _METAL[i]] for i in range(3)],
        dtype=np.float64,
    )
    if stage == "green":
        m = _GREEN @ m
    return (m * brightness).astype(np.float32)


# ----------------------------------------------------------------------------------- colposcope scene


def _vessels(
    rng: np.random.Generator,
    disc: _Blob,
    n: int,
    steps: int,
    rho: tuple[float, float],
    step_px: tuple[float, float],
    turn: float,
) -> npt.NDArray[np.int32]:
    """Random-walk vessel polylines (n, steps+1, 2) in 1/16 px fixed point."""
    r0 = rng.uniform(rho[0], rho[1], n)
    th0 = rng.uniform(0.0, _TAU, n)
    c, s = math.cos(disc.tilt), math.sin(disc.tilt)
    u, v = r0 * np.cos(th0) * disc.rx, r0 * np.sin(th0) * disc.ry
    start = np.stack([disc.cx + u * c - v * s, disc.cy + u * s + v * c], axis=1)
    heading0 = th0 + disc.tilt + rng.choice([-0.5 * math.pi, 0.5 * math.pi], n) + rng.normal(0, 0.6, n)
    step = rng.uniform(step_px[0], step_px[1], n)
    heading = heading0[:, None] + np.cumsum(rng.normal(0.0, turn, (n, steps)), axis=1)
    moves = step[:, None, None] * np.stack([np.cos(heading), np.sin(heading)], axis=2)
    pts = np.concatenate([start[:, None, :], start[:, None, :] + np.cumsum(moves, axis=1)], axis=1)
    return np.round(pts * 16.0).astype(np.int32)


def _vessel_mask(spec: SceneSpec, lay: _Layout, s: float) -> U8:
    rng = _rng(spec.seed, 4)
    mask = np.zeros((spec.height, spec.width), dtype=np.uint8)
    groups: list[tuple[npt.NDArray[np.int32], float, tuple[float, float]]] = []
    wall_rho = (1.08, 2.3) if spec.cervix else (0.3, 2.3)
    # (polylines, thickness px, contrast range)
    major = _vessels(rng, lay.disc, 16, 22, (0.25, 0.95), (6 * s, 12 * s), 0.3)
    fine = _vessels(rng, lay.disc, 110, 10, (0.05, 0.97), (2.5 * s, 5 * s), 0.5)
    wall = _vessels(rng, lay.disc, 26, 26, wall_rho, (8 * s, 16 * s), 0.25)
    if spec.cervix:
        groups += [(major, 2.0 * s, (0.45, 0.8)), (fine, 1.0 * s, (0.35, 0.75))]
    groups.append((wall, 1.6 * s, (0.3, 0.55)))
    for lines, thick, (lo, hi) in groups:
        t = max(1, round(thick))
        values = rng.uniform(lo, hi, len(lines)) * 255.0
        for poly, val in zip(lines, values, strict=True):
            cv2.polylines(mask, [poly.reshape(-1, 1, 2)], False, int(val), t, cv2.LINE_AA, 4)
    return mask


def _axpy(a: float, x: F32, y: F32) -> None:
    """y += a * x, in place."""
    cv2.scaleAdd(x, float(a), y, dst=y)


def _affine(x: F32, a: float, b: float, lo: float | None = None, hi: float | None = None) -> F32:
    """x * a + b (optionally clipped), in place; returns x."""
    x *= np.float32(a)
    x += np.float32(b)
    if lo is not None or hi is not None:
        np.clip(x, lo, hi, out=x)
    return x


def _low_fields(spec: SceneSpec, lay: _Layout, s: float, grid: _Grid) -> dict[str, F32]:
    """Smooth fields on the low-resolution grid: light, vignette, folds, dome, fornix, blades, patches."""
    width, height = spec.width, spec.height
    gx, gy = grid.x, grid.y
    t = _rng(spec.seed, 2)
    n_warp = _smooth_noise(t, grid.h, grid.w, 60)
    n_fold = _smooth_noise(t, grid.h, grid.w, 35)
    n48 = _smooth_noise(t, grid.h, grid.w, 12)
    n12 = _smooth_noise(t, grid.h, grid.w, 3)
    n_aceto = _smooth_noise(t, grid.h, grid.w, 10)
    n_iod = _smooth_noise(t, grid.h, grid.w, 14)
    n_metal = _smooth_noise(t, grid.h, grid.w, 25)
    diag = math.hypot(width, height)

    rho = lay.disc.rho(gx, gy)
    dl = np.hypot(gx - np.float32(lay.light[0]), gy - np.float32(lay.light[1])) * np.float32(2 / diag)
    illum = 1.1 - 0.35 * np.minimum(dl, 1.0) ** 2
    rn = np.hypot(gx - np.float32(width / 2), gy - np.float32(height / 2)) * np.float32(2 / diag)
    vig = 0.03 + 0.97 * (1.0 - _smoothstep(rn.astype(np.float32), *lay.vignette))
    sd = _blade_sd(lay, gx, gy, width, height)
    blade_shadow = 1.0 - 0.5 * np.exp(np.minimum(sd, 0.0) * np.float32(1 / (12 * s)))
    light = illum * vig * blade_shadow

    # Vaginal wall: transverse folds (rugae), wobbly and of varying depth; valleys darker and redder.
    sx, sy = (0.8, 1.25) if lay.blades_tb else (1.25, 0.8)
    dc = np.hypot((gx - np.float32(lay.disc.cx)) * sx, (gy - np.float32(lay.disc.cy)) * sy)
    fold = 0.5 + 0.5 * np.sin(dc * np.float32(_TAU / lay.fold_period) + 3.0 * n_warp + 0.8 * n48)
    depth = 0.35 * np.clip(0.65 + 0.35 * n_fold, 0.2, 1.0)
    valley = 1.0 - np.abs(fold) ** 0.7
    lum_w = 0.9 * (1.0 - depth * valley) * (1 + 0.07 * n48 + 0.05 * n12)
    hb_w = 0.55 + 0.2 * depth * valley + 0.06 * n48 + 0.04 * n12
    if spec.cervix:
        # the fornix: a shadow ring around the cervix (continuous under the disc: no steps to upsample)
        fornix = 1.0 - 0.6 * np.exp(-((np.maximum(rho - 1.0, 0.0) / 0.2) ** 2))
        lum_w = lum_w * fornix
        dome = 0.55 + 0.45 * np.clip(1.0 - rho * rho, 0.0, 1.0) ** 0.35
        lum_c = dome * (1 + 0.05 * n48 + 0.04 * n12)
        hb_c = 0.2 + 0.08 * n48 + 0.05 * n12 + 0.12 * np.minimum(rho, 1.0) ** 2
    else:  # the canal folds away into a dark lumen where the cervix would be
        lum_w = lum_w * (1.0 - 0.85 * np.exp(-((rho / 0.45) ** 2)))
        lum_c, hb_c = lum_w, hb_w

    out = {
        "rho": rho,
        "rho2": rho * rho,  # near-quadratic, so bilinear upsampling keeps the outline smooth to ~0.01 px
        "sd": sd,
        "lum_w": lum_w * light,
        "dlum": (lum_c - lum_w) * light,
        "hb_w": hb_w,
        "dhb": hb_c - hb_w,
    }
    if spec.cervix and spec.stage in ("acetic", "iodine"):
        rho_s = lay.scj.rho(gx, gy)
        ring = np.exp(-(((rho_s - 1.0) / 0.5) ** 2))
        inside = _ramp(-rho, -0.92, -0.82)
        if spec.stage == "acetic":  # acetowhite patches in the transformation zone
            patch = _ramp(n_aceto, 0.1, 0.45) * ring * 0.85
        else:  # iodine: a yellowish unstained patch, and the columnar area does not stain
            patch = np.maximum(_ramp(n_iod, -0.2, 0.2) * ring, 0.5 * _ramp(-rho_s, -1.0, -0.85)) * 0.9
        out["patch"] = patch * inside

    # Speculum metal: bright rolled lip near the edge, cylindrical reflection bands, faint smudges.
    along = gx if lay.blades_tb else gy
    len_a, len_b = (width, height) if lay.blades_tb else (height, width)
    tdepth = sd * np.float32(1.0 / (0.12 * len_b))
    metal = (
        0.5
        + 0.35 * np.exp(-(((tdepth - 0.08) / 0.1) ** 2))
        + 0.08 * np.cos(tdepth * np.float32(_TAU * 0.7) + np.float32(lay.blade_phase))
        + 0.06 * np.sin(along * np.float32(_TAU / (0.6 * len_a)) + np.float32(lay.blade_phase))
        + 0.025 * n_metal
    )
    out["metal"] = metal * illum * vig
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}


@dataclass(frozen=True)
class _Patch:
    """A local change to the tissue fields: lum *= lum_mul, hb += hb_add over ``box`` (x0, y0, x1, y1)."""

    box: tuple[int, int, int, int]
    lum_mul: F32
    hb_add: F32

    def apply(self, r0: int, r1: int, lum: F32, hb: F32) -> None:
        x0, y0, x1, y1 = self.box
        a, b = max(r0, y0), min(r1, y1)
        if a < b:
            lum[a - r0 : b - r0, x0:x1] *= self.lum_mul[a - y0 : b - y0]
            hb[a - r0 : b - r0, x0:x1] += self.hb_add[a - y0 : b - y0]


def _scj_patch(spec: SceneSpec, lay: _Layout, s: float, rng: np.random.Generator) -> _Patch | None:
    """The columnar / transformation-zone region around the os: redder, rougher, with grape-like grain."""
    box = _crop(lay.scj.bbox(pad=4 * s), spec.width, spec.height)
    if box is None:
        return None
    x0, y0, x1, y1 = box
    x, y = _crop_grid(box)
    k = lay.scj.rx / (1.5 * s)
    m = _ramp(-lay.scj.rho(x, y), -1.0 - 0.5 / k, -1.0 + 0.5 / k)
    ch, cw = y1 - y0, x1 - x0
    grain = np.zeros((ch, cw), dtype=np.float32)
    for cell, amp in ((2.2 * s, 0.7), (6.0 * s, 0.5)):
        coarse = rng.standard_normal((int(ch / cell) + 3, int(cw / cell) + 3), dtype=np.float32)
        grain += np.float32(amp) * cv2.resize(coarse, (cw, ch), interpolation=cv2.INTER_CUBIC)
    np.clip(grain * np.float32(2.0), -1.0, 1.0, out=grain)
    lum_mul = 1.0 + m * (0.12 * grain - 0.06)
    hb_add = m * (0.3 + 0.14 * grain)
    return _Patch(box, lum_mul.astype(np.float32), hb_add.astype(np.float32))


def _os_patch(lay: _Layout, s: float, width: int, height: int) -> _Patch | None:
    """The external os: a dark slit / small ellipse, deepest in the middle, with a soft shadow."""
    a, b = lay.os_ab
    ox, oy = lay.os_xy
    box = _crop((ox - 3 * a, oy - 3 * a, ox + 3 * a, oy + 3 * a), width, height)
    if box is None:
        return None
    x, y = _crop_grid(box)
    c, sn = math.cos(lay.os_angle), math.sin(lay.os_angle)
    dx, dy = x - np.float32(ox), y - np.float32(oy)
    u = (dx * np.float32(c) + dy * np.float32(sn)) / np.float32(a)
    v = (dy * np.float32(c) - dx * np.float32(sn)) / np.float32(b)
    d = np.hypot(u, v)
    core = np.clip((1.0 - d) * (b / (1.0 * s)) + 0.5, 0.0, 1.0)
    deep = core * (0.55 + 0.33 * np.clip(1.0 - d * d, 0.0, 1.0))
    halo = np.exp(-np.maximum(d - 1.0, 0.0) * 1.5) * (1.0 - core)
    lum_mul = 1.0 - deep - 0.35 * halo
    hb_add = 0.5 * core + 0.15 * halo
    return _Patch(box, lum_mul.astype(np.float32), hb_add.astype(np.float32))


_STRIP = 64  # rows per strip of the full-resolution pass (keeps temporaries in cache, avoids page faults)


def _paint_colposcope(spec: SceneSpec, lay: _Layout, s: float) -> tuple[F32, F32]:
    """Float32 BGR image (brightness applied) and the low-resolution cervix ``rho`` field."""
    width, height = spec.width, spec.height
    grid = _Grid.of(width, height)
    lo = _low_fields(spec, lay, s, grid)
    f = _rng(spec.seed, 3)
    fields = {k: _Rows(v, grid.q, width) for k, v in lo.items()}
    cell = max(1, round(1.8 * s))  # near-pixel mottling
    mid = _Rows(f.standard_normal((-(-height // cell), int(width / cell) + 2), dtype=np.float32), cell, width)
    # brushed metal: streaks along the blade
    sc = (1, 30) if lay.blades_tb else (30, 1)
    streak_lo = f.standard_normal((-(-height // sc[0]), -(-width // sc[1]) + 1), dtype=np.float32)
    streak = _Rows(streak_lo, sc[0], width)
    vessels = _vessel_mask(spec, lay, s)
    patches = [_scj_patch(spec, lay, s, f), _os_patch(lay, s, width, height)] if spec.cervix else []
    mat = _colour_matrix(spec.stage, spec.brightness)
    k_disc = lay.disc.rx / (1.2 * s)
    has_patch = "patch" in lo

    img = np.empty((height, width, 3), dtype=np.float32)
    buf = np.empty((2, _STRIP, width), dtype=np.float32)
    planes = np.empty((3, _STRIP, width), dtype=np.float32)
    for r0 in range(0, height, _STRIP):
        r1 = min(height, r0 + _STRIP)
        n = r1 - r0
        tmp, fine = buf[0, :n], buf[1, :n]
        lum = fields["lum_w"].rows(r0, r1)
        hb = fields["hb_w"].rows(r0, r1)
        if spec.cervix:  # blend in the cervix through its sharp, anti-aliased outline
            cmask = _affine(fields["rho2"].rows(r0, r1), -k_disc / 2, k_disc / 2 + 0.5, 0.0, 1.0)
            lum += cv2.multiply(fields["dlum"].rows(r0, r1), cmask, dst=tmp)
            hb += cv2.multiply(fields["dhb"].rows(r0, r1), cmask, dst=tmp)

        # Mucosal mottling at pixel and near-pixel scale (coarser scales live in the low-res fields).
        _gauss(f, n, width, dst=fine)
        tex = mid.rows(r0, r1)
        tex *= np.float32(0.04)
        _axpy(0.022, fine, tex)
        lum += cv2.multiply(lum, tex, dst=tmp)
        _axpy(-0.35, tex, hb)
        # Vessels: darker and bloodier.
        np.multiply(vessels[r0:r1], np.float32(1.0 / 255.0), out=tmp)
        _axpy(0.9, tmp, hb)
        lum *= _affine(tmp, -0.3, 1.0)
        for p in patches:
            if p is not None:
                p.apply(r0, r1, lum, hb)
        np.clip(hb, 0.0, 1.35, out=hb)

        # Speculum blades: brushed metal with a bright rolled lip along the edge.
        sd = fields["sd"].rows(r0, r1)
        blade = _affine(np.multiply(sd, np.float32(1.0 / (0.9 * s)), out=tmp), 1.0, 0.5, 0.0, 1.0)
        shine = streak.rows(r0, r1)
        shine *= np.float32(0.05)
        _axpy(0.03, fine, shine)
        rim = _affine(np.abs(_affine(sd, 1.0, -2.5 * s), out=sd), -1.0 / (1.2 * s), 1.0, 0.0, 1.0)
        _axpy(0.45, rim, shine)
        shine += np.float32(1.0)
        metal = fields["metal"].rows(r0, r1)
        metal *= shine
        metal *= blade
        lum *= _affine(blade, -1.0, 1.0)  # tissue shows where there is no metal

        lum_hb = _f32(cv2.multiply(lum, hb, dst=hb))
        lum_patch = None
        if has_patch:
            patch = fields["patch"].rows(r0, r1)
            lum_patch = _f32(cv2.multiply(lum, patch, dst=tex))
            _affine(patch, -1.0, 1.0)
            lum *= patch
            lum_hb *= patch
        for i in range(3):
            plane = _f32(cv2.addWeighted(lum, float(mat[i, 0]), lum_hb, float(mat[i, 1]), 0.0, dst=planes[i, :n]))
            _axpy(float(mat[i, 3]), metal, plane)
            if lum_patch is not None:
                _axpy(float(mat[i, 2]), lum_patch, plane)
        cv2.merge([planes[0, :n], planes[1, :n], planes[2, :n]], dst=img[r0:r1])
    _paint_glints(spec, lay, s, img)
    return img, lo["rho"]


def _paint_glints(spec: SceneSpec, lay: _Layout, s: float, img: F32) -> None:
    """Small specular highlights on the wet tissue (mostly on the dome)."""
    rng = _rng(spec.seed, 5)
    n_c, n_w = int(rng.integers(6, 15)), int(rng.integers(2, 7))
    rho = np.concatenate([rng.uniform(0.05, 0.85, n_c), rng.uniform(1.15, 2.0, n_w)])
    th = rng.uniform(0.0, _TAU, rho.size)
    size = rng.uniform(1.5, 6.5, rho.size) * s
    elong = rng.uniform(0.3, 1.0, rho.size)
    ang = rng.uniform(0.0, math.pi, rho.size)
    if not spec.cervix:
        rho, th, size, elong, ang = rho[n_c:], th[n_c:], size[n_c:], elong[n_c:], ang[n_c:]
    d = lay.disc
    c, sn = math.cos(d.tilt), math.sin(d.tilt)
    u, v = rho * np.cos(th) * d.rx, rho * np.sin(th) * d.ry
    px, py = d.cx + u * c - v * sn, d.cy + u * sn + v * c
    white = np.array([250.0, 250.0, 250.0]) * 1.08 * spec.brightness
    if spec.stage == "green":
        white = _GREEN @ white
    target = white.astype(np.float32)
    height, width = img.shape[:2]
    for gx, gy, a, e, an in zip(px, py, size, elong, ang, strict=True):
        box = _crop((gx - 2.5 * a, gy - 2.5 * a, gx + 2.5 * a, gy + 2.5 * a), width, height)
        if box is None:
            continue
        x, y = _crop_grid(box)
        ca, sa = math.cos(an), math.sin(an)
        uu = ((x - np.float32(gx)) * np.float32(ca) + (y - np.float32(gy)) * np.float32(sa)) / np.float32(a)
        vv = ((y - np.float32(gy)) * np.float32(ca) - (x - np.float32(gx)) * np.float32(sa)) / np.float32(a * e)
        r2 = uu * uu + vv * vv
        gl = np.minimum(np.clip(1.6 * (1.0 - r2), 0.0, 1.0) + 0.25 * np.exp(-r2 / 2.5), 1.0)
        x0, y0, x1, y1 = box
        crop = img[y0:y1, x0:x1]
        crop += gl[..., None].astype(np.float32) * (target - crop)


# ---------------------------------------------------------------------------------------- desk scene

_DESK_COLOURS: tuple[tuple[int, int, int], ...] = (
    (170, 95, 40),  # blue
    (70, 140, 60),  # green
    (40, 185, 220),  # yellow
    (45, 45, 50),  # black
    (120, 80, 120),  # purple
    (60, 95, 190),  # muted red-orange
    (200, 200, 195),  # light grey
)


def _rect(cx: float, cy: float, w: float, h: float, ang: float) -> npt.NDArray[np.float64]:
    c, s = math.cos(ang), math.sin(ang)
    corners = np.array([[-w, -h], [w, -h], [w, h], [-w, h]]) * 0.5
    rot = np.array([[c, -s], [s, c]])
    return cast(npt.NDArray[np.float64], corners @ rot.T + np.array([cx, cy]))


def _fx(pts: npt.NDArray[np.float64]) -> npt.NDArray[np.int32]:
    return np.round(pts * 16.0).astype(np.int32).reshape(-1, 1, 2)


def _paint_desk(spec: SceneSpec, s: float) -> F32:
    """An unrelated everyday scene: a grey desk from above with a book, printed paper, a mug, a pen."""
    width, height = spec.width, spec.height
    grid = _Grid.of(width, height)
    d = _rng(spec.seed, 6)
    ang0 = d.uniform(0.0, _TAU)
    gx = grid.x * np.float32(1.0 / width) - 0.5
    gy = grid.y * np.float32(1.0 / height) - 0.5
    light = 0.82 + 0.25 * (gx * math.cos(ang0) + gy * math.sin(ang0)) - 0.45 * (gx * gx + gy * gy)
    light = (light + 0.04 * _smooth_noise(d, grid.h, grid.w, 50)).astype(np.float32)

    # Objects: (kind, polygon or circle params, colour)
    shapes: list[tuple[str, npt.NDArray[np.float64], tuple[int, int, int]]] = []
    ref = min(width, height)

    def spot() -> tuple[float, float]:
        return d.uniform(0.12, 0.88) * width, d.uniform(0.12, 0.88) * height

    px, py = spot()
    paper = _rect(px, py, 0.32 * ref, 0.42 * ref, d.uniform(-0.6, 0.6))
    shapes.append(("paper", paper, (232, 236, 238)))
    for _ in range(int(d.integers(1, 3))):
        bx, by = spot()
        col = _DESK_COLOURS[int(d.integers(0, len(_DESK_COLOURS)))]
        shapes.append(
            ("book", _rect(bx, by, d.uniform(0.22, 0.38) * ref, d.uniform(0.3, 0.45) * ref, d.uniform(0, math.pi)), col)
        )
    mx, my = spot()
    mug_col = _DESK_COLOURS[int(d.integers(0, len(_DESK_COLOURS)))]
    shapes.append(("mug", np.array([[mx, my, d.uniform(0.07, 0.1) * ref]]), mug_col))
    qx, qy = spot()
    shapes.append(("pen", _rect(qx, qy, 0.3 * ref, 0.018 * ref, d.uniform(0, math.pi)), (120, 40, 20)))
    if d.random() < 0.6:
        tx, ty = spot()
        r = d.uniform(0.08, 0.14) * ref
        a = d.uniform(0, _TAU)
        tri = np.array([[tx + r * math.cos(a + k * _TAU / 3), ty + r * math.sin(a + k * _TAU / 3)] for k in range(3)])
        shapes.append(("tri", tri, _DESK_COLOURS[int(d.integers(0, len(_DESK_COLOURS)))]))

    # Soft drop shadows at low resolution.
    shadow = np.zeros((grid.h, grid.w), dtype=np.uint8)
    off = np.array([0.012 * ref, 0.018 * ref])
    lo_scale = np.array([grid.w / width, 1.0 / grid.q])
    for kind, geo, _ in shapes:
        if kind == "mug":
            c = (geo[0, :2] + off) * lo_scale * 16
            cv2.circle(shadow, (round(c[0]), round(c[1])), round(geo[0, 2] * lo_scale[0] * 16), 255, -1, cv2.LINE_AA, 4)
        else:
            cv2.fillPoly(shadow, [_fx((geo + off) * lo_scale)], 255, cv2.LINE_AA, 4)
    shade = cv2.GaussianBlur(shadow.astype(np.float32) / 255.0, (0, 0), 0.01 * ref * lo_scale[0] + 0.5)
    base_col = np.array([146.0, 146.0, 142.0]) * d.uniform(0.9, 1.1)
    desk_lo = ((light * (1.0 - 0.45 * shade))[..., None] * base_col).astype(np.float32)

    obj = np.zeros((height, width, 3), dtype=np.uint8)
    alpha = np.zeros((height, width), dtype=np.uint8)
    thick = max(1, round(2 * s))
    for kind, geo, col in shapes:
        if kind == "mug":
            cx, cy, r = geo[0]
            ctr = (round(cx * 16), round(cy * 16))
            hx, hy = cx + r * 1.05, cy
            cv2.fillPoly(obj, [_fx(_rect(hx, hy, 0.5 * r, 0.25 * r, 0.0))], col, cv2.LINE_AA, 4)
            cv2.fillPoly(alpha, [_fx(_rect(hx, hy, 0.5 * r, 0.25 * r, 0.0))], 255, cv2.LINE_AA, 4)
            cv2.circle(obj, ctr, round(r * 16), col, -1, cv2.LINE_AA, 4)
            cv2.circle(alpha, ctr, round(r * 16), 255, -1, cv2.LINE_AA, 4)
            cv2.circle(obj, ctr, round(r * 0.82 * 16), (30, 45, 70), -1, cv2.LINE_AA, 4)  # coffee
            cv2.circle(
                obj,
                (round((cx - 0.3 * r) * 16), round((cy - 0.3 * r) * 16)),
                round(r * 0.12 * 16),
                (150, 170, 190),
                -1,
                cv2.LINE_AA,
                4,
            )
            continue
        cv2.fillPoly(obj, [_fx(geo)], col, cv2.LINE_AA, 4)
        cv2.fillPoly(alpha, [_fx(geo)], 255, cv2.LINE_AA, 4)
        if kind == "paper":  # lines of "words"
            o, ex, ey = geo[0], geo[1] - geo[0], geo[3] - geo[0]
            words = []
            for row in np.arange(0.08, 0.92, 0.035):
                xpos = 0.1
                while xpos < 0.85:
                    ln = d.uniform(0.03, 0.12)
                    a, b = o + ex * xpos + ey * row, o + ex * min(xpos + ln, 0.9) + ey * row
                    words.append(_fx(np.array([a, b])))
                    xpos += ln + d.uniform(0.015, 0.03)
            cv2.polylines(obj, words, False, (50, 45, 40), thick, cv2.LINE_AA, 4)
        elif kind == "book":  # spine band and a title label
            o, ex, ey = geo[0], geo[1] - geo[0], geo[3] - geo[0]
            spine = np.array([o, o + ex * 0.12, o + ex * 0.12 + ey, o + ey])
            cv2.fillPoly(obj, [_fx(spine)], tuple(int(c * 0.7) for c in col), cv2.LINE_AA, 4)
            label = np.array(
                [o + ex * 0.3 + ey * 0.15, o + ex * 0.85 + ey * 0.15, o + ex * 0.85 + ey * 0.3, o + ex * 0.3 + ey * 0.3]
            )
            cv2.fillPoly(obj, [_fx(label)], (225, 230, 230), cv2.LINE_AA, 4)

    # Composite in row strips: laminate grain on the desk, fine texture and light on everything.
    f = _rng(spec.seed, 3)
    desk_rows = _Rows(desk_lo, grid.q, width)
    light_rows = _Rows(light, grid.q, width)
    grain_rows = _Rows(f.standard_normal((height, int(width / 50) + 2), dtype=np.float32), 1, width)
    img = np.empty((height, width, 3), dtype=np.float32)
    for r0 in range(0, height, _STRIP):
        r1 = min(height, r0 + _STRIP)
        fine = _gauss(f, r1 - r0, width, 0.03)
        fine += np.float32(1.0)
        desk = desk_rows.rows(r0, r1)
        grain = grain_rows.rows(r0, r1)
        grain *= np.float32(0.04)
        grain += fine
        desk *= grain[..., None]
        lit = light_rows.rows(r0, r1)
        lit *= fine
        things = obj[r0:r1].astype(np.float32)
        things *= lit[..., None]
        things -= desk
        things *= (alpha[r0:r1] * np.float32(1.0 / 255.0))[..., None]
        desk += things
        np.multiply(desk, np.float32(spec.brightness), out=img[r0:r1])
    return img


# --------------------------------------------------------------------------------------- blur & noise


def _disk_kernel(radius: float) -> F32:
    r = math.ceil(radius)
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    k = np.clip(radius + 0.5 - np.hypot(xx, yy), 0.0, 1.0).astype(np.float32)
    return _f32(k / k.sum())


def _line_kernel(length: float, angle: float) -> F32:
    r = math.ceil(length / 2) + 1
    ss = 8
    n = (2 * r + 1) * ss
    canvas = np.zeros((n, n), dtype=np.uint8)
    c = n / 2.0
    dx, dy = math.cos(angle) * length / 2 * ss, math.sin(angle) * length / 2 * ss
    p0 = (round((c - dx) * 16), round((c - dy) * 16))
    p1 = (round((c + dx) * 16), round((c + dy) * 16))
    cv2.line(canvas, p0, p1, 255, ss, cv2.LINE_AA, 4)
    k = cv2.resize(canvas.astype(np.float32), (2 * r + 1, 2 * r + 1), interpolation=cv2.INTER_AREA)
    return _f32(k / k.sum())


_DIRECT_AREA = 121  # OpenCV's filter2D switches to a DFT for kernels larger than this (area)
_SPLIT_AREA = 250  # below this many taps in all, direct row bands beat the DFT


def _filter(img: F32, kernel: F32) -> F32:
    """``cv2.filter2D(img, -1, kernel, borderType=BORDER_REFLECT_101)``, same result; small kernels above
    OpenCV's DFT threshold (e.g. a 13x13 disk, a motion line) are run as row bands with their zero columns
    trimmed, each small enough for the direct path, which is 2-4x faster there."""
    kh, kw = kernel.shape
    if kh * kw <= _DIRECT_AREA:
        return _f32(cv2.filter2D(img, -1, kernel, borderType=cv2.BORDER_REFLECT_101))
    cols = [np.flatnonzero(row) for row in kernel]
    bands: list[tuple[int, int, int, int]] = []
    a = 0
    while a < kh:
        if cols[a].size == 0:
            a += 1
            continue
        b, c0, c1 = a + 1, int(cols[a][0]), int(cols[a][-1]) + 1
        while b < kh and cols[b].size:
            n0, n1 = min(c0, int(cols[b][0])), max(c1, int(cols[b][-1]) + 1)
            if (b + 1 - a) * (n1 - n0) > _DIRECT_AREA:
                break
            b, c0, c1 = b + 1, n0, n1
        bands.append((a, b, c0, c1))
        a = b
    if sum((b - a) * (c1 - c0) for a, b, c0, c1 in bands) > _SPLIT_AREA:
        return _f32(cv2.filter2D(img, -1, kernel, borderType=cv2.BORDER_REFLECT_101))
    h, w = img.shape[:2]
    ry, rx = kh // 2, kw // 2
    padded = cv2.copyMakeBorder(img, ry, ry, rx, rx, cv2.BORDER_REFLECT_101)
    acc: F32 | None = None
    for a, b, c0, c1 in bands:
        src = padded[a : a + h + b - a - 1, c0 : c0 + w + c1 - c0 - 1]
        sub = kernel[a:b, c0:c1]
        part = _f32(cv2.filter2D(src, -1, sub, anchor=(0, 0), borderType=cv2.BORDER_REFLECT_101))
        if acc is None:
            acc = np.ascontiguousarray(part[:h, :w])
        else:
            cv2.add(acc, part[:h, :w], dst=acc)
    assert acc is not None
    return acc


def _develop(spec: SceneSpec, img: F32, rho_lo: F32, lay: _Layout) -> U8:
    """Optics then sensor: blur as asked, add Gaussian noise, round and clip to uint8.  Runs in row strips
    (each blurred with its kernel margin, so the result equals whole-image filtering) to keep temporaries
    small.  ``rho_lo``: the low-resolution cervix field, for the soft mask of ``cervix_defocus``."""
    h, w = img.shape[:2]
    kernel: F32 | None = None
    if spec.blur == "motion":
        kernel = _line_kernel(spec.blur_px, _rng(spec.seed, 7).uniform(0.0, math.pi))
    elif spec.blur != "none":
        kernel = _disk_kernel(spec.blur_px)
    ry = 0 if kernel is None else kernel.shape[0] // 2
    # cervix_defocus: blur a box around the disc only, blended in where rho < 1.15 (soft from 1.03)
    cbox = None
    rho_rows = None
    if spec.blur == "cervix_defocus":
        cbox = _crop(lay.disc.bbox(scale=1.15, pad=ry + 2), w, h)
        rho_rows = _Rows(rho_lo, _Grid.of(w, h).q, w)
    out = np.empty((h, w, 3), dtype=np.uint8)
    rng = _rng(spec.seed, 8)
    step = max(_STRIP, 8 * ry)
    noise = np.empty((step, w * 3), dtype=np.float32)
    for r0 in range(0, h, step):
        r1 = min(h, r0 + step)
        n = r1 - r0
        if kernel is not None and cbox is None:
            a, b = max(0, r0 - ry), min(h, r1 + ry)
            src = _filter(img[a:b], kernel)[r0 - a : r0 - a + n]
        else:
            src = img[r0:r1]
        if kernel is not None and cbox is not None and rho_rows is not None:
            x0, y0, x1, y1 = cbox
            a, b = max(r0, y0), min(r1, y1)
            if a < b:
                ea, eb = max(y0, a - ry), min(y1, b + ry)
                blurred = _filter(np.ascontiguousarray(img[ea:eb, x0:x1]), kernel)[a - ea : b - ea]
                mask = _ramp(-rho_rows.rows(a, b)[:, x0:x1], -1.15, -1.03)
                src = src.copy()
                sharp = src[a - r0 : b - r0, x0:x1]
                blurred -= sharp
                blurred *= mask[..., None]
                sharp += blurred
        if spec.noise > 0:
            nz = _gauss(rng, n, w * 3, spec.noise, dst=noise[:n]).reshape(n, w, 3)
            cv2.add(src, nz, dst=out[r0:r1], dtype=cv2.CV_8U)
        else:
            out[r0:r1] = np.clip(np.rint(src), 0, 255)
    return out


# ---------------------------------------------------------------------------------------------- API


def render(spec: SceneSpec) -> Scene:
    """Render one scene; deterministic for a given spec."""
    s = min(spec.width, spec.height) / 1200.0
    lay = _layout(spec, s)
    if spec.cervix or spec.seed % 2 == 0:
        img, rho_lo = _paint_colposcope(spec, lay, s)
    else:
        img = _paint_desk(spec, s)
        grid = _Grid.of(spec.width, spec.height)
        rho_lo = lay.disc.rho(grid.x, grid.y)  # cervix_defocus blurs where a cervix would be
    image = _develop(spec, img, rho_lo, lay)
    box: Box | None = None
    if spec.cervix:
        x0, y0, x1, y1 = lay.disc.bbox()
        w, h = spec.width, spec.height
        box = (
            min(max((x0 + 0.5) / w, 0.0), 1.0),
            min(max((y0 + 0.5) / h, 0.0), 1.0),
            min(max((x1 + 0.5) / w, 0.0), 1.0),
            min(max((y1 + 0.5) / h, 0.0), 1.0),
        )
    return Scene(image=image, cervix_box=box, spec=spec)


def speculum_mask(spec: SceneSpec) -> F32:
    """``[H, W]`` float32 in 0..1: where the speculum blades of ``render(spec)`` cover the view (metal = 1)."""
    s = min(spec.width, spec.height) / 1200.0
    lay = _layout(spec, s)
    grid = _Grid.of(spec.width, spec.height)
    sd = _Rows(_blade_sd(lay, grid.x, grid.y, spec.width, spec.height), grid.q, spec.width).rows(0, spec.height)
    return _affine(np.multiply(sd, np.float32(1.0 / (0.9 * s))), 1.0, 0.5, 0.0, 1.0)


def encode_jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    """Encode an 8-bit BGR (or grey) image as JPEG bytes."""
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise ValueError(f"expected an 8-bit HxW or HxWx3 image, got {image.dtype} {image.shape}")
    if not 1 <= quality <= 100:
        raise ValueError(f"quality must be 1..100, got {quality}")
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return bytes(buf.tobytes())


def standard_set(width: int = 1600, height: int = 1200) -> list[Scene]:
    """A small labelled set: sharp (one per stage), defocus, motion, cervix-only defocus, too dark,
    overexposed, and two without a cervix (wall + speculum; desk).  Blur sizes scale with the frame."""
    k = min(width, height) / 1200.0
    specs = [SceneSpec(width, height, stage=stage, seed=i) for i, stage in enumerate(_STAGES)]
    specs += [
        SceneSpec(width, height, blur="defocus", blur_px=6.0 * k, seed=10),
        SceneSpec(width, height, blur="motion", blur_px=14.0 * k, seed=11),
        SceneSpec(width, height, blur="cervix_defocus", blur_px=7.0 * k, seed=12),
        SceneSpec(width, height, brightness=0.22, seed=13),
        SceneSpec(width, height, brightness=2.4, seed=14),
        SceneSpec(width, height, cervix=False, seed=16),  # even seed: wall + speculum
        SceneSpec(width, height, cervix=False, seed=17),  # odd seed: desk
    ]
    return [render(sp) for sp in specs]
