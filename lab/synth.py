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
from typing import Any

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


def _ureter_path(side: int, t: float, anat: dict) -> tuple[float, float]:
    """In-plane centre of a ureter at height t (0 = bladder base, 1 = top)."""
    kx, ky = anat["kidney_x"] * side, anat["kidney_y"]
    pts = [
        (0.08, 25.0 * side, anat["bladder_y"] + anat["bladder_ry"] * 0.6),
        (0.22, 45.0 * side, anat["spine_y"] - 5.0),
        (0.45, 40.0 * side, anat["spine_y"] - 15.0),
        (0.68, (abs(kx) - 22.0) * side, ky - 8.0),
    ]
    if t <= pts[0][0]:
        return pts[0][1], pts[0][2]
    for (t0, x0, y0), (t1, x1, y1) in zip(pts, pts[1:], strict=False):
        if t <= t1:
            f = (t - t0) / (t1 - t0)
            return x0 + f * (x1 - x0), y0 + f * (y1 - y0)
    return pts[-1][1], pts[-1][2]


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
    pixel_spacing = pixel_spacing or float(rng.uniform(0.62, 0.82)) * 512 / rows
    slice_spacing = slice_spacing or float(rng.choice([1.0, 1.25, 1.5, 2.0]))
    length = float(rng.uniform(220, 270))
    lo, hi = coverage or (0.0, 1.0)
    if slices is None:
        slices = max(1, int(round((hi - lo) * length / slice_spacing)))
    z0 = -900.0 + float(rng.uniform(-50, 50))
    z_start = z0 + lo * length
    z = z_start + np.arange(slices) * slice_spacing
    fov = rows * pixel_spacing
    body_cx, body_cy = float(rng.uniform(-12, 12)), float(rng.uniform(-25, 5))
    x = -fov / 2 + (np.arange(rows) + 0.5) * pixel_spacing
    y = -fov / 2 + 30 + (np.arange(rows) + 0.5) * pixel_spacing
    canvas = _Canvas(
        hu=np.full((slices, rows, rows), -1000.0, dtype=np.float32),
        x=x, y=y, z=z,
        stone_labels=np.zeros((slices, rows, rows), dtype=np.int16),
        mimic_labels=np.zeros((slices, rows, rows), dtype=np.int16),
    )
    scale = min(1.0, (fov / 2 - 10) / 185.0)
    a = float(rng.uniform(135, 185)) * scale
    b = float(rng.uniform(100, 130)) * scale
    sub_fat = float(rng.uniform(8, 30)) * scale
    anat = {
        "kidney_x": float(rng.uniform(58, 72)) * scale,
        "kidney_y": body_cy + b * 0.38,
        "spine_y": body_cy + b * 0.45,
        "bladder_y": body_cy - b * 0.25,
        "bladder_ry": float(rng.uniform(25, 38)),
        "bladder_rx": float(rng.uniform(35, 50)),
    }
    spine_x = body_cx
    spine_y = anat["spine_y"]
    kidney_tc = {+1: float(rng.uniform(0.8, 0.86)), -1: float(rng.uniform(0.76, 0.82))}
    kidney_rz = float(rng.uniform(48, 58)) / length
    kidney_angle = {+1: float(rng.uniform(0.3, 0.6)), -1: -float(rng.uniform(0.3, 0.6))}
    n_loops = int(rng.integers(14, 26))
    loops: list[dict[str, Any]] = []
    for _ in range(n_loops):
        kind = rng.choice(["gas", "feces", "fluid", "dense"], p=[0.35, 0.3, 0.2, 0.15])
        loops.append({
            "cx": body_cx + float(rng.uniform(-0.7, 0.7)) * a,
            "cy": body_cy - float(rng.uniform(0.0, 0.75)) * b,
            "r": float(rng.uniform(9, 22)),
            "t0": float(rng.uniform(0.05, 0.95)),
            "h": float(rng.uniform(0.06, 0.25)),
            "kind": str(kind),
            "hu": float(rng.uniform(180, 650)) if kind == "dense" else 0.0,
        })
    ribs = [(float(rng.uniform(0, 2 * math.pi)), float(rng.uniform(0.7, 1.3))) for _ in range(int(rng.integers(6, 10)))]
    ureter_r = float(rng.uniform(1.5, 2.5))

    # stones first (their ureter dilation changes the anatomy above them)
    stones_spec = []
    count = n_stones if n_stones is not None else int(rng.choice([0, 1, 1, 2, 2, 3, 4]))
    for _ in range(count):
        weights = np.array([{"kidney": 0.5, "ureter": 0.3, "bladder": 0.2}[x] for x in stone_sites])
        site = str(rng.choice(stone_sites, p=weights / weights.sum()))
        side = int(rng.choice([-1, 1]))
        u = rng.random()
        if u < small_stone_fraction:
            d = float(math.exp(rng.uniform(math.log(1.0), math.log(3.0))))
        elif u < small_stone_fraction + 0.5 * (1.0 - small_stone_fraction):
            d = float(rng.uniform(3.0, 5.0))
        else:
            d = float(math.exp(rng.uniform(math.log(5.0), math.log(20.0))))
        if site == "ureter":
            d = min(d, 10.0)
        hu = float(rng.uniform(200, 2000))
        semi = (d / 2, d / 2 * float(rng.uniform(0.75, 1.0)), d / 2 * float(rng.uniform(0.75, 1.0)))
        if site == "kidney":
            t = kidney_tc[side] + float(rng.uniform(-0.5, 0.5)) * kidney_rz
            cx = spine_x + side * (anat["kidney_x"] - float(rng.uniform(5, 14)))
            cy = anat["kidney_y"] + float(rng.uniform(-8, 4))
        elif site == "ureter":
            t = float(rng.uniform(0.12, 0.64))
            ux, uy = _ureter_path(side, t, anat)
            cx, cy = spine_x + ux, uy
        else:
            t = float(rng.uniform(0.07, 0.12))
            cx = body_cx + float(rng.uniform(-0.4, 0.4)) * anat["bladder_rx"]
            cy = anat["bladder_y"] + anat["bladder_ry"] * 0.85 - semi[1] - 1.0
            side = 0
        zc = z0 + t * length
        stones_spec.append((site, side, t, (cx, cy, zc), semi, hu, d))

    hydro = {}
    for site, side, t, _c, semi, _hu, _d in stones_spec:
        if site == "ureter":
            hydro[side] = (t, max(semi) + float(rng.uniform(1.0, 3.0)))

    def t_of(k: int) -> float:
        return (z[k] - z0) / length

    for k in range(slices):
        t = t_of(k)
        c = canvas
        # body, fat, wall muscle, visceral fat
        c.ellipse(k, body_cx, body_cy, a, b, -105.0)
        c.ellipse(k, body_cx, body_cy, a - sub_fat, b - sub_fat, 48.0)
        c.ellipse(k, body_cx, body_cy, a - sub_fat - 9, b - sub_fat - 9, -92.0)
        # liver and spleen
        w = _smooth_step(t, 0.72, 1.1)
        if w:
            c.ellipse(k, body_cx - 0.45 * a, body_cy + 0.05 * b, 0.45 * a * w, 0.7 * b * w, 58.0, 0.3)
        w = _smooth_step(t, 0.78, 1.1)
        if w:
            c.ellipse(k, body_cx + 0.6 * a, body_cy + 0.35 * b, 0.2 * a * w, 0.3 * b * w, 46.0, -0.5)
        # bowel loops
        for loop in loops:
            if abs(t - loop["t0"]) < loop["h"] / 2:
                taper = math.sqrt(max(0.0, 1 - ((t - loop["t0"]) / (loop["h"] / 2)) ** 2))
                r = loop["r"] * (0.5 + 0.5 * taper)
                content = {"gas": -900.0, "feces": float(rng.uniform(-120, 40)), "fluid": 15.0,
                           "dense": loop["hu"]}[loop["kind"]]
                c.ring(k, loop["cx"], loop["cy"], r, r * 0.85, 2.0, 30.0, content)
                if loop["kind"] == "feces" and r > 6:
                    for _ in range(3):
                        c.ellipse(k, loop["cx"] + rng.uniform(-r / 2, r / 2), loop["cy"] + rng.uniform(-r / 2, r / 2),
                                  rng.uniform(1.5, 4), rng.uniform(1.5, 4), -600.0)
        # psoas
        w = _smooth_step(t, 0.12, 0.88)
        if w:
            r = (8 + 14 * (1 - t)) * w
            for s in (-1, 1):
                c.ellipse(k, spine_x + s * (28 + r * 0.6), spine_y - 4, r, r * 0.8, 50.0)
        # kidneys with sinus and pelvis
        for s in (-1, 1):
            dzn = (t - kidney_tc[s]) / kidney_rz
            if abs(dzn) < 1:
                f = math.sqrt(1 - dzn**2)
                kx = spine_x + s * anat["kidney_x"]
                ky = anat["kidney_y"]
                c.ellipse(k, kx, ky, 27 * f, 18 * f, 33.0, kidney_angle[s])
                if f > 0.45:
                    c.ellipse(k, kx - s * 8, ky - 2, 12 * f, 8 * f, -70.0, kidney_angle[s])
                    c.ellipse(k, kx - s * 12, ky - 3, 8 * f, 5 * f, 8.0, kidney_angle[s])
        # ureters
        for s in (-1, 1):
            if 0.07 < t < 0.69:
                ux, uy = _ureter_path(s, t, anat)
                r = ureter_r
                if s in hydro and hydro[s][0] - 0.02 < t < hydro[s][0] + 0.2:
                    r = hydro[s][1] * (1 - max(0.0, t - hydro[s][0]) / 0.2 * 0.6)
                c.ring(k, spine_x + ux, uy, r + 1.3, r + 1.3, 1.3, 38.0, 9.0)
        # bladder
        dzn = (t - 0.1) / 0.1
        if abs(dzn) < 1:
            f = math.sqrt(1 - dzn**2)
            c.ring(k, body_cx, anat["bladder_y"], anat["bladder_rx"] * f, anat["bladder_ry"] * f, 3.0, 40.0, 6.0)
        # vessels: aorta and IVC, iliac arteries and veins below the bifurcation
        if t > 0.45:
            c.ellipse(k, spine_x + 12, spine_y - 32, 11, 11, 42.0)
            c.ellipse(k, spine_x - 20, spine_y - 30, 13, 10, 40.0)
        elif t > 0.05:
            spread = (0.45 - t) * 160
            for s in (-1, 1):
                c.ellipse(k, spine_x + s * (8 + spread), spine_y - 28 + (0.45 - t) * 30, 6, 6, 42.0)
                c.ellipse(k, spine_x + s * (14 + spread), spine_y - 22 + (0.45 - t) * 35, 7, 6, 40.0)
        # spine: vertebral bodies with discs, posterior elements; sacrum lower down
        if t > 0.3:
            disc = ((z[k] - z0) % 34.0) < 7.0
            if disc:
                c.ellipse(k, spine_x, spine_y, 18, 15, 85.0)
            else:
                c.ring(k, spine_x, spine_y, 18, 15, 2.0, 650.0, 210.0)
            c.ring(k, spine_x, spine_y + 26, 14, 9, 2.0, 600.0, 230.0)
            c.ellipse(k, spine_x, spine_y + 44, 4, 14, 600.0)
            c.ellipse(k, spine_x, spine_y + 20, 30 if t < 0.8 else 20, 4, 600.0)
        elif t > 0.1:
            c.ring(k, spine_x, spine_y + 10 + (0.3 - t) * 60, 45 * (t + 0.2), 16, 2.5, 600.0, 200.0)
        # iliac wings and femoral heads
        if 0.12 < t < 0.45:
            w = _smooth_step(t, 0.12, 0.45)
            for s in (-1, 1):
                c.ring(k, spine_x + s * (0.55 * a), spine_y - 5 - (0.45 - t) * 50, 14 * w + 4, 38 * w + 4, 2.5, 620.0, 230.0, s * 0.6)
        if t < 0.12:
            for s in (-1, 1):
                c.ring(k, spine_x + s * 0.55 * a, body_cy + 0.1 * b, 22, 22, 3.0, 700.0, 260.0)
        # ribs
        if t > 0.72:
            for theta0, speed in ribs:
                theta = theta0 + speed * (z[k] - z0) / 40.0
                rx = (a - sub_fat - 14) * math.cos(theta)
                ry = (b - sub_fat - 14) * math.sin(theta)
                if ry > -0.2 * b:
                    c.ring(k, body_cx + rx, body_cy + ry, 6, 4, 1.5, 620.0, 220.0, theta)

    # mimics
    mimics: list[Mimic] = []
    m_count = n_mimics if n_mimics is not None else int(rng.integers(3, 10))
    for _ in range(m_count):
        kind = str(rng.choice(MIMIC_KINDS, p=[0.3, 0.3, 0.1, 0.2, 0.1]))
        if kind == "phlebolith":
            t = float(rng.uniform(0.02, 0.2))
            s = rng.choice([-1, 1])
            cx = body_cx + s * float(rng.uniform(50, 75))
            cy = anat["bladder_y"] + float(rng.uniform(0, 35))
            size = float(rng.uniform(2, 7))
            hu = float(rng.uniform(250, 1000))
            center = (cx, cy, z0 + t * length)
            core = (float(rng.uniform(0.35, 0.6)), float(rng.uniform(30, 120))) if rng.random() < 0.7 else None
            canvas.blob(center, (size / 2,) * 3, hu, canvas.mimic_labels, len(mimics) + 1, core)
        elif kind == "vascular_calcification":
            t = float(rng.uniform(0.1, 0.95))
            theta = float(rng.uniform(0, 2 * math.pi))
            if t > 0.45:
                vx, vy, vr = spine_x + 12, spine_y - 32, 11.0
            else:
                spread = (0.45 - t) * 160
                vx = spine_x + float(rng.choice([-1, 1])) * (8 + spread)
                vy, vr = spine_y - 28 + (0.45 - t) * 30, 6.0
            center = (vx + vr * math.cos(theta), vy + vr * math.sin(theta), z0 + t * length)
            size = float(rng.uniform(2, 8))
            hu = float(rng.uniform(300, 1200))
            semi = (1.2, 1.2, size / 2)
            if abs(math.cos(theta)) > 0.7:
                semi = (1.0, size / 2, size / 2)
            else:
                semi = (size / 2, 1.0, size / 2)
            canvas.blob(center, semi, hu, canvas.mimic_labels, len(mimics) + 1)
        elif kind == "bone_island":
            t = float(rng.uniform(0.35, 0.95))
            center = (spine_x + float(rng.uniform(-8, 8)), spine_y + float(rng.uniform(-6, 6)), z0 + t * length)
            size = float(rng.uniform(3, 10))
            hu = float(rng.uniform(800, 1500))
            canvas.blob(center, (size / 2,) * 3, hu, canvas.mimic_labels, len(mimics) + 1)
        elif kind == "bowel_pellet":
            loop = loops[int(rng.integers(0, len(loops)))]
            center = (loop["cx"] + float(rng.uniform(-4, 4)), loop["cy"] + float(rng.uniform(-4, 4)), z0 + loop["t0"] * length)
            size = float(rng.uniform(2, 9))
            hu = float(rng.uniform(250, 1500))
            semi = (size / 2, size / 2 * float(rng.uniform(0.4, 1.0)), size / 2 * float(rng.uniform(0.4, 1.0)))
            canvas.blob(center, semi, hu, canvas.mimic_labels, len(mimics) + 1)
        else:
            t = float(rng.uniform(0.0, 1.0))
            center = (body_cx, body_cy, z0 + t * length)
            size, hu = 0.0, float(rng.uniform(80, 220))
        mimics.append(Mimic(center_mm=tuple(float(v) for v in center), size_mm=size, hu=hu, kind=kind))  # type: ignore[arg-type]

    stones: list[Stone] = []
    for site, side, _t, center, semi, hu, d in stones_spec:
        if site == "ureter":
            # soft-tissue rim (the ureter wall around the stone)
            rim = tuple(v + 1.3 for v in semi)
            canvas.blob(center, (rim[0], rim[1], semi[2]), 38.0)
        canvas.blob(center, semi, hu, canvas.stone_labels, len(stones) + 1)
        side_name = {1: "left", -1: "right", 0: "midline"}[side]
        stones.append(Stone(center_mm=tuple(float(v) for v in center), diameter_mm=d, hu=hu,  # type: ignore[arg-type]
                            site=site, side=side_name))

    # point spread, streaks, noise
    sigma_psf = float(rng.uniform(0.3, 0.5))
    hu_img = ndimage.gaussian_filter(canvas.hu, sigma=(0, sigma_psf, sigma_psf))
    yy, xx = np.meshgrid(y, x, indexing="ij")
    for m in mimics:
        if m.kind != "streak":
            continue
        k0 = int(round((m.center_mm[2] - z[0]) / slice_spacing))
        for k in range(max(0, k0 - 2), min(slices, k0 + 3)):
            for _ in range(int(rng.integers(2, 5))):
                phi = float(rng.uniform(0, math.pi))
                px = body_cx + float(rng.uniform(-0.4, 0.4)) * a
                py = body_cy + float(rng.uniform(-0.4, 0.4)) * b
                dist = (xx - px) * math.sin(phi) - (yy - py) * math.cos(phi)
                width = float(rng.uniform(0.6, 1.5))
                amp = float(rng.uniform(0.6, 1.0)) * m.hu * float(rng.choice([-1, 1]))
                streak = amp * np.exp(-0.5 * (dist / width) ** 2)
                hu_img[k] += np.where(hu_img[k] > -500, streak, 0.0).astype(np.float32)
    noise_sd = float(rng.uniform(5, 13))
    noise = rng.standard_normal(hu_img.shape).astype(np.float32)
    noise = ndimage.gaussian_filter(noise, sigma=(0, 0.7, 0.7))
    noise *= noise_sd / max(float(noise.std()), 1e-6)
    hu_img += noise
    hu_img = np.clip(np.round(hu_img), -1024, 3071).astype(np.float32)
    return Phantom(
        hu=hu_img,
        stone_labels=canvas.stone_labels,
        mimic_labels=canvas.mimic_labels,
        stones=tuple(stones),
        mimics=tuple(mimics),
        origin_mm=(float(x[0]), float(y[0]), float(z[0])),
        pixel_spacing=pixel_spacing,
        slice_spacing=slice_spacing,
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
