"""Seeded synthetic abdominal CT with urinary stones and the mimics that fool detectors.

``generate_phantom(seed)`` draws an abdomen in patient coordinates (LPS, mm) and
renders it in HU: body outline, subcutaneous and visceral fat, abdominal wall
muscle, liver, spleen, kidneys with renal sinus and pelvis, ureters, bladder,
psoas, aorta, IVC and iliac vessels, lumbar spine and sacrum, ribs, iliac wings,
femoral heads, bowel loops with gas, faeces, fluid and dense content. Then:

- **stones**: 1-20 mm, 200-2000 HU, in the renal pelvis, along a ureter (with a
  dilated ureter above and a soft-tissue rim around it) or lying dependent in the
  bladder; rendered with partial volume (3x supersampling);
- **mimics**: pelvic phleboliths (round, often with a lucent centre), aortic and
  iliac wall calcifications, bone islands, dense pellets and contrast in bowel,
  streak artefacts;
- a point spread blur and correlated noise.

The same seed gives the same phantom. ``write_series`` writes it as a CT Image
Storage series with real geometry; ``real_anatomy_phantom`` inserts stones into
the real kidneys of the TotalSegmentator example CT in the shared data folder
(``shared_data_dir``)
(see ``REAL_CT_ATTRIBUTION``).

Ground truth: a voxel belongs to a stone when at least half of it is covered;
a stone too small for that still owns its most covered voxel.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from inference.volume import CT_IMAGE_STORAGE, Volume

logger = logging.getLogger(__name__)

REAL_CT_ATTRIBUTION = (
    "Real CT: TotalSegmentator test files (github.com/wasserth/TotalSegmentator, "
    "tests/reference_files/, Apache-2.0 repository; TotalSegmentator data set CC BY 4.0, "
    "Wasserthal et al., Radiology: AI 2023)."
)


def shared_data_dir() -> Path:
    """The project's shared data: ``$URONODE_SHARED_DATA``, else ``../shared/data`` beside the checkout."""
    env = os.environ.get("URONODE_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parent.parent.parent / "shared" / "data"


DEFAULT_REAL_DATA = shared_data_dir()
UID_ROOT = "1.2.826.0.1.3680043.10.1431."
"""Prefix for the generated UIDs (pydicom's registered root plus a project branch)."""

STONE_SITES = ("kidney", "ureter", "bladder")
MIMIC_KINDS = ("phlebolith", "vascular_calcification", "bone_island", "bowel_pellet", "streak")


@dataclass(frozen=True)
class Stone:
    """One inserted stone: its centre (LPS mm), largest diameter (mm), density and site."""

    center_mm: tuple[float, float, float]
    diameter_mm: float
    hu: float
    site: str
    side: str


@dataclass(frozen=True)
class Mimic:
    center_mm: tuple[float, float, float]
    size_mm: float
    hu: float
    kind: str


@dataclass(frozen=True, eq=False)
class Phantom:
    """A rendered synthetic (or stone-augmented real) CT with its ground truth."""

    hu: np.ndarray
    """float32 (slices, rows, columns), whole HU."""
    stone_labels: np.ndarray
    """int16, 0 = no stone, i + 1 = ``stones[i]``."""
    mimic_labels: np.ndarray
    """int16, 0 = none, i + 1 = ``mimics[i]`` (streaks are not labelled)."""
    stones: tuple[Stone, ...]
    mimics: tuple[Mimic, ...]
    origin_mm: tuple[float, float, float]
    """LPS position of voxel (0, 0, 0); slices run feet to head, rows anterior to posterior."""
    pixel_spacing: float
    slice_spacing: float
    seed: int
    study_instance_uid: str
    series_instance_uid: str
    frame_of_reference_uid: str
    description: str = "uronode synthetic abdomen"

    def sop_instance_uid(self, k: int) -> str:
        return f"{self.series_instance_uid}.{k + 1}"

    def to_volume(self) -> Volume:
        """The phantom as the ``Volume`` that loading its DICOM series would give."""
        n = self.hu.shape[0]
        positions = np.zeros((n, 3))
        positions[:, 0] = self.origin_mm[0]
        positions[:, 1] = self.origin_mm[1]
        positions[:, 2] = self.origin_mm[2] + np.arange(n) * self.slice_spacing
        return Volume(
            hu=self.hu,
            positions=positions,
            row_direction=(1.0, 0.0, 0.0),
            column_direction=(0.0, 1.0, 0.0),
            pixel_spacing=(self.pixel_spacing, self.pixel_spacing),
            slice_spacing=self.slice_spacing,
            frame_of_reference_uid=self.frame_of_reference_uid,
            study_instance_uid=self.study_instance_uid,
            series_instance_uid=self.series_instance_uid,
            sop_class_uid=CT_IMAGE_STORAGE,
            sop_instance_uids=tuple(self.sop_instance_uid(k) for k in range(n)),
            frame_numbers=(1,) * n,
            source_paths=("",) * n,
        )


def _uid(seed: int, *parts: object) -> str:
    """A deterministic UID under UID_ROOT (at most 64 characters)."""
    digest = int(hashlib.sha256(repr((seed, *parts)).encode()).hexdigest(), 16) % 10**18
    return f"{UID_ROOT}{seed}.{digest}"


@dataclass
class _Canvas:
    """The volume being painted and its voxel-centre coordinates (mm)."""

    hu: np.ndarray
    x: np.ndarray  # (columns,)
    y: np.ndarray  # (rows,)
    z: np.ndarray  # (slices,)
    stone_labels: np.ndarray
    mimic_labels: np.ndarray
    protect: list[tuple[np.ndarray, float]] = field(default_factory=list)

    def ellipse(
        self, k: int, cx: float, cy: float, rx: float, ry: float, value: float, angle: float = 0.0
    ) -> np.ndarray | None:
        """Paint a filled ellipse on slice k; returns the painted mask's slices, or None."""
        if rx <= 0 or ry <= 0:
            return None
        r = max(rx, ry)
        dx = self.x[1] - self.x[0]
        dy = self.y[1] - self.y[0]
        j0 = max(0, int((cx - r - self.x[0]) / dx) - 1)
        j1 = min(self.x.size, int((cx + r - self.x[0]) / dx) + 2)
        i0 = max(0, int((cy - r - self.y[0]) / dy) - 1)
        i1 = min(self.y.size, int((cy + r - self.y[0]) / dy) + 2)
        if j0 >= j1 or i0 >= i1:
            return None
        xx = self.x[None, j0:j1] - cx
        yy = self.y[i0:i1, None] - cy
        if angle:
            c, s = math.cos(angle), math.sin(angle)
            xx, yy = c * xx + s * yy, -s * xx + c * yy
        inside = (xx / rx) ** 2 + (yy / ry) ** 2 <= 1.0
        self.hu[k, i0:i1, j0:j1][inside] = value
        return inside

    def ring(self, k: int, cx: float, cy: float, rx: float, ry: float, wall: float,
             wall_value: float, inner_value: float, angle: float = 0.0) -> None:
        self.ellipse(k, cx, cy, rx, ry, wall_value, angle)
        self.ellipse(k, cx, cy, rx - wall, ry - wall, inner_value, angle)

    def blob(self, center: tuple[float, float, float], semi: tuple[float, float, float],
             value: float, labels: np.ndarray | None = None, label: int = 0,
             core: tuple[float, float] | None = None) -> int:
        """A supersampled ellipsoid with partial volume; returns how many voxels it labelled.

        ``core`` = (fraction of the radius, HU) paints a lucent (or dense) centre.
        """
        dz = self.z[1] - self.z[0] if self.z.size > 1 else 1.0
        dy = self.y[1] - self.y[0]
        dx = self.x[1] - self.x[0]
        lo = [int(math.floor((c - s - o) / d)) - 1 for c, s, o, d in
              zip(center[::-1], semi[::-1], (self.z[0], self.y[0], self.x[0]), (dz, dy, dx), strict=True)]
        hi = [int(math.ceil((c + s - o) / d)) + 2 for c, s, o, d in
              zip(center[::-1], semi[::-1], (self.z[0], self.y[0], self.x[0]), (dz, dy, dx), strict=True)]
        shape = self.hu.shape
        lo = [max(0, v) for v in lo]
        hi = [min(n, v) for n, v in zip(shape, hi, strict=True)]
        if any(a >= b for a, b in zip(lo, hi, strict=True)):
            return 0
        sub = 3
        offs = (np.arange(sub) + 0.5) / sub - 0.5
        zz = (self.z[lo[0]:hi[0], None] + offs[None] * dz).reshape(-1) - center[2]
        yy = (self.y[lo[1]:hi[1], None] + offs[None] * dy).reshape(-1) - center[1]
        xx = (self.x[lo[2]:hi[2], None] + offs[None] * dx).reshape(-1) - center[0]
        d2 = ((zz / semi[2])[:, None, None] ** 2 + (yy / semi[1])[None, :, None] ** 2
              + (xx / semi[0])[None, None, :] ** 2)
        inside = d2 <= 1.0
        nz, ny, nx = hi[0] - lo[0], hi[1] - lo[1], hi[2] - lo[2]
        cover = inside.reshape(nz, sub, ny, sub, nx, sub).mean(axis=(1, 3, 5))
        region = self.hu[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        if core is not None:
            core_in = d2 <= core[0] ** 2
            core_cover = core_in.reshape(nz, sub, ny, sub, nx, sub).mean(axis=(1, 3, 5))
            shell = cover - core_cover
            region[...] = region * (1 - cover) + value * shell + core[1] * core_cover
        else:
            region[...] = region * (1 - cover) + value * cover
        if labels is None:
            return 0
        mask = cover >= 0.5
        if not mask.any() and cover.max() > 0:
            mask = cover == cover.max()
        labels[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]][mask] = label
        return int(mask.sum())


def _smooth_step(t: float, a: float, b: float) -> float:
    """1 inside [a, b], tapering to 0 within 15 % of the span outside it."""
    if t < a or t > b:
        return 0.0
    span = b - a
    edge = 0.15 * span
    return min(1.0, (t - a) / edge if edge else 1.0, (b - t) / edge if edge else 1.0) ** 0.5


def _ureter_path(side: int, t: float, anatomy: _Anatomy) -> tuple[float, float]:
    """In-plane centre of a ureter at height t (0 = bladder base, 1 = top), x from the spine."""
    kx, ky = anatomy.kidney_x * side, anatomy.kidney_y
    pts = [
        (0.08, 25.0 * side, anatomy.bladder_y + anatomy.bladder_ry * 0.6),
        (0.22, 45.0 * side, anatomy.spine_y - 5.0),
        (0.45, 40.0 * side, anatomy.spine_y - 15.0),
        (0.68, (abs(kx) - 22.0) * side, ky - 8.0),
    ]
    if t <= pts[0][0]:
        return pts[0][1], pts[0][2]
    for (t0, x0, y0), (t1, x1, y1) in zip(pts, pts[1:], strict=False):
        if t <= t1:
            f = (t - t0) / (t1 - t0)
            return x0 + f * (x1 - x0), y0 + f * (y1 - y0)
    return pts[-1][1], pts[-1][2]


# The generator, step by step. Every step draws from the one random generator of the phantom, in
# the order generate_phantom calls them: a step moved or a draw added would change every phantom
# after it (tests/lab/test_synth.py holds the arrays of a few seeds to the bit).


@dataclass(frozen=True)
class _Grid:
    """Where the voxels are: their centres (mm, LPS), and the abdomen's extent along z."""

    x: np.ndarray
    """(columns,)"""
    y: np.ndarray
    """(rows,)"""
    z: np.ndarray
    """(slices,), feet to head"""
    pixel_spacing: float
    slice_spacing: float
    fov: float
    z0: float
    """z of height 0 (below the bladder)."""
    length: float
    """the abdomen's height (mm): height 1 is above the kidneys."""

    def height(self, k: int) -> float:
        """Slice k's height in the abdomen, 0 below the bladder to 1 above the kidneys."""
        return (self.z[k] - self.z0) / self.length


@dataclass(frozen=True)
class _Loop:
    """A bowel loop: a tube of ``h`` (height) centred at height ``t0``, its content by kind."""

    cx: float
    cy: float
    r: float
    t0: float
    h: float
    kind: str
    """gas, feces, fluid or dense"""
    hu: float
    """the dense content's HU (0 for the others)"""


@dataclass(frozen=True)
class _Anatomy:
    """One phantom's body: positions and sizes in mm, heights as fractions of the abdomen."""

    body_cx: float
    body_cy: float
    a: float
    """the body's semi-axes (left-right, front-back)"""
    b: float
    sub_fat: float
    """subcutaneous fat"""
    kidney_x: float
    """a kidney's centre from the midline"""
    kidney_y: float
    spine_y: float
    bladder_y: float
    bladder_ry: float
    bladder_rx: float
    kidney_tc: dict[int, float]
    """height of each kidney's centre, by side (+1 left, -1 right)"""
    kidney_rz: float
    """a kidney's half-height"""
    kidney_angle: dict[int, float]
    loops: tuple[_Loop, ...]
    ribs: tuple[tuple[float, float], ...]
    """(start angle, turn per 40 mm) of each rib"""
    ureter_r: float

    @property
    def spine_x(self) -> float:
        return self.body_cx


@dataclass(frozen=True)
class _StonePlan:
    """A stone drawn before the anatomy is painted (a ureter stone dilates the ureter above it)."""

    site: str
    side: int
    """+1 left, -1 right, 0 midline (bladder)"""
    t: float
    center: tuple[float, float, float]
    semi: tuple[float, float, float]
    hu: float
    diameter: float


SIDE_NAMES = {1: "left", -1: "right", 0: "midline"}


def _draw_grid(rng: np.random.Generator, rows: int, pixel_spacing: float | None, slice_spacing: float | None,
               coverage: tuple[float, float] | None, slices: int | None) -> _Grid:
    """The spacings (drawn unless given), the abdomen's height and the slices that cover its part."""
    pixel_spacing = pixel_spacing or float(rng.uniform(0.62, 0.82)) * 512 / rows
    slice_spacing = slice_spacing or float(rng.choice([1.0, 1.25, 1.5, 2.0]))
    length = float(rng.uniform(220, 270))
    lo, hi = coverage or (0.0, 1.0)
    if slices is None:
        slices = max(1, int(round((hi - lo) * length / slice_spacing)))
    z0 = -900.0 + float(rng.uniform(-50, 50))
    z_start = z0 + lo * length
    fov = rows * pixel_spacing
    return _Grid(
        x=-fov / 2 + (np.arange(rows) + 0.5) * pixel_spacing,
        y=-fov / 2 + 30 + (np.arange(rows) + 0.5) * pixel_spacing,
        z=z_start + np.arange(slices) * slice_spacing,
        pixel_spacing=pixel_spacing, slice_spacing=slice_spacing, fov=fov, z0=z0, length=length,
    )


def _draw_loop(rng: np.random.Generator, body_cx: float, body_cy: float, a: float, b: float) -> _Loop:
    kind = str(rng.choice(["gas", "feces", "fluid", "dense"], p=[0.35, 0.3, 0.2, 0.15]))
    return _Loop(
        cx=body_cx + float(rng.uniform(-0.7, 0.7)) * a,
        cy=body_cy - float(rng.uniform(0.0, 0.75)) * b,
        r=float(rng.uniform(9, 22)),
        t0=float(rng.uniform(0.05, 0.95)),
        h=float(rng.uniform(0.06, 0.25)),
        kind=kind,
        hu=float(rng.uniform(180, 650)) if kind == "dense" else 0.0,
    )


def _draw_anatomy(rng: np.random.Generator, grid: _Grid) -> _Anatomy:
    """The body: its outline, organs' positions and sizes, bowel loops and ribs (scaled to the field of view)."""
    body_cx, body_cy = float(rng.uniform(-12, 12)), float(rng.uniform(-25, 5))
    scale = min(1.0, (grid.fov / 2 - 10) / 185.0)
    a = float(rng.uniform(135, 185)) * scale
    b = float(rng.uniform(100, 130)) * scale
    sub_fat = float(rng.uniform(8, 30)) * scale
    kidney_x = float(rng.uniform(58, 72)) * scale
    bladder_ry = float(rng.uniform(25, 38))
    bladder_rx = float(rng.uniform(35, 50))
    kidney_tc = {+1: float(rng.uniform(0.8, 0.86)), -1: float(rng.uniform(0.76, 0.82))}
    kidney_rz = float(rng.uniform(48, 58)) / grid.length
    kidney_angle = {+1: float(rng.uniform(0.3, 0.6)), -1: -float(rng.uniform(0.3, 0.6))}
    loops = tuple(_draw_loop(rng, body_cx, body_cy, a, b) for _ in range(int(rng.integers(14, 26))))
    ribs = tuple((float(rng.uniform(0, 2 * math.pi)), float(rng.uniform(0.7, 1.3)))
                 for _ in range(int(rng.integers(6, 10))))
    ureter_r = float(rng.uniform(1.5, 2.5))
    return _Anatomy(
        body_cx=body_cx, body_cy=body_cy, a=a, b=b, sub_fat=sub_fat,
        kidney_x=kidney_x, kidney_y=body_cy + b * 0.38, spine_y=body_cy + b * 0.45,
        bladder_y=body_cy - b * 0.25, bladder_ry=bladder_ry, bladder_rx=bladder_rx,
        kidney_tc=kidney_tc, kidney_rz=kidney_rz, kidney_angle=kidney_angle,
        loops=loops, ribs=ribs, ureter_r=ureter_r,
    )


def _draw_stone_diameter(rng: np.random.Generator, small_stone_fraction: float) -> float:
    """Under 3 mm with ``small_stone_fraction``, 3-5 mm with half the rest, else 5-20 mm."""
    u = rng.random()
    if u < small_stone_fraction:
        return float(math.exp(rng.uniform(math.log(1.0), math.log(3.0))))
    if u < small_stone_fraction + 0.5 * (1.0 - small_stone_fraction):
        return float(rng.uniform(3.0, 5.0))
    return float(math.exp(rng.uniform(math.log(5.0), math.log(20.0))))


def _plan_stone(rng: np.random.Generator, grid: _Grid, anatomy: _Anatomy, stone_sites: tuple[str, ...],
                small_stone_fraction: float) -> _StonePlan:
    """A stone's site, size, density and place: in a renal pelvis, along a ureter, or lying in the bladder."""
    weights = np.array([{"kidney": 0.5, "ureter": 0.3, "bladder": 0.2}[x] for x in stone_sites])
    site = str(rng.choice(stone_sites, p=weights / weights.sum()))
    side = int(rng.choice([-1, 1]))
    d = _draw_stone_diameter(rng, small_stone_fraction)
    if site == "ureter":
        d = min(d, 10.0)
    hu = float(rng.uniform(200, 2000))
    semi = (d / 2, d / 2 * float(rng.uniform(0.75, 1.0)), d / 2 * float(rng.uniform(0.75, 1.0)))
    if site == "kidney":
        t = anatomy.kidney_tc[side] + float(rng.uniform(-0.5, 0.5)) * anatomy.kidney_rz
        cx = anatomy.spine_x + side * (anatomy.kidney_x - float(rng.uniform(5, 14)))
        cy = anatomy.kidney_y + float(rng.uniform(-8, 4))
    elif site == "ureter":
        t = float(rng.uniform(0.12, 0.64))
        ux, uy = _ureter_path(side, t, anatomy)
        cx, cy = anatomy.spine_x + ux, uy
    else:
        t = float(rng.uniform(0.07, 0.12))
        cx = anatomy.body_cx + float(rng.uniform(-0.4, 0.4)) * anatomy.bladder_rx
        cy = anatomy.bladder_y + anatomy.bladder_ry * 0.85 - semi[1] - 1.0
        side = 0
    zc = grid.z0 + t * grid.length
    return _StonePlan(site=site, side=side, t=t, center=(cx, cy, zc), semi=semi, hu=hu, diameter=d)


def _dilated_ureters(rng: np.random.Generator, plans: list[_StonePlan]) -> dict[int, tuple[float, float]]:
    """Side -> (height of the stone, radius): a ureter stone dilates its ureter above it."""
    hydro = {}
    for plan in plans:
        if plan.site == "ureter":
            hydro[plan.side] = (plan.t, max(plan.semi) + float(rng.uniform(1.0, 3.0)))
    return hydro


def _paint_body(c: _Canvas, k: int, t: float, an: _Anatomy) -> None:
    """Body, subcutaneous fat, wall muscle, visceral fat; liver and spleen at their heights."""
    c.ellipse(k, an.body_cx, an.body_cy, an.a, an.b, -105.0)
    c.ellipse(k, an.body_cx, an.body_cy, an.a - an.sub_fat, an.b - an.sub_fat, 48.0)
    c.ellipse(k, an.body_cx, an.body_cy, an.a - an.sub_fat - 9, an.b - an.sub_fat - 9, -92.0)
    w = _smooth_step(t, 0.72, 1.1)
    if w:
        c.ellipse(k, an.body_cx - 0.45 * an.a, an.body_cy + 0.05 * an.b, 0.45 * an.a * w, 0.7 * an.b * w, 58.0, 0.3)
    w = _smooth_step(t, 0.78, 1.1)
    if w:
        c.ellipse(k, an.body_cx + 0.6 * an.a, an.body_cy + 0.35 * an.b, 0.2 * an.a * w, 0.3 * an.b * w, 46.0, -0.5)


def _paint_bowel(rng: np.random.Generator, c: _Canvas, k: int, t: float, loops: tuple[_Loop, ...]) -> None:
    """The loops this slice crosses: a wall and their content; faeces with gas bubbles."""
    for loop in loops:
        if abs(t - loop.t0) < loop.h / 2:
            taper = math.sqrt(max(0.0, 1 - ((t - loop.t0) / (loop.h / 2)) ** 2))
            r = loop.r * (0.5 + 0.5 * taper)
            # the faeces' density is drawn for every loop crossed, whatever its kind: a draw less
            # would change every phantom
            content = {"gas": -900.0, "feces": float(rng.uniform(-120, 40)), "fluid": 15.0,
                       "dense": loop.hu}[loop.kind]
            c.ring(k, loop.cx, loop.cy, r, r * 0.85, 2.0, 30.0, content)
            if loop.kind == "feces" and r > 6:
                for _ in range(3):
                    c.ellipse(k, loop.cx + rng.uniform(-r / 2, r / 2), loop.cy + rng.uniform(-r / 2, r / 2),
                              rng.uniform(1.5, 4), rng.uniform(1.5, 4), -600.0)


def _paint_psoas(c: _Canvas, k: int, t: float, an: _Anatomy) -> None:
    w = _smooth_step(t, 0.12, 0.88)
    if w:
        r = (8 + 14 * (1 - t)) * w
        for s in (-1, 1):
            c.ellipse(k, an.spine_x + s * (28 + r * 0.6), an.spine_y - 4, r, r * 0.8, 50.0)


def _paint_urinary_tract(c: _Canvas, k: int, t: float, an: _Anatomy, hydro: dict[int, tuple[float, float]]) -> None:
    """Kidneys with sinus and pelvis, the ureters (dilated above a stone), the bladder."""
    for s in (-1, 1):
        dzn = (t - an.kidney_tc[s]) / an.kidney_rz
        if abs(dzn) < 1:
            f = math.sqrt(1 - dzn**2)
            kx = an.spine_x + s * an.kidney_x
            ky = an.kidney_y
            c.ellipse(k, kx, ky, 27 * f, 18 * f, 33.0, an.kidney_angle[s])
            if f > 0.45:
                c.ellipse(k, kx - s * 8, ky - 2, 12 * f, 8 * f, -70.0, an.kidney_angle[s])
                c.ellipse(k, kx - s * 12, ky - 3, 8 * f, 5 * f, 8.0, an.kidney_angle[s])
    for s in (-1, 1):
        if 0.07 < t < 0.69:
            ux, uy = _ureter_path(s, t, an)
            r = an.ureter_r
            if s in hydro and hydro[s][0] - 0.02 < t < hydro[s][0] + 0.2:
                r = hydro[s][1] * (1 - max(0.0, t - hydro[s][0]) / 0.2 * 0.6)
            c.ring(k, an.spine_x + ux, uy, r + 1.3, r + 1.3, 1.3, 38.0, 9.0)
    dzn = (t - 0.1) / 0.1
    if abs(dzn) < 1:
        f = math.sqrt(1 - dzn**2)
        c.ring(k, an.body_cx, an.bladder_y, an.bladder_rx * f, an.bladder_ry * f, 3.0, 40.0, 6.0)


def _paint_vessels(c: _Canvas, k: int, t: float, an: _Anatomy) -> None:
    """Aorta and IVC; iliac arteries and veins below the bifurcation."""
    if t > 0.45:
        c.ellipse(k, an.spine_x + 12, an.spine_y - 32, 11, 11, 42.0)
        c.ellipse(k, an.spine_x - 20, an.spine_y - 30, 13, 10, 40.0)
    elif t > 0.05:
        spread = (0.45 - t) * 160
        for s in (-1, 1):
            c.ellipse(k, an.spine_x + s * (8 + spread), an.spine_y - 28 + (0.45 - t) * 30, 6, 6, 42.0)
            c.ellipse(k, an.spine_x + s * (14 + spread), an.spine_y - 22 + (0.45 - t) * 35, 7, 6, 40.0)


def _paint_skeleton(c: _Canvas, k: int, t: float, an: _Anatomy, grid: _Grid) -> None:
    """Vertebral bodies with discs and posterior elements, sacrum, iliac wings, femoral heads, ribs."""
    spine_x, spine_y = an.spine_x, an.spine_y
    if t > 0.3:
        disc = ((grid.z[k] - grid.z0) % 34.0) < 7.0
        if disc:
            c.ellipse(k, spine_x, spine_y, 18, 15, 85.0)
        else:
            c.ring(k, spine_x, spine_y, 18, 15, 2.0, 650.0, 210.0)
        c.ring(k, spine_x, spine_y + 26, 14, 9, 2.0, 600.0, 230.0)
        c.ellipse(k, spine_x, spine_y + 44, 4, 14, 600.0)
        c.ellipse(k, spine_x, spine_y + 20, 30 if t < 0.8 else 20, 4, 600.0)
    elif t > 0.1:
        c.ring(k, spine_x, spine_y + 10 + (0.3 - t) * 60, 45 * (t + 0.2), 16, 2.5, 600.0, 200.0)
    if 0.12 < t < 0.45:
        w = _smooth_step(t, 0.12, 0.45)
        for s in (-1, 1):
            c.ring(k, spine_x + s * (0.55 * an.a), spine_y - 5 - (0.45 - t) * 50, 14 * w + 4, 38 * w + 4, 2.5,
                   620.0, 230.0, s * 0.6)
    if t < 0.12:
        for s in (-1, 1):
            c.ring(k, spine_x + s * 0.55 * an.a, an.body_cy + 0.1 * an.b, 22, 22, 3.0, 700.0, 260.0)
    if t > 0.72:
        for theta0, speed in an.ribs:
            theta = theta0 + speed * (grid.z[k] - grid.z0) / 40.0
            rx = (an.a - an.sub_fat - 14) * math.cos(theta)
            ry = (an.b - an.sub_fat - 14) * math.sin(theta)
            if ry > -0.2 * an.b:
                c.ring(k, an.body_cx + rx, an.body_cy + ry, 6, 4, 1.5, 620.0, 220.0, theta)


def _paint_anatomy(rng: np.random.Generator, c: _Canvas, grid: _Grid, an: _Anatomy,
                   hydro: dict[int, tuple[float, float]]) -> None:
    """Slice by slice, the organs in the order they overlap: a later one paints over an earlier one."""
    for k in range(grid.z.size):
        t = grid.height(k)
        _paint_body(c, k, t, an)
        _paint_bowel(rng, c, k, t, an.loops)
        _paint_psoas(c, k, t, an)
        _paint_urinary_tract(c, k, t, an, hydro)
        _paint_vessels(c, k, t, an)
        _paint_skeleton(c, k, t, an, grid)


MimicPlace = tuple[tuple[float, float, float], float, float]
"""A painted mimic's centre (mm), size (mm) and HU."""


def _phlebolith(rng: np.random.Generator, c: _Canvas, grid: _Grid, an: _Anatomy, label: int) -> MimicPlace:
    """A pelvic vein stone beside the bladder, often with a lucent centre."""
    t = float(rng.uniform(0.02, 0.2))
    s = rng.choice([-1, 1])
    cx = an.body_cx + s * float(rng.uniform(50, 75))
    cy = an.bladder_y + float(rng.uniform(0, 35))
    size = float(rng.uniform(2, 7))
    hu = float(rng.uniform(250, 1000))
    center = (cx, cy, grid.z0 + t * grid.length)
    core = (float(rng.uniform(0.35, 0.6)), float(rng.uniform(30, 120))) if rng.random() < 0.7 else None
    c.blob(center, (size / 2,) * 3, hu, c.mimic_labels, label, core)
    return center, size, hu


def _vascular_calcification(rng: np.random.Generator, c: _Canvas, grid: _Grid, an: _Anatomy,
                            label: int) -> MimicPlace:
    """A plaque in the wall of the aorta or an iliac artery, long along the vessel."""
    t = float(rng.uniform(0.1, 0.95))
    theta = float(rng.uniform(0, 2 * math.pi))
    if t > 0.45:
        vx, vy, vr = an.spine_x + 12, an.spine_y - 32, 11.0
    else:
        spread = (0.45 - t) * 160
        vx = an.spine_x + float(rng.choice([-1, 1])) * (8 + spread)
        vy, vr = an.spine_y - 28 + (0.45 - t) * 30, 6.0
    center = (vx + vr * math.cos(theta), vy + vr * math.sin(theta), grid.z0 + t * grid.length)
    size = float(rng.uniform(2, 8))
    hu = float(rng.uniform(300, 1200))
    semi = (1.0, size / 2, size / 2) if abs(math.cos(theta)) > 0.7 else (size / 2, 1.0, size / 2)
    c.blob(center, semi, hu, c.mimic_labels, label)
    return center, size, hu


def _bone_island(rng: np.random.Generator, c: _Canvas, grid: _Grid, an: _Anatomy, label: int) -> MimicPlace:
    t = float(rng.uniform(0.35, 0.95))
    center = (an.spine_x + float(rng.uniform(-8, 8)), an.spine_y + float(rng.uniform(-6, 6)), grid.z0 + t * grid.length)
    size = float(rng.uniform(3, 10))
    hu = float(rng.uniform(800, 1500))
    c.blob(center, (size / 2,) * 3, hu, c.mimic_labels, label)
    return center, size, hu


def _bowel_pellet(rng: np.random.Generator, c: _Canvas, grid: _Grid, an: _Anatomy, label: int) -> MimicPlace:
    """Dense content (a pill, contrast) in one of the bowel loops."""
    loop = an.loops[int(rng.integers(0, len(an.loops)))]
    center = (loop.cx + float(rng.uniform(-4, 4)), loop.cy + float(rng.uniform(-4, 4)), grid.z0 + loop.t0 * grid.length)
    size = float(rng.uniform(2, 9))
    hu = float(rng.uniform(250, 1500))
    semi = (size / 2, size / 2 * float(rng.uniform(0.4, 1.0)), size / 2 * float(rng.uniform(0.4, 1.0)))
    c.blob(center, semi, hu, c.mimic_labels, label)
    return center, size, hu


def _streak(rng: np.random.Generator, c: _Canvas, grid: _Grid, an: _Anatomy, label: int) -> MimicPlace:
    """A streak artefact's height and strength; ``_add_streaks`` draws it after the blur (not labelled)."""
    t = float(rng.uniform(0.0, 1.0))
    return (an.body_cx, an.body_cy, grid.z0 + t * grid.length), 0.0, float(rng.uniform(80, 220))


_MIMICS = {"phlebolith": _phlebolith, "vascular_calcification": _vascular_calcification,
           "bone_island": _bone_island, "bowel_pellet": _bowel_pellet, "streak": _streak}


def _insert_mimics(rng: np.random.Generator, c: _Canvas, grid: _Grid, an: _Anatomy, count: int) -> list[Mimic]:
    mimics: list[Mimic] = []
    for _ in range(count):
        kind = str(rng.choice(MIMIC_KINDS, p=[0.3, 0.3, 0.1, 0.2, 0.1]))
        center, size, hu = _MIMICS[kind](rng, c, grid, an, len(mimics) + 1)
        mimics.append(Mimic(center_mm=tuple(float(v) for v in center), size_mm=size, hu=hu, kind=kind))  # type: ignore[arg-type]
    return mimics


def _insert_stones(c: _Canvas, plans: list[_StonePlan]) -> list[Stone]:
    """The planned stones, painted last (over anatomy and mimics); a ureter stone in its soft-tissue rim."""
    stones: list[Stone] = []
    for plan in plans:
        if plan.site == "ureter":
            rim = tuple(v + 1.3 for v in plan.semi)
            c.blob(plan.center, (rim[0], rim[1], plan.semi[2]), 38.0)
        c.blob(plan.center, plan.semi, plan.hu, c.stone_labels, len(stones) + 1)
        stones.append(Stone(center_mm=tuple(float(v) for v in plan.center), diameter_mm=plan.diameter,  # type: ignore[arg-type]
                            hu=plan.hu, site=plan.site, side=SIDE_NAMES[plan.side]))
    return stones


def _add_streaks(rng: np.random.Generator, hu: np.ndarray, grid: _Grid, an: _Anatomy, mimics: list[Mimic]) -> None:
    """Each streak mimic: a few bright or dark lines through the body on the 5 slices around it."""
    yy, xx = np.meshgrid(grid.y, grid.x, indexing="ij")
    for m in mimics:
        if m.kind != "streak":
            continue
        k0 = int(round((m.center_mm[2] - grid.z[0]) / grid.slice_spacing))
        for k in range(max(0, k0 - 2), min(grid.z.size, k0 + 3)):
            for _ in range(int(rng.integers(2, 5))):
                phi = float(rng.uniform(0, math.pi))
                px = an.body_cx + float(rng.uniform(-0.4, 0.4)) * an.a
                py = an.body_cy + float(rng.uniform(-0.4, 0.4)) * an.b
                dist = (xx - px) * math.sin(phi) - (yy - py) * math.cos(phi)
                width = float(rng.uniform(0.6, 1.5))
                amp = float(rng.uniform(0.6, 1.0)) * m.hu * float(rng.choice([-1, 1]))
                streak = amp * np.exp(-0.5 * (dist / width) ** 2)
                hu[k] += np.where(hu[k] > -500, streak, 0.0).astype(np.float32)


def _acquire(rng: np.random.Generator, c: _Canvas, grid: _Grid, an: _Anatomy, mimics: list[Mimic]) -> np.ndarray:
    """What a scanner would show: the point spread, the streaks, correlated noise, whole HU in range."""
    sigma_psf = float(rng.uniform(0.3, 0.5))
    hu = ndimage.gaussian_filter(c.hu, sigma=(0, sigma_psf, sigma_psf))
    _add_streaks(rng, hu, grid, an, mimics)
    noise_sd = float(rng.uniform(5, 13))
    noise = rng.standard_normal(hu.shape).astype(np.float32)
    noise = ndimage.gaussian_filter(noise, sigma=(0, 0.7, 0.7))
    noise *= noise_sd / max(float(noise.std()), 1e-6)
    hu += noise
    return np.clip(np.round(hu), -1024, 3071).astype(np.float32)


def generate_phantom(
    seed: int,
    *,
    rows: int = 512,
    pixel_spacing: float | None = None,
    slice_spacing: float | None = None,
    coverage: tuple[float, float] | None = None,
    slices: int | None = None,
    n_stones: int | None = None,
    n_mimics: int | None = None,
    stone_sites: tuple[str, ...] = STONE_SITES,
    small_stone_fraction: float = 0.4,
) -> Phantom:
    """A synthetic abdominal CT, the same for the same arguments.

    ``coverage`` is the part of the abdomen covered, as fractions of its height
    (0 = below the bladder, 1 = above the kidneys); ``slices`` overrides the slice
    count that coverage and spacing give. Square images of ``rows`` x ``rows``.
    ``small_stone_fraction`` is the share of stones under 3 mm (training sets raise
    it to show the network more of the hard ones; the default 0.4 leaves the
    generator's output, and so the held-out set, unchanged).
    """
    rng = np.random.default_rng(seed)
    grid = _draw_grid(rng, rows, pixel_spacing, slice_spacing, coverage, slices)
    anatomy = _draw_anatomy(rng, grid)
    # stones first (a ureter stone dilates the ureter above it), painted last
    count = n_stones if n_stones is not None else int(rng.choice([0, 1, 1, 2, 2, 3, 4]))
    plans = [_plan_stone(rng, grid, anatomy, stone_sites, small_stone_fraction) for _ in range(count)]
    hydro = _dilated_ureters(rng, plans)
    shape = (grid.z.size, grid.y.size, grid.x.size)
    canvas = _Canvas(hu=np.full(shape, -1000.0, dtype=np.float32), x=grid.x, y=grid.y, z=grid.z,
                     stone_labels=np.zeros(shape, dtype=np.int16), mimic_labels=np.zeros(shape, dtype=np.int16))
    _paint_anatomy(rng, canvas, grid, anatomy, hydro)
    mimics = _insert_mimics(rng, canvas, grid, anatomy, n_mimics if n_mimics is not None else int(rng.integers(3, 10)))
    stones = _insert_stones(canvas, plans)
    return Phantom(
        hu=_acquire(rng, canvas, grid, anatomy, mimics),
        stone_labels=canvas.stone_labels,
        mimic_labels=canvas.mimic_labels,
        stones=tuple(stones),
        mimics=tuple(mimics),
        origin_mm=(float(grid.x[0]), float(grid.y[0]), float(grid.z[0])),
        pixel_spacing=grid.pixel_spacing,
        slice_spacing=grid.slice_spacing,
        seed=seed,
        study_instance_uid=_uid(seed, "study"),
        series_instance_uid=_uid(seed, "series"),
        frame_of_reference_uid=_uid(seed, "for"),
    )


def iter_phantoms(seeds: range | list[int], **kwargs: object) -> Iterator[Phantom]:
    for seed in seeds:
        yield generate_phantom(seed, **kwargs)  # type: ignore[arg-type]


def real_anatomy_phantom(seed: int, data_dir: Path = DEFAULT_REAL_DATA, *, upsample: int = 4,
                         n_stones: int = 3) -> Phantom:
    """Stones inserted into the real kidneys of the TotalSegmentator example CT.

    The 3 mm example is resampled (linear) to 3/upsample mm in-plane and 1.5 mm
    between slices; fine noise is added back; stones of 1-12 mm go inside the kidney
    labels (2 = right, 3 = left). See ``REAL_CT_ATTRIBUTION``.
    """
    import nibabel as nib

    rng = np.random.default_rng(seed)
    ct = np.asarray(nib.load(str(data_dir / "example_ct_sm.nii.gz")).dataobj).astype(np.float32)  # type: ignore[attr-defined]
    seg = np.asarray(nib.load(str(data_dir / "example_seg.nii.gz")).dataobj)  # type: ignore[attr-defined]
    # NIfTI (i: towards patient right, j: anterior, k: superior) -> (slice, row, column) in LPS order
    ct_zyx = ct[::-1, ::-1, :].transpose(2, 1, 0)
    seg_zyx = seg[::-1, ::-1, :].transpose(2, 1, 0)
    nx, ny = ct.shape[0], ct.shape[1]
    origin_nifti = (-177.95632935, 11.31900024, 94.30175781)
    origin = (-(origin_nifti[0] + 3.0 * (nx - 1)), -(origin_nifti[1] + 3.0 * (ny - 1)), origin_nifti[2])
    zoom = (2.0, float(upsample), float(upsample))
    hu = ndimage.zoom(ct_zyx, zoom, order=1).astype(np.float32)
    labels = ndimage.zoom(seg_zyx, zoom, order=0)
    ps = 3.0 / upsample
    ss = 1.5
    # voxel centres shift when zooming: keep the first voxel's centre at the first original centre
    x = origin[0] + np.arange(hu.shape[2]) * ps
    y = origin[1] + np.arange(hu.shape[1]) * ps
    z = origin[2] + np.arange(hu.shape[0]) * ss
    canvas = _Canvas(hu=hu, x=x, y=y, z=z, stone_labels=np.zeros(hu.shape, np.int16),
                     mimic_labels=np.zeros(hu.shape, np.int16))
    stones: list[Stone] = []
    for _ in range(n_stones):
        label = int(rng.choice([2, 3]))
        kidney = ndimage.binary_erosion(labels == label, iterations=4)
        candidates = np.argwhere(kidney)
        if candidates.size == 0:
            continue
        u = rng.random()
        d = float(math.exp(rng.uniform(math.log(1.0), math.log(3.0)))) if u < 0.4 else (
            float(rng.uniform(3, 5)) if u < 0.7 else float(rng.uniform(5, 12)))
        hu_s = float(rng.uniform(200, 2000))
        kk, ii, jj = candidates[int(rng.integers(0, len(candidates)))]
        center = (float(x[jj]), float(y[ii]), float(z[kk]))
        if any(np.linalg.norm(np.subtract(center, s.center_mm)) < 15 for s in stones):
            continue
        canvas.blob(center, (d / 2, d / 2, d / 2), hu_s, canvas.stone_labels, len(stones) + 1)
        stones.append(Stone(center_mm=center, diameter_mm=d, hu=hu_s, site="kidney",
                            side="right" if label == 2 else "left"))
    noise = ndimage.gaussian_filter(rng.standard_normal(hu.shape).astype(np.float32), (0, 0.7, 0.7))
    hu = canvas.hu + noise * (6.0 / max(float(noise.std()), 1e-6))
    hu = np.clip(np.round(hu), -1024, 3071).astype(np.float32)
    return Phantom(
        hu=hu, stone_labels=canvas.stone_labels, mimic_labels=canvas.mimic_labels,
        stones=tuple(stones), mimics=(), origin_mm=(float(x[0]), float(y[0]), float(z[0])),
        pixel_spacing=ps, slice_spacing=ss, seed=seed,
        study_instance_uid=_uid(seed, "real-study"), series_instance_uid=_uid(seed, "real-series"),
        frame_of_reference_uid=_uid(seed, "real-for"),
        description="TotalSegmentator example CT with inserted stones",
    )


def write_series(
    phantom: Phantom,
    out_dir: str | Path,
    *,
    patient_name: str = "Synthetic^Phantom",
    patient_id: str = "SYNTH0001",
    series_number: int = 1,
    transfer_syntax_uid: str | None = None,
) -> list[Path]:
    """Write the phantom as a CT Image Storage series (one file per slice) into out_dir.

    Pixels are stored unsigned with RescaleIntercept -1024, as most scanners do.
    ``transfer_syntax_uid`` defaults to Explicit VR Little Endian; RLE Lossless
    compresses (through pydicom's encoder).
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, RLELossless

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ts = transfer_syntax_uid or ExplicitVRLittleEndian
    now = datetime.datetime(2026, 1, 1, 12, 0, 0)
    paths = []
    n, rows, cols = phantom.hu.shape
    for k in range(n):
        ds = Dataset()
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SOPClassUID = CT_IMAGE_STORAGE
        ds.SOPInstanceUID = phantom.sop_instance_uid(k)
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = now.strftime("%Y%m%d")
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = now.strftime("%H%M%S")
        ds.AccessionNumber = ""
        ds.Modality = "CT"
        ds.Manufacturer = "uronode synth"
        ds.ReferringPhysicianName = ""
        ds.StudyDescription = "Synthetic abdomen CT"
        ds.SeriesDescription = phantom.description
        ds.PatientName = patient_name
        ds.PatientID = patient_id
        ds.PatientBirthDate = ""
        ds.PatientSex = "O"
        ds.BodyPartExamined = "ABDOMEN"
        ds.SliceThickness = f"{phantom.slice_spacing:.3f}"
        ds.KVP = "120"
        ds.PatientPosition = "HFS"
        ds.StudyInstanceUID = phantom.study_instance_uid
        ds.SeriesInstanceUID = phantom.series_instance_uid
        ds.StudyID = "1"
        ds.SeriesNumber = series_number
        ds.AcquisitionNumber = 1
        ds.InstanceNumber = k + 1
        z = phantom.origin_mm[2] + k * phantom.slice_spacing
        ds.ImagePositionPatient = [f"{phantom.origin_mm[0]:.4f}", f"{phantom.origin_mm[1]:.4f}", f"{z:.4f}"]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.FrameOfReferenceUID = phantom.frame_of_reference_uid
        ds.PositionReferenceIndicator = ""
        ds.SliceLocation = f"{z:.4f}"
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = rows, cols
        ds.PixelSpacing = [f"{phantom.pixel_spacing:.6f}", f"{phantom.pixel_spacing:.6f}"]
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.WindowCenter = "40"
        ds.WindowWidth = "400"
        ds.RescaleIntercept = "-1024"
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
        stored = np.clip(phantom.hu[k] + 1024, 0, 65535).astype(np.uint16)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta = meta
        ds.PixelData = stored.tobytes()
        if ts == RLELossless:
            ds.compress(RLELossless, stored)
        elif ts != ExplicitVRLittleEndian:
            ds.compress(ts, stored)
        path = out / f"CT{k + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    logger.info("wrote %d synthetic CT slices to %s", n, out)
    return paths
