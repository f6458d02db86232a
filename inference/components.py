"""The component-level decision: which candidate components are stones, and their mask.

Every candidate component gets one score: the highest ``component`` output of
the network over the patches centred on it (models with a second head), or
else the highest pixel probability on its voxels. A component is kept when its
score reaches the threshold of its group, chosen separately on validation
series: dense components of at most ``small_voxels`` voxels, larger dense
ones, and local-contrast ones (see ``inference.candidates``). The mask of a
kept component: pixels with probability >= ``pixel`` within two pixels (and one
slice) of it, and always its densest voxel, so that a 1 mm stone the U-Net
draws faintly is not lost once its component is accepted. Pixel probabilities
away from every kept component are ignored.

A component can also be required to stand out of the noise of its own
surroundings (``min_significance``, off unless the card sets it): on its
densest voxel's slice, smoothed in-plane over ``SIGNIFICANCE_SMOOTH_MM``
(about a small stone's width: a stone keeps its level, a single pixel of
noise does not), its brightest point must stand at least that many noise
SDs above its background. The background is the median of the pixels
``SIGNIFICANCE_CLEAR_MM`` to ``SIGNIFICANCE_BACKGROUND_MM`` from it (within
``SIGNIFICANCE_BAND_HU``: not another dense structure, not air): what the
stone sits in, fat or urine or parenchyma. The noise is the median of the
local SDs over squares of ``SIGNIFICANCE_BLOCK_MM`` that lie wholly in the
band, within ``SIGNIFICANCE_RADIUS_MM`` of it and clear of it: where the
tissue is even, a square's SD is the noise; where a square straddles an edge
(fat against kidney) it is larger, and the median keeps the even ones as
long as they are most (a first design took the spread of all the
surrounding pixels, which mixes fat and parenchyma into "noise" and held
back small stones in the renal sinus). It is a constant-false-alarm rule,
as radar and detectors on noisy images use: a series' one noise figure
misses the noise of one region (the middle of a wide body, a slice resized
by a factor that is not whole), and a bright grain of that noise looks to
the network like a small stone. A component with too little measurable
surroundings (in the lung, at the image's edge) is not held back by it.

A component can also be required not to touch gas (``max_gas_share``, off unless the card sets it): on
its densest voxel's slice, the share of the pixels within ``GAS_REACH_MM`` of it (itself left out, and
only inside the image) at or below ``GAS_HU``. The urinary tract holds no gas; bowel content (a pill,
contrast, a faecal pellet), a calcified node at the lung's base and a rib's end against the lung do.
Fat never reaches -400 HU, even in a noisy series (it lies at -150 to -50 HU), so the rule needs no
noise figure. Its limits: an 8-bit image read through a soft-tissue window (the assumed 400/40: black
is -160 HU) cannot tell gas from fat, so the rule never fires on one (an image recognised as shown in
a wide window reads its black below -400 HU, and there it does); air let into the collecting system
or the bladder by a nephrostomy or a catheter, touching a stone, would hide that stone; and with
pixels over ``GAS_REACH_MM`` there are no surroundings to count (a share of 0).

A component can also be required to lie deep in the body (``min_depth_mm``, off unless the card sets
it): on its densest voxel's slice, the distance (mm, in-plane) from that voxel to the nearest pixel outside
the body must reach it. The urinary tract lies inside the abdominal and pelvic walls: skin, fat and
muscle, then the kidney's cortex or the bladder's wall; ECG electrodes, buttons, skin folds, a rib's or a
spinous process's cut end and calcified nodules in the subcutaneous fat lie within a few millimetres of
the skin. Outside the body is what is at or below ``OUTSIDE_HU`` (air) on the slice smoothed over
``OUTSIDE_SMOOTH_MM`` and connected to the image's edge; the lungs and gas in the bowel are enclosed,
so inside. The rule is measured only where the body is whole in the slice: the part of the body the
component lies in touches at most ``BODY_MAX_EDGE_SHARE`` of the image's edge. A crop of the kidneys
(the body fills it, and gas or lung cut by its edge is no skin), a coronal or sagittal slice cut at its
top and bottom, and a part of the body that the field of view cuts widely are not measured (infinite
depth): there the outside the rule needs is not in the image. Where the field of view cuts the body a
little, its edge counts as body, so a depth is never made smaller by it. As with the gas rule, an 8-bit
image read through a soft-tissue window (black is -160 HU read back: air, gas and, in a narrow window,
fat alike) shows no outside, and the rule never fires on one. Its limits: a stone in the penile
urethra, and one in a small child's or a very thin adult's kidney pressed against the back, could lie
within the required depth; the card says which depth it asks.

The surroundings rules are measured only for components whose score a threshold could keep
(``component_table``'s ``significance_from``); an unmeasured component (NaN) is never held back by
the gas or the depth rule.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from inference.candidates import voxels_in

GROUPS = ("dense_small", "dense_large", "contrast")

SIGNIFICANCE_SMOOTH_MM = 0.5
"""In-plane Gaussian SD (mm) of the slice the significance is measured on."""
SIGNIFICANCE_CLEAR_MM = 2.0
"""The background starts this far from the component (mm): its own blur is not background."""
SIGNIFICANCE_BACKGROUND_MM = 6.0
"""... and ends this far from it (mm)."""
SIGNIFICANCE_BLOCK_MM = 3.75
"""Side (mm) of the squares whose SDs measure the noise."""
SIGNIFICANCE_RADIUS_MM = 18.0
"""How far around the component the noise is measured (mm, beyond its bounding box)."""
SIGNIFICANCE_BAND_HU = (-200.0, 200.0)
"""The pixels that are background and noise: not another dense structure, not air or lung."""
SIGNIFICANCE_SCORE_FLOOR = 0.5
"""Components scored under this (and under every group's threshold) are not measured: no threshold keeps
them. ``lab.choose`` counts thresholds from 0.5 up."""
SIGNIFICANCE_MIN_PIXELS = 10
"""Fewer background pixels, or squares for the noise, than this: the significance is not measured (infinite)."""
GAS_HU = -400.0
"""A pixel at or below this is gas (bowel, lung, outside the body): fat and noise do not reach it."""
GAS_REACH_MM = 3.0
"""The surroundings whose gas is counted: pixels within this distance of the component (mm), in-plane."""
OUTSIDE_HU = -500.0
"""``body_depth``: at or below this on the smoothed slice, and connected to the image's edge, is outside the
body: air is about -1000 HU, fat lies at -150 to -50 (a soft-tissue window's black reads back as -160)."""
OUTSIDE_SMOOTH_MM = 1.0
"""``body_depth``: in-plane Gaussian SD (mm) of the slice the outside is found on: a pixel of noise does not
make or close a path from the outside into the body."""
BODY_MAX_EDGE_SHARE = 0.1
"""``body_depth``: the part of the body a component lies in may touch at most this share of the image's
edge pixels (a table, an arm or a large patient cut by the field of view); more, and the slice does not
show the body whole (a crop, a coronal or sagittal slice): the depth is not measured."""


@dataclass(frozen=True)
class ComponentThresholds:
    pixel: float = 0.5
    dense_small: float = 0.5
    dense_large: float = 0.5
    contrast: float = 0.5
    small_voxels: int = 30
    score: str = "classifier"
    """'classifier' (the network's component head) or 'pixel' (the highest pixel probability)."""
    override_pixel: float | None = None
    """A large dense component of at least ``override_voxels`` voxels whose highest pixel probability
    reaches this is kept whatever its score: the U-Net segments it as a stone with confidence, and a
    missed large stone costs more than a false positive. None: no override."""
    override_voxels: int = 100
    min_significance: float | None = None
    """A component is kept only when its significance (the module's text) reaches this; None: not required."""
    max_gas_share: float | None = None
    """A component is kept only when its gas share (the module's text) is at most this; None: not required."""
    min_depth_mm: float | None = None
    """A component is kept only when its depth in the body (the module's text, mm) reaches this; None: not
    required."""
    max_peak_hu: float | None = None
    """A component whose densest voxel reaches this (HU) is metal, not a stone: not kept (probe 36: clips and
    beads of 2,400-3,071 HU, the scanner's ceiling, were reported as stones; no urinary stone reaches 3,000 HU on
    conventional CT). None: not required."""

    @classmethod
    def from_card(cls, card: dict[str, Any], threshold: float) -> ComponentThresholds:
        """The card's ``components`` block; a card without one (the first model) behaves as before:
        every component whose highest pixel probability reaches ``threshold``."""
        block = card.get("components")
        if not block:
            return cls(pixel=threshold, dense_small=threshold, dense_large=threshold, contrast=threshold,
                       score="pixel")
        d = cls()
        return cls(pixel=float(block.get("pixel", d.pixel)), dense_small=float(block.get("dense_small", d.dense_small)),
                   dense_large=float(block.get("dense_large", d.dense_large)),
                   contrast=float(block.get("contrast", d.contrast)),
                   small_voxels=int(block.get("small_voxels", d.small_voxels)), score=str(block.get("score", d.score)),
                   override_pixel=None if block.get("override_pixel") is None else float(block["override_pixel"]),
                   override_voxels=int(block.get("override_voxels", d.override_voxels)),
                   min_significance=None if block.get("min_significance") is None
                   else float(block["min_significance"]),
                   max_gas_share=None if block.get("max_gas_share") is None else float(block["max_gas_share"]),
                   min_depth_mm=None if block.get("min_depth_mm") is None else float(block["min_depth_mm"]),
                   max_peak_hu=None if block.get("max_peak_hu") is None else float(block["max_peak_hu"]))

    def card(self) -> dict[str, Any]:
        return {"pixel": self.pixel, "dense_small": self.dense_small, "dense_large": self.dense_large,
                "contrast": self.contrast, "small_voxels": self.small_voxels, "score": self.score,
                "override_pixel": self.override_pixel, "override_voxels": self.override_voxels,
                "min_significance": self.min_significance, "max_gas_share": self.max_gas_share,
                "min_depth_mm": self.min_depth_mm, "max_peak_hu": self.max_peak_hu}

    def for_group(self, group: str) -> float:
        return float(getattr(self, group))

    @property
    def measures_surroundings(self) -> bool:
        """Whether a rule on the components' surroundings (significance, gas, depth) is required."""
        return (self.min_significance is not None or self.max_gas_share is not None
                or self.min_depth_mm is not None)


@dataclass(frozen=True, eq=False)
class ComponentTable:
    """One row per candidate component (index = component id - 1)."""

    boxes: list[tuple[slice, ...] | None]
    voxels: np.ndarray
    groups: np.ndarray
    """str: one of ``GROUPS``."""
    classifier: np.ndarray
    """float (count,): highest component-head output over the component's patches (0 without a head)."""
    pixel: np.ndarray
    """float (count,): highest pixel probability on the component's voxels."""
    peaks: np.ndarray
    """int (count, 3): the component's densest voxel."""
    significance: np.ndarray | None = None
    """float (count,): how many noise SDs of its surroundings the component stands above them (the
    module's text; inf where not measurable, NaN where its score is too low to be kept at all); None: not
    measured (no component is held back by it)."""
    gas: np.ndarray | None = None
    """float (count,): the share of gas around the component (the module's text; NaN where its score is too
    low to be kept at all); None: not measured."""
    depth: np.ndarray | None = None
    """float (count,): the depth of the component's densest voxel in the body, mm (the module's text; inf
    where the slice does not show the body whole, NaN where its score is too low to be kept at all); None:
    not measured."""
    peak_hu: np.ndarray | None = None
    """float (count,): the HU of the component's densest voxel (metal: ``ComponentThresholds.max_peak_hu``)."""

    def scores(self, kind: str) -> np.ndarray:
        return self.classifier if kind == "classifier" else self.pixel


def _reach(pixel_mm: tuple[float, float]) -> list[int]:
    """``SIGNIFICANCE_RADIUS_MM`` in pixels along rows and columns."""
    return [int(np.ceil(SIGNIFICANCE_RADIUS_MM / p)) for p in pixel_mm]


def significance(hu: np.ndarray, component: np.ndarray, pixel_mm: tuple[float, float]) -> float:
    """How many noise SDs of its surroundings a component stands above its background, on one slice
    (the module's text). ``hu``: the slice (rows, columns); ``component``: bool mask of the component
    on it; ``pixel_mm``: (row, column) spacing. inf when too little of its surroundings can be measured."""
    rows, cols = np.nonzero(component)
    if rows.size == 0:
        return float("inf")
    reach = _reach(pixel_mm)
    r0, r1 = max(0, rows.min() - reach[0]), min(hu.shape[0], rows.max() + reach[0] + 1)
    c0, c1 = max(0, cols.min() - reach[1]), min(hu.shape[1], cols.max() + reach[1] + 1)
    window = hu[r0:r1, c0:c1].astype(np.float32, copy=False)
    inside = component[r0:r1, c0:c1]
    smooth = ndimage.gaussian_filter(window, [SIGNIFICANCE_SMOOTH_MM / p for p in pixel_mm])

    def grown(mm: float) -> np.ndarray:
        size = [2 * max(1, int(round(mm / p))) + 1 for p in pixel_mm]
        return ndimage.binary_dilation(inside, structure=np.ones(size, bool))

    lo, hi = SIGNIFICANCE_BAND_HU
    in_band = (window >= lo) & (window <= hi)
    near = grown(SIGNIFICANCE_CLEAR_MM)
    background = smooth[grown(SIGNIFICANCE_BACKGROUND_MM) & ~near & in_band]
    block = [max(3, int(round(SIGNIFICANCE_BLOCK_MM / p))) for p in pixel_mm]
    mean = ndimage.uniform_filter(smooth, block)
    local_sd = np.sqrt(np.maximum(ndimage.uniform_filter(smooth * smooth, block) - mean * mean, 0.0))
    # squares wholly in the band whose every pixel is clear of the component
    whole = ndimage.minimum_filter(in_band & ~near, block)
    sds = local_sd[whole]
    if background.size < SIGNIFICANCE_MIN_PIXELS or sds.size < SIGNIFICANCE_MIN_PIXELS:
        return float("inf")
    # the component's own pixels and their rim: smoothing moves a 1-pixel stone's peak by a pixel at most
    peak = float(smooth[ndimage.binary_dilation(inside)].max())
    return (peak - float(np.median(background))) / max(float(np.median(sds)), 1.0)


def gas_share(hu: np.ndarray, component: np.ndarray, pixel_mm: tuple[float, float]) -> float:
    """The share of the pixels within ``GAS_REACH_MM`` of a component, on one slice and itself left out, that
    are gas (at or below ``GAS_HU``; the module's text). ``hu``: the slice; ``component``: its bool mask
    there; ``pixel_mm``: (row, column) spacing. 0 when nothing surrounds it."""
    if not component.any():
        return 0.0
    yy, xx = np.ogrid[[slice(-int(np.floor(GAS_REACH_MM / p)), int(np.floor(GAS_REACH_MM / p)) + 1)
                       for p in pixel_mm]]
    disc = (yy * pixel_mm[0]) ** 2 + (xx * pixel_mm[1]) ** 2 <= GAS_REACH_MM ** 2
    around = ndimage.binary_dilation(component, structure=disc) & ~component
    if not around.any():
        return 0.0
    return float(np.count_nonzero(hu[around] <= GAS_HU) / np.count_nonzero(around))


def body_depth(hu: np.ndarray, pixel_mm: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """The depth in the body (mm) of every pixel of one slice, and the labels of the body's parts (0:
    outside), by the module's text: ``depth`` is 0 outside, and inf in a part that touches more than
    ``BODY_MAX_EDGE_SHARE`` of the image's edge. ``hu``: the slice; ``pixel_mm``: (row, column) spacing."""
    smooth = ndimage.gaussian_filter(hu.astype(np.float32, copy=False), [OUTSIDE_SMOOTH_MM / p for p in pixel_mm])
    low = smooth <= OUTSIDE_HU
    regions, _ = ndimage.label(low)
    edge = np.concatenate([regions[0], regions[-1], regions[1:-1, 0], regions[1:-1, -1]])
    outside = np.isin(regions, np.unique(edge[edge > 0]))
    parts, count = ndimage.label(~outside)
    depth = np.full(hu.shape, np.inf)
    if not outside.any():
        return depth, parts
    # the image's edge counts as body: where the field of view cuts the body, the depth is to the skin seen
    depth = ndimage.distance_transform_edt(np.pad(~outside, 1, constant_values=True), sampling=pixel_mm)[1:-1, 1:-1]
    on_edge = np.concatenate([parts[0], parts[-1], parts[1:-1, 0], parts[1:-1, -1]])
    touching = np.bincount(on_edge, minlength=count + 1)
    cut = np.nonzero(touching > BODY_MAX_EDGE_SHARE * on_edge.size)[0]
    cut = cut[cut > 0]
    if cut.size:
        depth[np.isin(parts, cut)] = np.inf
    return depth, parts


def component_table(labels: np.ndarray, count: int, dense_count: int, hu: np.ndarray, prob: np.ndarray,
                    owners: np.ndarray, patch_scores: np.ndarray | None, small_voxels: int = 30,
                    pixel_mm: tuple[float, float] | None = None, significance_score: str = "classifier",
                    significance_from: float = -np.inf, measure_significance: bool = True,
                    measure_gas: bool = True, measure_depth: bool = False) -> ComponentTable:
    """Measure every candidate component (``labels`` 1..count) for ``select_mask``; with ``pixel_mm``
    (the slices' spacing, row and column) also the ``significance`` and the ``gas`` share on its densest
    voxel's slice of each one whose ``significance_score`` ('classifier' or 'pixel') reaches
    ``significance_from`` (NaN for the others: no threshold at or above it keeps them, and most
    candidates, bone and noise, score near 0). ``measure_significance`` / ``measure_gas``: False leaves that
    one unmeasured (None), for a card that does not use it; ``measure_depth``: True measures the ``depth`` in
    the body too (``body_depth``, once a slice)."""
    boxes = ndimage.find_objects(labels, max_label=count) if count else []
    voxels = np.zeros(count, dtype=np.int64)
    pixel = np.zeros(count, dtype=np.float32)
    peaks = np.zeros((count, 3), dtype=np.int64)
    groups = np.empty(count, dtype=object)
    sig = None if pixel_mm is None or not measure_significance else np.full(count, np.inf, dtype=np.float32)
    gas = None if pixel_mm is None or not measure_gas else np.zeros(count, dtype=np.float32)
    depth = None if pixel_mm is None or not measure_depth else np.full(count, np.inf, dtype=np.float32)
    for i, box in enumerate(boxes):
        if box is None:
            groups[i] = "dense_large"
            continue
        sel = labels[box] == i + 1
        voxels[i] = int(sel.sum())
        pixel[i] = float(prob[box][sel].max()) if voxels[i] else 0.0
        local = np.where(sel, hu[box], -np.inf)
        at = np.unravel_index(int(np.argmax(local)), local.shape)
        peaks[i] = [s.start + a for s, a in zip(box, at, strict=True)]
        if dense_count >= 0 and i + 1 > dense_count:
            groups[i] = "contrast"
        else:
            groups[i] = "dense_small" if voxels[i] <= small_voxels else "dense_large"
    classifier = np.zeros(count, dtype=np.float32)
    if patch_scores is not None and owners.size:
        np.maximum.at(classifier, owners - 1, patch_scores.astype(np.float32))
    if (sig is not None or gas is not None or depth is not None) and pixel_mm is not None:
        scores = classifier if significance_score == "classifier" else pixel
        reach = _reach(pixel_mm)
        depths: dict[int, np.ndarray] = {}
        for i, box in enumerate(boxes):
            if box is None:
                continue
            if scores[i] < significance_from:
                for measure in (sig, gas, depth):
                    if measure is not None:
                        measure[i] = np.nan
                continue
            # on the densest voxel's slice, cropped to the component's box and its surroundings' reach
            k = int(peaks[i][0])
            near = tuple(slice(max(0, b.start - r), b.stop + r) for b, r in zip(box[1:], reach, strict=True))
            on_slice = labels[k][near] == i + 1
            if sig is not None:
                sig[i] = significance(hu[k][near], on_slice, pixel_mm)
            if gas is not None:
                gas[i] = gas_share(hu[k][near], on_slice, pixel_mm)
            if depth is not None:
                if k not in depths:
                    depths[k] = body_depth(hu[k], pixel_mm)[0]
                depth[i] = depths[k][int(peaks[i][1]), int(peaks[i][2])]
    peak_hu = hu[peaks[:, 0], peaks[:, 1], peaks[:, 2]].astype(np.float32) if count else np.zeros(0, np.float32)
    return ComponentTable(list(boxes), voxels, groups, classifier, pixel, peaks, sig, gas, depth, peak_hu)


def held_back(table: ComponentTable, thresholds: ComponentThresholds) -> ComponentTable:
    """``table`` with the scores of the components that the card's significance, gas or depth rule holds back
    (``thresholds.min_significance``, ``max_gas_share``, ``min_depth_mm``) set to -1, which no threshold keeps: for
    counting thresholds on a grid (``lab.choose``) as ``kept_components`` decides."""
    low = np.zeros(len(table.boxes), dtype=bool)
    if thresholds.min_significance is not None and table.significance is not None:
        low |= table.significance < thresholds.min_significance
    if thresholds.max_gas_share is not None and table.gas is not None:
        low |= table.gas > thresholds.max_gas_share
    if thresholds.min_depth_mm is not None and table.depth is not None:
        low |= table.depth < thresholds.min_depth_mm
    if thresholds.max_peak_hu is not None and table.peak_hu is not None:
        low |= table.peak_hu >= thresholds.max_peak_hu
    if not low.any():
        return table
    return dataclasses.replace(table, classifier=np.where(low, -1.0, table.classifier).astype(np.float32),
                               pixel=np.where(low, -1.0, table.pixel).astype(np.float32))


def kept_components(table: ComponentTable, thresholds: ComponentThresholds) -> np.ndarray:
    """Component ids (1-based) whose score reaches their group's threshold (or that the override keeps),
    and that pass the card's significance, gas and depth rules where measured."""
    scores = table.scores(thresholds.score)
    if not scores.size:
        return np.zeros(0, dtype=np.int64)
    limits = np.array([thresholds.for_group(g) for g in table.groups], dtype=np.float32)
    keep = scores >= limits
    if thresholds.override_pixel is not None:
        keep |= ((table.groups == "dense_large") & (table.voxels >= thresholds.override_voxels)
                 & (table.pixel >= thresholds.override_pixel))
    if thresholds.min_significance is not None and table.significance is not None:
        keep &= table.significance >= thresholds.min_significance
    if thresholds.max_gas_share is not None and table.gas is not None:
        keep &= ~(table.gas > thresholds.max_gas_share)
    if thresholds.min_depth_mm is not None and table.depth is not None:
        keep &= ~(table.depth < thresholds.min_depth_mm)
    if thresholds.max_peak_hu is not None and table.peak_hu is not None:
        keep &= ~(table.peak_hu >= thresholds.max_peak_hu)
    return np.nonzero(keep)[0] + 1


def select_mask(labels: np.ndarray, prob: np.ndarray, table: ComponentTable,
                thresholds: ComponentThresholds, removed: np.ndarray | None = None) -> np.ndarray:
    """uint8 mask of the kept components (see the module's text); never on the voxels ``removed`` (sorted flat
    indices of the dense structures the candidate rule removed as too long, where it keeps clear of
    them: a kept component next to a stent grew into it and was measured with its HU, probe 36)."""
    mask = np.zeros(labels.shape, dtype=np.uint8)
    grow = np.ones((3, 5, 5), dtype=bool)
    for cid in kept_components(table, thresholds):
        box = table.boxes[cid - 1]
        if box is None:
            continue
        big = tuple(slice(max(0, s.start - m), min(n, s.stop + m))
                    for s, m, n in zip(box, (1, 2, 2), labels.shape, strict=True))
        near = ndimage.binary_dilation(labels[big] == cid, structure=grow)
        near &= prob[big] >= thresholds.pixel
        if removed is not None and removed.size:
            near &= ~voxels_in(removed, labels.shape, big)
        mask[big] |= near.astype(np.uint8)
        mask[tuple(table.peaks[cid - 1])] = 1
    return mask
