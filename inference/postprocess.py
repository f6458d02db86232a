"""From a stone mask on a ``Volume`` to measured stones (``Findings``).

3D connected components (26-connectivity, so a stone crossing slices diagonally
stays one stone), components below ``min_voxels`` dropped, then per stone:
the slices it spans (their SOP Instance UIDs), centroid in DICOM patient
coordinates (LPS, mm), largest in-plane diameter (axial for an axial series; mm, from PixelSpacing), length
(the largest extent in any direction, in patient geometry: ``max_diameter_mm`` alone under-reports a stone
that is longest head to feet, as ureteric stones often are), volume (mm^3, each slice's own extent, so uneven
spacing is honoured), mean and max HU, and side. Per slice: one box per stone with a margin (the paper's
green box), the stone's own box on it and its in-plane diameter there.

**Side.** A stone is 'left' or 'right' only when its centroid lies at least ``SIDE_TOLERANCE_MM`` (25 mm)
from the body's midline, otherwise 'midline' (no laterality: "near midline" in words). The midline is the
body's left-right centre on the stone's slices (its trunk's: an arm beside it or against it, the table, any part
smaller than a quarter of the largest is left out), which is the patient's only when the image shows the body's
whole width: where the body runs off the image's left or right edge (a kidney's targeted reconstruction, a
tight crop, a large patient), the centre is the image's, and a right kidney's stone was once reported left
(probe 14, C1). There the side is 'unknown' (no laterality: "side not determined"), unless the centre lies
within ``ISOCENTRE_AGREEMENT_MM`` of x = 0 (the scanner's isocentre, on which patients are centred) and
x = 0 lies in the image. A sagittal image shows no left and right at all: 'unknown' too. The bladder is a
midline organ and its stones lie anywhere in it, often 10-20 mm off the midline; a laterality there reads as
a distal ureteric stone on that side, which is managed differently, so a wrong side is worse than none.
Kidney stones (40-80 mm from the midline) and ureteric stones above the pelvic brim keep their side; a stone
at the vesico-ureteric junction (the ureteric orifices lie about 12 mm either side of the midline) loses it,
as a bladder stone there would.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from inference.volume import Volume

BODY_HU = -500.0
SIDE_TOLERANCE_MM = 25.0
"""A stone whose centroid lies within this distance of the body's midline (LPS x) is 'midline': no
laterality is stated (see the module's docstring). 5 mm gave 13 of 20 generated bladder stones a side."""
SIDE_WORDS = {"left": "left", "right": "right", "midline": "near midline", "unknown": "side not determined"}
"""``Stone.side`` in words, wherever a person reads it (the SR, the overlays' labels, ``uronode predict``)."""
CUT_EDGE_SHARE = 0.25
"""The body runs off an image's left or right edge when more than this share of that edge's pixels are body
(a CT table's ends or an arm's tip cut by the field of view are less; a kidney's targeted reconstruction,
all body, is far more)."""
ISOCENTRE_AGREEMENT_MM = 30.0
"""Where the body runs off the image's left or right edge, its centre is still taken for the midline when it
lies within this distance of x = 0 (the scanner's isocentre, where a patient is centred) and x = 0 lies in
the image; otherwise no side is stated."""
LENGTH_HULL_POINTS = 64
"""Above this many surface voxels the length is measured between the vertices of their convex hull."""


TINY_VOXELS = 2
"""A stone of this many voxels or fewer is at the limit of what the CT resolves: every output says that its size and
HU are understated (probe 18: a 1.9 mm, 270 HU stone read as one voxel, 0.8 mm and 97 HU, reported as exactly as
a 17 mm one)."""


@dataclass(frozen=True)
class SliceBox:
    """A box around one stone on one slice, pixel indices inclusive, margin included."""

    slice_index: int
    sop_instance_uid: str
    frame_number: int
    stone_index: int
    """0-based index into ``Findings.stones``."""
    row_min: int
    column_min: int
    row_max: int
    column_max: int
    diameter_mm: float = 0.0
    """The stone's largest in-plane diameter on this slice (mm), as ``max_axial_diameter_mm`` measures it."""
    stone_box: tuple[int, int, int, int] | None = None
    """(row_min, column_min, row_max, column_max) of the stone's own pixels on this slice, inclusive: the
    box without its margin (None where unknown: the margin box is then all there is)."""

    @property
    def tight(self) -> tuple[int, int, int, int]:
        """The stone's own box on this slice (the margin box where it is unknown)."""
        if self.stone_box is not None:
            return self.stone_box
        return self.row_min, self.column_min, self.row_max, self.column_max


@dataclass(frozen=True)
class Stone:
    """One stone as measured on the volume."""

    sop_instance_uids: tuple[str, ...]
    """SOP Instance UIDs of the slices it spans, in slice order."""
    slice_indices: tuple[int, ...]
    centroid_mm: tuple[float, float, float]
    """LPS patient coordinates (mm)."""
    max_diameter_mm: float
    """Largest in-plane diameter over its slices (axial for an axial series; a lone slice's own plane)."""
    length_mm: float
    """Largest extent in any direction (mm), in patient geometry: the largest distance between the centres
    of its surface voxels plus one voxel's width along that line, as the in-plane diameter is measured;
    never less than ``max_diameter_mm``. A stone 4 mm across and 12 mm head to feet is about 12 mm long."""
    volume_mm3: float
    mean_hu: float
    max_hu: float
    side: str
    """'left', 'right' (the patient's), 'midline' (within 25 mm of it: no laterality) or 'unknown' (the
    image does not show where the midline is: the module's text)."""
    voxel_count: int
    mean_probability: float = 1.0
    first_voxel: tuple[int, int, int] | None = None
    """(slice, row, column) of its first voxel in index order: which component of ``Findings.mask`` it is
    (the SEG's segment of this stone is that component)."""

    @property
    def resolution_note(self) -> str | None:
        """What the report says of a stone of ``TINY_VOXELS`` voxels or fewer, None for a larger one."""
        if not 0 < self.voxel_count <= TINY_VOXELS:
            return None
        return (f"{self.voxel_count} voxel{'s' if self.voxel_count != 1 else ''}, at the limit of what the CT"
                " resolves: its size and HU are understated")

    def to_json(self, lone: bool = False) -> dict[str, object]:
        """The stone as the findings' JSON gives it; ``lone``: found on one image, which shows one plane of it
        (no volume, no length beyond the plane's: as the SR gives none)."""
        return {
            # the figures as every output shows them (half_up from the measured values: probe 56, the upload page
            # rounded these two-decimal figures again, 3.95 to 4.0, where the report said 3.9)
            "reported": {"length_mm": None if lone else shown(self.length_mm, 1),
                         "max_diameter_mm": shown(self.max_diameter_mm, 1),
                         "volume_mm3": None if lone else shown(self.volume_mm3, 1), "mean_hu": shown(self.mean_hu, 0),
                         "max_hu": shown(self.max_hu, 0)},
            "resolution_note": self.resolution_note,
            "sop_instance_uids": list(self.sop_instance_uids),
            "centroid_mm": [round(v, 2) for v in self.centroid_mm],
            "max_diameter_mm": round(self.max_diameter_mm, 2),
            "length_mm": round(self.length_mm, 2),
            "volume_mm3": None if lone else round(self.volume_mm3, 2),
            "mean_hu": round(self.mean_hu, 1),
            "max_hu": round(self.max_hu, 1),
            "side": self.side,
            "slice_indices": list(self.slice_indices),
            "voxel_count": self.voxel_count,
            "mean_probability": round(self.mean_probability, 3),
        }


@dataclass(frozen=True, eq=False)
class Findings:
    """What the pipeline found in one series; ``mask`` is aligned with ``Volume.hu``."""

    study_instance_uid: str
    series_instance_uid: str
    frame_of_reference_uid: str
    stones: tuple[Stone, ...]
    boxes: tuple[SliceBox, ...]
    mask: np.ndarray
    """uint8 (slices, rows, columns): 1 where a kept stone is."""
    model_name: str = ""
    model_version: str = ""
    cautions: tuple[str, ...] = ()
    """What about the input makes these findings less sure than the model's figures say (a sentence each,
    ``inference.pipeline.input_cautions``): shown wherever the findings are, so a reader weighs them."""

    @property
    def lone(self) -> bool:
        """Found on one image, which shows one plane of a stone: its area times the image's thickness is no stone's
        volume (the SR, the CLI and the upload page give none; a program reading the JSON could not tell: probe
        18)."""
        return self.mask.ndim == 3 and self.mask.shape[0] == 1

    @property
    def slices_with_stones(self) -> tuple[int, ...]:
        return tuple(sorted({b.slice_index for b in self.boxes}))

    def to_json(self) -> dict[str, object]:
        stones = [s.to_json(lone=self.lone) for s in self.stones]
        return {
            "study_instance_uid": self.study_instance_uid,
            "series_instance_uid": self.series_instance_uid,
            "model": {"name": self.model_name, "version": self.model_version},
            "stones": stones,
            # only where there is one: the findings of an ordinary series (and the instance UIDs derived from
            # them, inference.writers.sources) stay as they were
            **({"cautions": list(self.cautions)} if self.cautions else {}),
        }


def max_axial_diameter_mm(rows: np.ndarray, columns: np.ndarray, pixel_spacing: tuple[float, float]) -> float:
    """Largest distance across a set of pixels of one slice (mm): the larger of two estimates (``_length``),
    the farthest pixel centres plus half a pixel along that line (an irregular stone's extent), and the long
    axis of the ellipse with the pixels' second moments (a round or oval stone's diameter, which the pixel
    steps do not bias). A single pixel measures its own width."""
    if rows.size == 0:
        return 0.0
    points = np.stack([rows * pixel_spacing[0], columns * pixel_spacing[1]], axis=1).astype(np.float64)
    if points.shape[0] == 1:
        return float(max(pixel_spacing))
    outline = points
    if points.shape[0] > 64:
        from scipy.spatial import ConvexHull, QhullError

        try:
            outline = points[ConvexHull(points).vertices]
        except QhullError:  # collinear pixels: keep them all
            outline = points
    diff = outline[:, None, :] - outline[None, :, :]
    dist = np.sqrt((diff**2).sum(-1))
    i, j = np.unravel_index(int(dist.argmax()), dist.shape)
    direction = diff[i, j] / dist[i, j]
    half = 0.5 * _voxel_chord(direction, np.asarray(pixel_spacing, dtype=np.float64))
    return _length(float(dist[i, j]) + half, points)


def _length(extent: float, points: np.ndarray) -> float:
    """The larger of ``extent`` (farthest centres plus half a pixel) and the long axis of the ellipse with the
    ``points``' second moments, ``2 * sqrt(4 * largest variance)`` (a solid ellipse's variance along an axis is
    its semi-axis squared over 4).

    Why both (probe 14, C2): the farthest centres lie inside a digitised stone's edge by up to a pixel, and
    adding a whole pixel's width corner to corner (as it once was) made round stones of 3-6 mm 13-21 % too
    wide, while adding half a pixel measures an oval stone's pointed ends 5-15 % short. The moments' long
    axis is within a few per cent for discs and ovals from 4 mm up, wherever they lie on the grid; the
    extent keeps an irregular stone's (a staghorn's) farthest reach (tests/inference/
    test_stone_side_and_size.py)."""
    centred = points - points.mean(axis=0)
    largest = float(np.linalg.eigvalsh(centred.T @ centred / points.shape[0])[-1])
    return max(extent, 2.0 * float(np.sqrt(4.0 * max(largest, 0.0))))


def _voxel_chord(direction: np.ndarray, spacing: np.ndarray) -> float:
    """The chord through a voxel's centre along ``direction`` (a unit vector in the voxel's own axes,
    ``spacing`` its widths), the voxel taken as the ellipsoid its box holds: its width along an axis, and for
    a cube the same in every direction (its corners, which no digitised round stone fills, are not
    counted)."""
    return 1.0 / float(np.sqrt(((direction / spacing) ** 2).sum()))


def _farthest_pair(points: np.ndarray) -> tuple[int, int, float]:
    """Indices of the two points farthest apart and their distance; a block of rows at a time, so that many
    points never make a square matrix of all distances at once."""
    n = points.shape[0]
    best = (0, 0, 0.0)
    rows = max(1, 1_000_000 // max(n, 1))
    for start in range(0, n, rows):
        diff = points[start:start + rows, None, :] - points[None, :, :]
        dist2 = (diff**2).sum(-1)
        flat = int(dist2.argmax())
        i, j = divmod(flat, n)
        if dist2.flat[flat] > best[2] ** 2:
            best = (start + i, j, float(np.sqrt(dist2.flat[flat])))
    return best


def _hull_vertices(points: np.ndarray) -> np.ndarray:
    """Indices of the points on their convex hull (all of them when there are few, or when they are flat and
    Qhull's joggle fails too): the farthest two points are hull vertices."""
    everything = np.arange(points.shape[0])
    if points.shape[0] <= LENGTH_HULL_POINTS:
        return everything
    from scipy.spatial import ConvexHull, QhullError

    for options in (None, "QJ"):  # a stone on one slice is flat: joggled, Qhull still finds its outline
        try:
            return np.asarray(ConvexHull(points, qhull_options=options).vertices)
        except (QhullError, ValueError):
            continue
    return everything


def _stacking_step(volume: Volume) -> np.ndarray:
    """Per slice, the edge of its voxels that crosses the slice (LPS mm): along the table, as the slices are
    stacked (a tilted gantry steps along the table, not along the normal), as long as reaches the slice's own
    extent along the normal. A lone slice's edge is the normal times its thickness."""
    normal = volume.normal / np.linalg.norm(volume.normal)
    extent = np.asarray(volume.slice_extent_mm, dtype=np.float64)
    if volume.positions.shape[0] < 2:
        return extent[:, None] * normal[None, :]
    table = np.diff(np.asarray(volume.positions, dtype=np.float64), axis=0).sum(axis=0)
    along = float(table @ normal)
    if abs(along) < 1e-6:
        return extent[:, None] * normal[None, :]
    table = table / along  # one mm along the normal
    return extent[:, None] * table[None, :]


def stone_length_mm(volume: Volume, voxels: np.ndarray, steps: np.ndarray | None = None) -> float:
    """Largest extent (mm) of a set of voxels (``(n, 3)`` indices: slice, row, column) in any direction.

    The largest distance between voxel centres in patient coordinates (a tilted gantry's true geometry)
    plus half a voxel along that line, the voxel taken as the ellipsoid its box holds (``_voxel_chord``; a
    tilted gantry's voxel is a slanted box, its third edge the step along the table), as
    ``max_axial_diameter_mm`` takes its extent in the plane. The stone's length is never less than its
    largest in-plane diameter (``measure_stones``), whose moments measure a round stone without the voxels'
    excess; across the slices their moments would not (two slices of 5 mm make a 3 mm stone 11 mm long), so
    a stone long along the slices' normal is measured by its extent alone: on digitised ovoids and spindles
    long head to feet at 1.25 mm slices, 4-14 % and 7-30 % short (the slices' step, not the stone, decides
    where its ends are seen), where a voxel's corner-to-corner width made round stones 14-34 % too long.
    Give only the surface voxels of a large stone: its hull is all that counts. ``steps``:
    ``_stacking_step(volume)``, when measuring many stones.
    """
    if voxels.shape[0] == 0:
        return 0.0
    if steps is None:
        steps = _stacking_step(volume)
    points = volume.index_to_patient(voxels)
    hull = _hull_vertices(points)
    a, b, dist = _farthest_pair(points[hull])
    if dist == 0.0:
        return 0.0
    i, j = int(hull[a]), int(hull[b])
    u = (points[j] - points[i]) / dist
    step = (steps[int(voxels[i, 0])] + steps[int(voxels[j, 0])]) / 2.0
    edges = np.stack([np.asarray(volume.row_direction, dtype=np.float64) * volume.pixel_spacing[1],
                      np.asarray(volume.column_direction, dtype=np.float64) * volume.pixel_spacing[0], step], axis=1)
    try:
        across = np.linalg.solve(edges, u)  # u in the voxel's own edges: its widths along them are 1
        half = 0.5 * _voxel_chord(across, np.ones(3))
    except np.linalg.LinAlgError:
        half = 0.0
    return float(dist) + half


LIMB_SHARE = 0.25
"""On a slice, a part of the body smaller than this share of the largest is not the trunk: an arm beside the body
(about a tenth of the abdomen's area), the table, a hand, a bag. Two thighs, alike in size, both stay."""
TRUNK_GRID_MM = 3.0
"""The trunk is found on the slice sampled about this coarsely: its centre is wanted to a millimetre or two (the
side's tolerance is 25 mm), and the opening below costs a fiftieth of what it would on the full grid."""
LIMB_EROSION_MM = 20.0
"""A limb joined to the trunk along less than about twice this is cut from it (an arm lying against the flank);
one joined along more (pressed to it over its whole length) still counts, and moves the midline its way."""

Centre = tuple[int, float, float]
"""A slice's trunk: its pixel count, and the sums of its pixels' rows and columns (the slice's own grid)."""


def _trunk_centre(body: np.ndarray, pixel_mm: float) -> Centre:
    """The trunk of a slice's body (``body``: its voxels above ``BODY_HU``): the body eroded by a disk of
    :data:`LIMB_EROSION_MM`, which cuts from it an arm that lies against the flank along less than the disk's
    width, less its parts smaller than :data:`LIMB_SHARE` of the largest (an arm apart, the table), grown back. Probe 52: an arm beside the body moved the
    midline 15-20 mm its way, and kidney stones 37 mm off it were called near midline; review 51: with one arm
    touching the body and the other apart, leaving out only the parts apart moved it the other way. A slice
    whose opened body is empty (a thin structure only) counts its body whole."""
    step = max(1, int(round(TRUNK_GRID_MM / pixel_mm)))
    small = body[step // 2::step, step // 2::step]
    radius = max(1, int(round(LIMB_EROSION_MM / (step * pixel_mm))))
    r, c = np.ogrid[-radius:radius + 1, -radius:radius + 1]
    disk = r * r + c * c <= radius * radius
    # the cores (the body eroded: a limb's is apart from the trunk's once its join is narrower than the disk),
    # the large ones grown back within the body
    cores, count = ndimage.label(ndimage.binary_erosion(small, structure=disk), structure=np.ones((3, 3), dtype=bool))
    if count:
        areas = np.bincount(cores.ravel())[1:]
        kept = np.isin(cores, np.flatnonzero(areas >= LIMB_SHARE * areas.max()) + 1)
        trunk = ndimage.binary_dilation(kept, structure=disk) & small
    else:
        trunk = small
    rows, columns = np.nonzero(trunk)
    return (int(rows.size), float((rows * step + step // 2).sum()), float((columns * step + step // 2).sum()))


def _midline_x(volume: Volume, slices: np.ndarray, centres: dict[int, Centre] | None = None) -> float:
    """The body's left-right centre (LPS x, mm) over the given slices: its trunk's (:func:`_trunk_centre`), each
    slice's found once for all the stones on it (``centres``)."""
    centres = {} if centres is None else centres
    sums = np.zeros(3, dtype=np.float64)
    n = 0
    for i, k in enumerate(slices):
        if int(k) not in centres:
            centres[int(k)] = _trunk_centre(volume.hu[k] > BODY_HU, min(volume.pixel_spacing))
        on, row_sum, column_sum = centres[int(k)]
        n += on
        sums += (i * on, row_sum, column_sum)
    if n == 0:
        return float(volume.index_to_patient(np.array([0, volume.shape[1] / 2, volume.shape[2] / 2]))[0])
    mean = [float(v) / n for v in sums]
    centre = np.array([mean[0] + slices.min(), mean[1], mean[2]])
    return float(volume.index_to_patient(centre)[0])


def _lateral_edges_cut(volume: Volume, slices: np.ndarray) -> bool:
    """Whether the body runs off the image's left or right edge on these slices: more than
    ``CUT_EDGE_SHARE`` of an edge's pixels are body (the table's ends or an arm's tip are less)."""
    columns_lateral = abs(volume.row_direction[0]) >= abs(volume.column_direction[0])
    for k in slices:
        body = volume.hu[k] > BODY_HU
        edges = (body[:, 0], body[:, -1]) if columns_lateral else (body[0, :], body[-1, :])
        if any(float(edge.mean()) > CUT_EDGE_SHARE for edge in edges):
            return True
    return False


def _x_range(volume: Volume, k: int) -> tuple[float, float]:
    """The patient x (LPS, mm) the image of slice ``k`` spans, from its corners."""
    rows, columns = volume.shape[1:]
    corners = np.array([[k, r, c] for r in (0, rows - 1) for c in (0, columns - 1)], dtype=np.float64)
    xs = volume.index_to_patient(corners)[:, 0]
    return float(xs.min()), float(xs.max())


def _side(volume: Volume, centroid_x: float, slices: np.ndarray, centres: dict[int, Centre] | None = None) -> str:
    """'left', 'right', 'midline' or 'unknown' (the module's text, "Side")."""
    if abs(volume.row_direction[0]) < 0.5 and abs(volume.column_direction[0]) < 0.5:
        return "unknown"  # a sagittal image: its plane shows no left and right, nor where the midline is
    midline = _midline_x(volume, slices, centres)
    if _lateral_edges_cut(volume, slices):
        low, high = _x_range(volume, int(slices[0]))
        if not (low <= 0.0 <= high and abs(midline) <= ISOCENTRE_AGREEMENT_MM):
            return "unknown"  # the body's centre is the image's, not the patient's midline
    offset = centroid_x - midline
    if abs(offset) <= SIDE_TOLERANCE_MM:
        return "midline"
    return "left" if offset > 0 else "right"  # LPS: +x is the patient's left


def half_up(value: float, digits: int) -> float:
    """``value`` rounded to ``digits`` decimals, halves away from zero (202.5 -> 203), as a person rounds: Python's
    round() and format() take halves to the even neighbour (202). Every output rounds a stone's figures so (probe
    52: the SR said 101.3 mm3 where the table, the overlay and the SEG said 101.2)."""
    scaled = abs(value) * 10**digits
    return math.copysign(math.floor(scaled + 0.5 + 1e-9) / 10**digits, value)


def shown(value: float, digits: int) -> str:
    """``value`` as text, :func:`half_up` to ``digits`` decimals."""
    return f"{half_up(value, digits):.{digits}f}"


def measure_stones(
    volume: Volume,
    mask: np.ndarray,
    *,
    probability: np.ndarray | None = None,
    min_voxels: int = 1,
    box_margin_mm: float = 5.0,
    model_name: str = "",
    model_version: str = "",
    max_hu: float | None = None,
) -> Findings:
    """Components of ``mask`` (bool/uint8, shaped like ``volume.hu``) measured as stones; none whose densest voxel
    reaches ``max_hu`` (metal: ``ComponentThresholds.max_peak_hu``, judged on the series' own voxels, as a series
    analysed on a resampled copy has its metal's peak averaged down there: review 34)."""
    if mask.shape != volume.hu.shape:
        raise ValueError(f"mask shape {mask.shape} differs from volume shape {volume.hu.shape}")
    # label only the box around the mask: a volume-sized int32 label array is 4 bytes a voxel (and the
    # box is found on the mask as it is: a volume-sized bool copy would be one more)
    spans = [np.flatnonzero(mask.any(axis=axes)) for axes in ((1, 2), (0, 2), (0, 1))]
    if any(span.size == 0 for span in spans):
        spans = [np.array([0, 0])] * 3
    origin = np.array([int(span[0]) for span in spans])
    crop = tuple(slice(int(span[0]), int(span[-1]) + 1) for span in spans)
    labels, count = ndimage.label(mask[crop] > 0, structure=np.ones((3, 3, 3), dtype=bool))
    centres: dict[int, Centre] = {}  # each slice's trunk, for the sides of all the stones on it
    objects = ndimage.find_objects(labels)
    extent = volume.slice_extent_mm
    steps = _stacking_step(volume)
    area = volume.pixel_spacing[0] * volume.pixel_spacing[1]
    margin_r = int(np.ceil(box_margin_mm / volume.pixel_spacing[0]))
    margin_c = int(np.ceil(box_margin_mm / volume.pixel_spacing[1]))
    rows_n, cols_n = volume.shape[1:]
    kept = np.zeros(volume.shape, dtype=np.uint8)
    found: list[tuple[float, Stone, list[tuple[int, int, int, int, int, float, tuple[int, int, int, int]]]]] = []
    for label, box in enumerate(objects, start=1):
        if box is None:
            continue
        local = labels[box] == label
        n = int(local.sum())
        if n < min_voxels:
            continue
        kept[crop][box][local] = 1
        idx = np.argwhere(local) + np.array([s.start for s in box]) + origin
        hu = volume.hu[idx[:, 0], idx[:, 1], idx[:, 2]]
        if max_hu is not None and float(hu.max()) >= max_hu:
            kept[crop][box][local] = 0
            continue
        centroid = volume.index_to_patient(idx).mean(axis=0)
        slices = np.unique(idx[:, 0])
        diameter = 0.0
        per_slice = []
        for k in slices:
            on = idx[idx[:, 0] == k]
            here = max_axial_diameter_mm(on[:, 1], on[:, 2], volume.pixel_spacing)
            diameter = max(diameter, here)
            r0, c0 = int(on[:, 1].min()), int(on[:, 2].min())
            r1, c1 = int(on[:, 1].max()), int(on[:, 2].max())
            per_slice.append((
                int(k),
                max(0, r0 - margin_r),
                max(0, c0 - margin_c),
                min(rows_n - 1, r1 + margin_r),
                min(cols_n - 1, c1 + margin_c),
                here,
                (r0, c0, r1, c1),
            ))
        # the surface voxels (a face on the outside): the hull of the stone is theirs, and a large
        # component has far fewer of them than voxels
        surface = local & ~ndimage.binary_erosion(local, structure=ndimage.generate_binary_structure(3, 1))
        outer = np.argwhere(surface) + np.array([s.start for s in box]) + origin
        length = max(diameter, stone_length_mm(volume, outer, steps))
        prob = float(probability[idx[:, 0], idx[:, 1], idx[:, 2]].mean()) if probability is not None else 1.0
        stone = Stone(
            sop_instance_uids=tuple(volume.sop_instance_uids[k] for k in slices),
            slice_indices=tuple(int(k) for k in slices),
            centroid_mm=(float(centroid[0]), float(centroid[1]), float(centroid[2])),
            max_diameter_mm=diameter,
            length_mm=length,
            volume_mm3=float((extent[idx[:, 0]] * area).sum()),
            mean_hu=float(hu.mean()),
            max_hu=float(hu.max()),
            side=_side(volume, float(centroid[0]), slices, centres),
            voxel_count=n,
            mean_probability=prob,
            first_voxel=(int(idx[0, 0]), int(idx[0, 1]), int(idx[0, 2])),
        )
        found.append((float(centroid[2]), stone, per_slice))
    # order stones from head to feet, then by x, so the numbering is stable
    found.sort(key=lambda item: (-item[0], item[1].centroid_mm[0]))
    stones = tuple(item[1] for item in found)
    boxes = tuple(
        SliceBox(
            slice_index=k,
            sop_instance_uid=volume.sop_instance_uids[k],
            frame_number=volume.frame_numbers[k],
            stone_index=i,
            row_min=r0, column_min=c0, row_max=r1, column_max=c1,
            diameter_mm=here, stone_box=tight,
        )
        for i, item in enumerate(found)
        for (k, r0, c0, r1, c1, here, tight) in item[2]
    )
    boxes = tuple(sorted(boxes, key=lambda b: (b.slice_index, b.stone_index)))
    return Findings(
        study_instance_uid=volume.study_instance_uid,
        series_instance_uid=volume.series_instance_uid,
        frame_of_reference_uid=volume.frame_of_reference_uid,
        stones=stones,
        boxes=boxes,
        mask=kept,
        model_name=model_name,
        model_version=model_version,
    )
