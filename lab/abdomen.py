"""The generated abdomen, step by step: what ``lab.synth.generate_phantom`` draws and paints.

``draw_grid`` (spacings, the abdomen's height, the slices) -> ``draw_anatomy`` (body, organs,
bowel loops, ribs) -> ``plan_stone`` for each stone and ``dilated_ureters`` -> ``paint_anatomy``
(slice by slice: body and fat, liver and spleen, bowel, psoas, kidneys, ureters and bladder,
vessels, skeleton) -> ``insert_mimics`` (phleboliths, vascular calcifications, bone islands, bowel
pellets, streaks) -> ``insert_stones`` -> ``acquire`` (point spread, streaks, correlated noise).
``Canvas`` paints ellipses, rings and supersampled ellipsoids (with partial volume) into the volume
and its label maps; ``lab.synth.real_anatomy_phantom`` paints stones into real CT with it.

Positions are LPS mm; heights ``t`` are fractions of the abdomen (0 below the bladder, 1 above the
kidneys).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

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


@dataclass
class Canvas:
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


def _ureter_path(side: int, t: float, anatomy: Anatomy) -> tuple[float, float]:
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


# The steps of lab.synth.generate_phantom. Every step draws from the phantom's one random generator,
# in the order generate_phantom calls them: a step moved or a draw added would change every phantom
# after it (tests/lab/test_synth.py holds the arrays of a few seeds to the bit).


@dataclass(frozen=True)
class Grid:
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
class Loop:
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
class Anatomy:
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
    loops: tuple[Loop, ...]
    ribs: tuple[tuple[float, float], ...]
    """(start angle, turn per 40 mm) of each rib"""
    ureter_r: float

    @property
    def spine_x(self) -> float:
        return self.body_cx


@dataclass(frozen=True)
class StonePlan:
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


def draw_grid(rng: np.random.Generator, rows: int, pixel_spacing: float | None, slice_spacing: float | None,
               coverage: tuple[float, float] | None, slices: int | None) -> Grid:
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
    return Grid(
        x=-fov / 2 + (np.arange(rows) + 0.5) * pixel_spacing,
        y=-fov / 2 + 30 + (np.arange(rows) + 0.5) * pixel_spacing,
        z=z_start + np.arange(slices) * slice_spacing,
        pixel_spacing=pixel_spacing, slice_spacing=slice_spacing, fov=fov, z0=z0, length=length,
    )


def _draw_loop(rng: np.random.Generator, body_cx: float, body_cy: float, a: float, b: float) -> Loop:
    kind = str(rng.choice(["gas", "feces", "fluid", "dense"], p=[0.35, 0.3, 0.2, 0.15]))
    return Loop(
        cx=body_cx + float(rng.uniform(-0.7, 0.7)) * a,
        cy=body_cy - float(rng.uniform(0.0, 0.75)) * b,
        r=float(rng.uniform(9, 22)),
        t0=float(rng.uniform(0.05, 0.95)),
        h=float(rng.uniform(0.06, 0.25)),
        kind=kind,
        hu=float(rng.uniform(180, 650)) if kind == "dense" else 0.0,
    )


def draw_anatomy(rng: np.random.Generator, grid: Grid) -> Anatomy:
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
    return Anatomy(
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


def plan_stone(rng: np.random.Generator, grid: Grid, anatomy: Anatomy, stone_sites: tuple[str, ...],
                small_stone_fraction: float) -> StonePlan:
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
    return StonePlan(site=site, side=side, t=t, center=(cx, cy, zc), semi=semi, hu=hu, diameter=d)


def dilated_ureters(rng: np.random.Generator, plans: list[StonePlan]) -> dict[int, tuple[float, float]]:
    """Side -> (height of the stone, radius): a ureter stone dilates its ureter above it."""
    hydro = {}
    for plan in plans:
        if plan.site == "ureter":
            hydro[plan.side] = (plan.t, max(plan.semi) + float(rng.uniform(1.0, 3.0)))
    return hydro


def _paint_body(c: Canvas, k: int, t: float, an: Anatomy) -> None:
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


def _paint_bowel(rng: np.random.Generator, c: Canvas, k: int, t: float, loops: tuple[Loop, ...]) -> None:
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


def _paint_psoas(c: Canvas, k: int, t: float, an: Anatomy) -> None:
    w = _smooth_step(t, 0.12, 0.88)
    if w:
        r = (8 + 14 * (1 - t)) * w
        for s in (-1, 1):
            c.ellipse(k, an.spine_x + s * (28 + r * 0.6), an.spine_y - 4, r, r * 0.8, 50.0)


def _paint_urinary_tract(c: Canvas, k: int, t: float, an: Anatomy, hydro: dict[int, tuple[float, float]]) -> None:
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


def _paint_vessels(c: Canvas, k: int, t: float, an: Anatomy) -> None:
    """Aorta and IVC; iliac arteries and veins below the bifurcation."""
    if t > 0.45:
        c.ellipse(k, an.spine_x + 12, an.spine_y - 32, 11, 11, 42.0)
        c.ellipse(k, an.spine_x - 20, an.spine_y - 30, 13, 10, 40.0)
    elif t > 0.05:
        spread = (0.45 - t) * 160
        for s in (-1, 1):
            c.ellipse(k, an.spine_x + s * (8 + spread), an.spine_y - 28 + (0.45 - t) * 30, 6, 6, 42.0)
            c.ellipse(k, an.spine_x + s * (14 + spread), an.spine_y - 22 + (0.45 - t) * 35, 7, 6, 40.0)


def _paint_skeleton(c: Canvas, k: int, t: float, an: Anatomy, grid: Grid) -> None:
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


def paint_anatomy(rng: np.random.Generator, c: Canvas, grid: Grid, an: Anatomy,
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


def _phlebolith(rng: np.random.Generator, c: Canvas, grid: Grid, an: Anatomy, label: int) -> MimicPlace:
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


def _vascular_calcification(rng: np.random.Generator, c: Canvas, grid: Grid, an: Anatomy,
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


def _bone_island(rng: np.random.Generator, c: Canvas, grid: Grid, an: Anatomy, label: int) -> MimicPlace:
    t = float(rng.uniform(0.35, 0.95))
    center = (an.spine_x + float(rng.uniform(-8, 8)), an.spine_y + float(rng.uniform(-6, 6)), grid.z0 + t * grid.length)
    size = float(rng.uniform(3, 10))
    hu = float(rng.uniform(800, 1500))
    c.blob(center, (size / 2,) * 3, hu, c.mimic_labels, label)
    return center, size, hu


def _bowel_pellet(rng: np.random.Generator, c: Canvas, grid: Grid, an: Anatomy, label: int) -> MimicPlace:
    """Dense content (a pill, contrast) in one of the bowel loops."""
    loop = an.loops[int(rng.integers(0, len(an.loops)))]
    center = (loop.cx + float(rng.uniform(-4, 4)), loop.cy + float(rng.uniform(-4, 4)), grid.z0 + loop.t0 * grid.length)
    size = float(rng.uniform(2, 9))
    hu = float(rng.uniform(250, 1500))
    semi = (size / 2, size / 2 * float(rng.uniform(0.4, 1.0)), size / 2 * float(rng.uniform(0.4, 1.0)))
    c.blob(center, semi, hu, c.mimic_labels, label)
    return center, size, hu


def _streak(rng: np.random.Generator, c: Canvas, grid: Grid, an: Anatomy, label: int) -> MimicPlace:
    """A streak artefact's height and strength; ``_add_streaks`` draws it after the blur (not labelled)."""
    t = float(rng.uniform(0.0, 1.0))
    return (an.body_cx, an.body_cy, grid.z0 + t * grid.length), 0.0, float(rng.uniform(80, 220))


_MIMICS = {"phlebolith": _phlebolith, "vascular_calcification": _vascular_calcification,
           "bone_island": _bone_island, "bowel_pellet": _bowel_pellet, "streak": _streak}


def _xyz(values: Iterable[float]) -> tuple[float, float, float]:
    x, y, z = (float(v) for v in values)
    return x, y, z


def insert_mimics(rng: np.random.Generator, c: Canvas, grid: Grid, an: Anatomy, count: int) -> list[Mimic]:
    mimics: list[Mimic] = []
    for _ in range(count):
        kind = str(rng.choice(MIMIC_KINDS, p=[0.3, 0.3, 0.1, 0.2, 0.1]))
        center, size, hu = _MIMICS[kind](rng, c, grid, an, len(mimics) + 1)
        mimics.append(Mimic(center_mm=_xyz(center), size_mm=size, hu=hu, kind=kind))
    return mimics


def insert_stones(c: Canvas, plans: list[StonePlan]) -> list[Stone]:
    """The planned stones, painted last (over anatomy and mimics); a ureter stone in its soft-tissue rim."""
    stones: list[Stone] = []
    for plan in plans:
        if plan.site == "ureter":
            rim = tuple(v + 1.3 for v in plan.semi)
            c.blob(plan.center, (rim[0], rim[1], plan.semi[2]), 38.0)
        c.blob(plan.center, plan.semi, plan.hu, c.stone_labels, len(stones) + 1)
        stones.append(Stone(center_mm=_xyz(plan.center), diameter_mm=plan.diameter,
                            hu=plan.hu, site=plan.site, side=SIDE_NAMES[plan.side]))
    return stones


def _add_streaks(rng: np.random.Generator, hu: np.ndarray, grid: Grid, an: Anatomy, mimics: list[Mimic]) -> None:
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


def acquire(rng: np.random.Generator, c: Canvas, grid: Grid, an: Anatomy, mimics: list[Mimic]) -> np.ndarray:
    """What a scanner would show: the point spread, the streaks, correlated noise, whole HU in range."""
    sigma_psf = float(rng.uniform(0.3, 0.5))
    hu = ndimage.gaussian_filter(c.hu, sigma=(0, sigma_psf, sigma_psf))
    _add_streaks(rng, hu, grid, an, mimics)
    noise_sd = float(rng.uniform(5, 13))
    shape: tuple[int, ...] = hu.shape
    noise = rng.standard_normal(shape).astype(np.float32)
    noise = ndimage.gaussian_filter(noise, sigma=(0, 0.7, 0.7))
    noise *= noise_sd / max(float(noise.std()), 1e-6)
    hu += noise
    return np.clip(np.round(hu), -1024, 3071).astype(np.float32)
