"""In-plane resampling to the pixel size the model learned at, and back.

The network works in pixels: a stone of 4 mm is 5 pixels at 0.8 mm and 7 at
0.6 mm, and a head trained at one scale scores the other worse (measured on
the real validation images made 0.8 and 1.25 times their size: 0.78 and 0.73
of the stones at <= 0.2 false stones per image, against 0.81 as they are).
CT is reconstructed at 0.5-1.0 mm pixels, so a model card may name the pixel
size it learned at (``preprocessing.resample_to_mm``); a series further from
it than a share of it (the card's ``preprocessing.resample_tolerance``,
default ``RESAMPLE_TOLERANCE``) is analysed on a copy resampled in-plane to it
(linear), and what the analysis gives is mapped back to the series' own grid:
the stone probability (linear), the mask (a pixel is on where the resampled
mask covers at least half of it; a component that would lose every pixel
keeps the one under its centre) and each candidate component's densest
voxel. Stones are then measured on the series itself, in its own millimetres,
and the results reference its own frames. Slices are never resampled along
the normal (the network sees neighbouring slices, not millimetres of them).

A copy finer on both axes than its series (a series of coarser pixels than the card's: more pixels)
keeps only the body's part (``body_window``: the rows and columns where any slice is denser than air,
``AIR_HU``, grown by ``BODY_MARGIN_MM``; ``copy_part``: those rows and columns of the whole copy);
beyond it the copy would be air, which the network reads beyond an image's edges anyway. A 1.0 mm
series of a 512 mm field of view, resampled whole to 0.75 mm, is 683 x 683 pixels a slice and took
2.6 GB on the benchmark's 300 slices; its body's part takes a fraction of that. What lies outside the
part gets no probability and no mask (it is air on every slice). The part is cut from each slice's
whole copy, so it samples the series at the whole copy's points whatever the part's bounds (probe 38:
a part resampled on its own sampled it at another phase, which a CT table or a speck in a corner moved,
and a 3.3 mm stone was measured 2.0 or 3.0 mm, a 4.9 mm one 3.7 to 5.1 mm, with nothing else changed).
A copy of coarser pixels is smaller than its series and is made whole, and so is a part that the
network would read as a tight crop (under the card's ``mirror_below_px`` a side, mirrored beyond its
edges) where the whole copy would not be.

A copy interpolated onto finer pixels keeps the noise's peaks but narrows
its spread, so the candidate rule measures the noise on the series itself
(``find_candidates(noise_of=)``); measured on the copy, a real chest CT's
noise fell from 68 to 46 HU and 26 noise peaks became false stones. A copy
averaged onto coarser pixels has less noise in its peaks too, and keeps its
own measurement.

Pixel centres follow OpenCV's convention: pixel ``i`` of the copy lies at
``(i + 0.5) * s - 0.5`` of the original, ``s`` its size over the copy's.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
from scipy import ndimage

from inference.components import ComponentTable
from inference.errors import VolumeError
from inference.volume import Volume

RESAMPLE_TOLERANCE = 0.05
"""A series within 5 % of the card's pixel size is analysed as it is, unless the card names another share."""


AIR_HU = -500.0
"""``body_window``: denser than this is the body (or the table under it); air is about -1000."""
BODY_MARGIN_MM = 10.0
"""``body_window``: air kept around the body's part."""


@dataclasses.dataclass(frozen=True)
class Window:
    """The rows ``r0:r1`` and columns ``c0:c1`` of a series that its resampled copy covers."""

    r0: int
    r1: int
    c0: int
    c1: int


def body_window(volume: Volume, margin_mm: float = BODY_MARGIN_MM) -> Window | None:
    """The rows and columns where any slice is denser than ``AIR_HU``, grown by ``margin_mm``; None where
    that is nearly the whole image (nine tenths of it or more) or nothing is."""
    _, rows, columns = volume.shape
    seen = np.zeros((rows, columns), dtype=bool)
    for s in volume.hu:  # a slice at a time: no mask of the whole series
        seen |= s > AIR_HU
    if not seen.any():
        return None
    rs, cs = np.nonzero(seen.any(axis=1))[0], np.nonzero(seen.any(axis=0))[0]
    mr = int(np.ceil(margin_mm / volume.pixel_spacing[0]))
    mc = int(np.ceil(margin_mm / volume.pixel_spacing[1]))
    window = Window(max(0, int(rs[0]) - mr), min(rows, int(rs[-1]) + 1 + mr),
                    max(0, int(cs[0]) - mc), min(columns, int(cs[-1]) + 1 + mc))
    if (window.r1 - window.r0) * (window.c1 - window.c0) >= 0.9 * rows * columns:
        return None
    return window


@dataclasses.dataclass(frozen=True)
class Grid:
    """The resampled copy's shape against the series': rows and columns of both."""

    rows: int
    columns: int
    new_rows: int
    new_columns: int

    @property
    def scale(self) -> tuple[float, float]:
        """Original pixels per resampled pixel (rows, columns)."""
        return self.rows / self.new_rows, self.columns / self.new_columns


MAX_FIELD_OF_VIEW_MM = 1000.0
"""The widest field of view a series to be resampled onto finer pixels may have: a CT's gantry bore is 700-850 mm,
so wider images carry a PixelSpacing that is not theirs, and their copy would take memory without bound."""


def resample_grid(volume: Volume, to_mm: float | None, tolerance: float = RESAMPLE_TOLERANCE) -> Grid | None:
    """The grid to analyse ``volume`` on, or None where it is analysed as it is (no target, or close to it)."""
    if not to_mm or to_mm <= 0:
        return None
    _, rows, columns = volume.shape
    dr, dc = volume.pixel_spacing
    if abs(dr - to_mm) <= tolerance * to_mm and abs(dc - to_mm) <= tolerance * to_mm:
        return None
    grid = Grid(rows, columns, max(1, round(rows * dr / to_mm)), max(1, round(columns * dc / to_mm)))
    height, width = rows * dr, columns * dc
    if (grid.new_rows > rows or grid.new_columns > columns) and max(height, width) > MAX_FIELD_OF_VIEW_MM:
        # probe 40: 128 pixels of 45 mm a side were made 7,680 a side, 5.3 GB for a 650 KB series
        raise VolumeError(
            f"the images would be {width:.0f} x {height:.0f} mm ({columns} x {rows} pixels of {dc:g} x {dr:g} mm),"
            f" wider than any CT's field of view (at most {MAX_FIELD_OF_VIEW_MM:.0f} mm): their PixelSpacing is"
            " not the images' own")
    return grid


@dataclasses.dataclass(frozen=True)
class Part:
    """The rows ``j0:j1`` and columns ``i0:i1`` of the whole resampled copy that a copy of the body's part holds."""

    j0: int
    j1: int
    i0: int
    i1: int

    @property
    def shape(self) -> tuple[int, int]:
        return self.j1 - self.j0, self.i1 - self.i0


def copy_part(window: Window, grid: Grid) -> Part:
    """The whole copy's rows and columns that cover ``window`` of the series."""
    sr, sc = grid.scale
    return Part(max(0, int(np.floor(window.r0 / sr))), min(grid.new_rows, int(np.ceil(window.r1 / sr))),
                max(0, int(np.floor(window.c0 / sc))), min(grid.new_columns, int(np.ceil(window.c1 / sc))))


def resample_volume(volume: Volume, grid: Grid, part: Part | None = None) -> Volume:
    """``volume`` resampled in-plane onto ``grid`` (linear), its geometry kept exact: the pixel spacing is
    the field of view over the new counts, and every slice's position moves to the new first pixel's centre.
    With ``part``, only those rows and columns of the whole copy, cut from each slice's whole copy (the same
    values the whole copy has there)."""
    sr, sc = grid.scale
    # area averaging where the copy is coarser (no aliasing of noise), linear where it is finer
    interpolation = cv2.INTER_AREA if sr > 1 and sc > 1 else cv2.INTER_LINEAR
    part = part or Part(0, grid.new_rows, 0, grid.new_columns)
    # filled a slice at a time: a stack of a list would hold the copy twice at its peak
    hu = np.empty((volume.shape[0], *part.shape), dtype=np.float32)
    for k, s in enumerate(volume.hu):
        whole = cv2.resize(np.ascontiguousarray(s, np.float32), (grid.new_columns, grid.new_rows),
                           interpolation=interpolation)
        hu[k] = whole[part.j0:part.j1, part.i0:part.i1]
    dr, dc = volume.pixel_spacing
    shift = (((sc - 1) / 2 + part.i0 * sc) * dc * np.asarray(volume.row_direction)
             + ((sr - 1) / 2 + part.j0 * sr) * dr * np.asarray(volume.column_direction))
    return dataclasses.replace(volume, hu=hu, positions=volume.positions + shift, pixel_spacing=(dr * sr, dc * sc))


def _whole(values: np.ndarray, grid: Grid, part: Part | None) -> np.ndarray:
    """A slice of a part's copy (or of the whole copy) on the whole copy's rows and columns, 0 outside the part."""
    if part is None:
        return values
    out = np.zeros((grid.new_rows, grid.new_columns), dtype=values.dtype)
    out[part.j0:part.j1, part.i0:part.i1] = values
    return out


def to_original(values: np.ndarray, grid: Grid, dtype: type = np.float32, part: Part | None = None) -> np.ndarray:
    """A (slices, new rows, new columns) array of numbers (of ``part`` of the copy, where given) back on the
    series' grid (linear), as ``dtype``, a slice at a time (no float32 copy of the whole series for a float16
    result)."""
    out: np.ndarray = np.zeros((values.shape[0], grid.rows, grid.columns), dtype=dtype)
    for k, s in enumerate(values):
        if s.any():
            out[k] = cv2.resize(_whole(np.asarray(s, np.float32), grid, part), (grid.columns, grid.rows),
                                interpolation=cv2.INTER_LINEAR)
    return out


def original_index(points: np.ndarray, grid: Grid) -> np.ndarray:
    """(n, 3) voxel indices (slice, row, column) of the copy -> the nearest voxels of the series."""
    sr, sc = grid.scale
    out = np.asarray(points, dtype=np.int64).copy()
    if out.size:
        out[:, 1] = np.clip(np.rint((out[:, 1] + 0.5) * sr - 0.5), 0, grid.rows - 1)
        out[:, 2] = np.clip(np.rint((out[:, 2] + 0.5) * sc - 0.5), 0, grid.columns - 1)
    return out


def mask_to_original(mask: np.ndarray, grid: Grid, part: Part | None = None) -> np.ndarray:
    """A uint8 mask of the copy (of ``part`` of it, where given) on the series' grid: on where it covers at
    least half a pixel; a component (26-connected) that would vanish keeps the series' voxel under its centre."""
    # read on the mask as it is, a slice or its box at a time: no bool copy of the whole copy
    back = np.zeros((mask.shape[0], grid.rows, grid.columns), dtype=np.uint8)
    slices = np.nonzero(mask.any(axis=(1, 2)))[0]
    for k in slices:
        back[k] = cv2.resize(_whole((mask[k] > 0).astype(np.float32), grid, part), (grid.columns, grid.rows),
                             interpolation=cv2.INTER_LINEAR) >= 0.5
    if not slices.size:
        return back
    # the components are labelled inside the box that holds them all: a mask is small, a series is not
    first = tuple(np.nonzero(mask.any(axis=axes))[0] for axes in ((1, 2), (0, 2), (0, 1)))
    box = tuple(slice(int(i[0]), int(i[-1]) + 1) for i in first)
    offset = np.array([b.start for b in box]) + (np.array([0, part.j0, part.i0]) if part is not None else 0)
    on = mask[box] > 0
    labels, count = ndimage.label(on, structure=np.ones((3, 3, 3), bool))
    centres = np.asarray(ndimage.center_of_mass(on, labels, range(1, count + 1))) + offset
    sr, sc = grid.scale
    for inner, (k, r, c) in zip(ndimage.find_objects(labels), original_index(np.rint(centres), grid), strict=True):
        (k0, k1), (r0, r1), (c0, c1) = ((s.start + o, s.stop + o) for s, o in zip(inner, offset, strict=True))
        covered = back[k0:k1, int(np.floor(r0 * sr)):int(np.ceil(r1 * sr)), int(np.floor(c0 * sc)):int(np.ceil(c1 * sc))]
        if not covered.any():
            back[k, r, c] = 1
    return back


def table_to_original(table: ComponentTable, grid: Grid, part: Part | None = None) -> ComponentTable:
    """The candidate components' table (of ``part`` of the copy, where given) with each densest voxel on the
    series' grid (scores, groups, sizes, significance and gas share as measured on the copy, in its
    millimetres; boxes kept only as a sign of which components exist)."""
    peaks = np.asarray(table.peaks, dtype=np.int64).reshape(-1, 3)
    if part is not None:
        peaks = peaks + np.array([0, part.j0, part.i0])
    return dataclasses.replace(table, peaks=original_index(peaks, grid))
