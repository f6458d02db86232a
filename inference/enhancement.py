"""Contrast the header does not name: enhanced blood seen in the pixels.

``uronode.contrast`` reads the header (Series Description, Contrast/Bolus
Agent); where a site leaves both silent ("ABDOMEN 1.0 B30f", no agent) a
contrast phase would be read as the stone protocol with nothing said. Blood
tells: unenhanced blood measures about 30-60 HU (up to about 70 with a high
haematocrit), while the aorta measures about 150-200 HU in the portal-venous
and nephrographic phases, 250-450 HU in the arterial phase, and stays above
about 110 HU for minutes after an injection. So the node looks for the aorta
(or any large vessel that runs with it) and measures it.

What counts as enhanced blood, on every analysed slice (one every
``STEP_MM`` or more, on a copy averaged to about ``WORK_PIXEL_MM`` pixels,
smoothed by ``SMOOTH_MM``):

- a region of ``LOW_HU``-``HIGH_HU`` (opened by a square of ``2 OPEN_MM``, so that a
  vessel touching bone is cut from it),
- ``DIAMETER_MM`` across (by its area: a vessel from the iliac arteries to
  an aneurysm, not a bowel loop's wall or a bone's edge),
- round (its longer axis at most ``ROUND`` times its shorter: the aorta cut
  across, not a kidney, a spleen or a rib),
- even inside (its smoothed HU varying by at most ``EVEN_HU`` from
  ``CORE_MM`` inside its edge: blood, 5-16 HU on a real contrast CT, where
  cancellous bone, which the same range holds, is grainy: 30 HU and more
  on a real chest CT's vertebrae; a spine as even as blood, which no CT here
  shows, would be taken for a vessel);

and such regions must line up as a **vessel**: on analysed slices next to
each other (one analysed slice may miss it: a plaque, a slice of streaks),
each within ``DRIFT_MM`` of the last, for ``LENGTH_MM`` or more
along the body, as the abdominal aorta runs from the diaphragm to its
bifurcation. A round dense structure on a few slices (a vertebral body cut
thin, a large stone, a loop of bowel holding oral contrast) does not make
one.

What it does not see: a lone slice and a series shorter than ``LENGTH_MM``
(not checked: on one slice a bowel loop with oral contrast looks as the
aorta does), a phase whose blood has washed out below ``LOW_HU`` (an
excretory phase ten minutes or more after the injection, contrast then in
the collecting system), and a series that holds no large vessel. It
cautions; it never skips a series (a wrong skip costs the whole result).
Measured on the real CTs the lab can fetch and on generated series (the
cases and the figures: ``docs/receiving.md``, "Contrast the header does not
name").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

LOW_HU = 110.0
"""Lowest smoothed HU taken for enhanced blood: above unenhanced blood (30-60, about 70 at most)."""
HIGH_HU = 800.0
"""Highest smoothed HU taken: above an arterial or low-kV phase's aorta (up to about 600: probe 33 lost a 570 HU
aorta under 600, its brightest pixels cut out), below most cortical bone and stones."""
WORK_PIXEL_MM = 1.4
"""Pixels are averaged to about this size first (cost; a vessel of 14 mm is still 10 pixels across)."""
SMOOTH_MM = 1.0
"""Gaussian smoothing (sigma) before the range is taken: noise of low-dose CT does not make regions."""
OPEN_MM = 3.0
"""Half the side of the (square) opening that cuts a region's thin joins (a vessel touching bone)."""
DIAMETER_MM = (14.0, 50.0)
"""Across, by area: the iliac arteries to an aortic aneurysm."""
ROUND = 1.5
"""Longest to shortest axis (second moments) of a vessel cut across."""
CORE_MM = 3.0
"""How far inside its edge a region's evenness is measured (its edge is blurred into what surrounds it)."""
EVEN_HU = 20.0
"""Largest spread (standard deviation) of smoothed HU inside a region, 2 mm from its edge."""
STEP_MM = 8.0
"""Analysed slices are at least this far apart."""
DRIFT_MM = 12.0
"""A vessel moves at most this much in-plane from one analysed slice to the next (or the one after: one
analysed slice may miss it)."""
LENGTH_MM = 80.0
"""How far along the body a vessel must run (the abdominal aorta runs about 120-150 mm; generated bowel loops
holding oral contrast run up to 67 mm straight along the body); a shorter series is not checked."""


@dataclass(frozen=True)
class EnhancedBlood:
    """A vessel the node took for enhanced blood: its median HU and where it runs."""

    hu: float
    length_mm: float
    slices: int
    """Analysed slices it lies on."""

    def caution(self) -> str:
        return (f"Perhaps contrast-enhanced (a vessel {self.length_mm:.0f} mm long measures {self.hu:.0f} HU, where "
                "unenhanced blood measures 30-60 HU): the model was made for non-contrast CT; contrast in the "
                "kidneys, ureters, bladder and bowel can be reported as stones and can hide them.")


@dataclass(frozen=True)
class _Region:
    y_mm: float
    x_mm: float
    hu: float


def _averaged(image: np.ndarray, pixel_mm: tuple[float, float]) -> tuple[np.ndarray, tuple[float, float]]:
    """``image`` averaged over whole blocks of pixels to about ``WORK_PIXEL_MM``, and its new pixel size."""
    fy = max(1, round(WORK_PIXEL_MM / pixel_mm[0]))
    fx = max(1, round(WORK_PIXEL_MM / pixel_mm[1]))
    if fy == fx == 1:
        return image.astype(np.float32, copy=False), pixel_mm
    rows, columns = (image.shape[0] // fy) * fy, (image.shape[1] // fx) * fx
    blocks = image[:rows, :columns].astype(np.float32).reshape(rows // fy, fy, columns // fx, fx)
    return blocks.mean(axis=(1, 3)), (pixel_mm[0] * fy, pixel_mm[1] * fx)


def vessel_regions(image: np.ndarray, pixel_mm: tuple[float, float]) -> list[_Region]:
    """The regions of one axial ``image`` (HU) that look like a vessel of enhanced blood cut across (see the
    module), each with its centre (mm from the image's corner) and median HU."""
    work, (py, px) = _averaged(image, pixel_mm)
    smooth = ndimage.gaussian_filter(work, (SMOOTH_MM / py, SMOOTH_MM / px))
    inside = (smooth >= LOW_HU) & (smooth <= HIGH_HU)
    if not inside.any():
        return []
    pixel = float(np.sqrt(py * px))
    side = 2 * max(1, round(OPEN_MM / pixel)) + 1  # a square: separable, so a slice costs milliseconds
    inside = ndimage.maximum_filter(ndimage.minimum_filter(inside.view(np.uint8), size=side), size=side) > 0
    labels, count = ndimage.label(inside)
    regions: list[_Region] = []
    low, high = (np.pi * (d / 2.0) ** 2 / (py * px) for d in DIAMETER_MM)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None or not low <= sizes[index] <= high:
            continue
        region = labels[box] == index
        ys, xs = np.nonzero(region)
        axes = np.linalg.eigvalsh(np.cov(np.vstack([ys * py, xs * px])))
        ratio = float(np.sqrt(axes[1] / max(float(axes[0]), 1e-6)))
        if ratio > ROUND:
            continue
        core = ndimage.binary_erosion(region, iterations=max(1, math.ceil(CORE_MM / pixel)))
        values = smooth[box][core if core.sum() >= 4 else region]
        if float(values.std()) > EVEN_HU:
            continue
        regions.append(_Region(y_mm=float((ys.mean() + box[0].start) * py),
                               x_mm=float((xs.mean() + box[1].start) * px),
                               hu=float(np.median(work[box][region]))))
    return regions


def _analysed(offsets: np.ndarray) -> list[int]:
    """Indices of slices at least ``STEP_MM`` apart, from the first."""
    chosen: list[int] = []
    for k in np.argsort(offsets):
        if not chosen or offsets[k] - offsets[chosen[-1]] >= STEP_MM - 1e-6:
            chosen.append(int(k))
    return chosen


def enhanced_blood(hu: np.ndarray, pixel_mm: tuple[float, float], offsets_mm: np.ndarray) -> EnhancedBlood | None:
    """The longest vessel of enhanced blood in the axial slices ``hu`` (slices, rows, columns; HU) at
    ``offsets_mm`` along the body, or None where none is seen (see the module for what counts)."""
    offsets = np.asarray(offsets_mm, dtype=np.float64)
    if hu.shape[0] < 2 or float(offsets.max() - offsets.min()) < LENGTH_MM:
        return None
    picked = _analysed(offsets)
    # each region of the last two analysed slices, with where its vessel began and the HUs along it: a vessel
    # may miss one slice (a calcified plaque there, a slice of streaks) and go on
    best: EnhancedBlood | None = None
    recent: list[list[tuple[_Region, float, list[float]]]] = [[], []]
    for k in picked:
        current: list[tuple[_Region, float, list[float]]] = []
        for region in vessel_regions(hu[k], pixel_mm):
            start, values = float(offsets[k]), [region.hu]
            joined: list[tuple[float, list[float]]] = []
            for previous in recent:  # the slice before first; the one before it where that has nothing here
                joined = joined or [(s, v) for r, s, v in previous
                                    if np.hypot(r.y_mm - region.y_mm, r.x_mm - region.x_mm) <= DRIFT_MM]
            if joined:
                start, earlier = min(joined, key=lambda sv: sv[0])
                values = [*earlier, region.hu]
            current.append((region, start, values))
            length = float(offsets[k]) - start
            if len(values) > 1 and length >= LENGTH_MM - 1e-6 and (best is None or length > best.length_mm):
                best = EnhancedBlood(hu=float(np.median(values)), length_mm=length, slices=len(values))
        recent = [current, recent[0]]
    return best
