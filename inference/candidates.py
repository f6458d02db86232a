"""Stage 1 of the cascade: cheap candidate finding at full resolution, and patch cutting.

A stone is dense (>= 200 HU, partial volume lowers small ones), small (1-20 mm)
and inside the body. So: voxels above ``threshold_hu`` inside the body, 3D
components, and away with components that cannot be a stone: larger than
``max_volume_mm3`` or longer than ``max_extent_mm`` in any direction (vertebrae,
pelvis, ribs). What remains (stones and their mimics) is cut into small patches
around each component on each of its slices, which the network (stage 2)
segments. The same rule with a higher threshold is the evaluation's baseline.

Optionally (``contrast_hu`` > 0) a second rule finds the tiny stones whose
densest voxel stays below ``threshold_hu`` after partial volume: voxels at
least ``contrast_hu`` above their local background (a white top-hat: HU minus
a grey opening over ``contrast_window_mm`` in-plane) and at least
``contrast_min_hu``, in components of at most ``contrast_max_voxels`` that do
not touch a dense candidate. Noise makes many of these; the network's second
look has to reject them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from inference.volume import Volume

BODY_HU = -500.0
BODY_STRIDE = 4


@dataclass(frozen=True)
class CandidateRule:
    threshold_hu: float = 130.0
    max_volume_mm3: float = 8000.0
    max_extent_mm: float = 30.0
    contrast_hu: float = 0.0
    """0 = no local-contrast candidates."""
    contrast_min_hu: float = 70.0
    contrast_window_mm: float = 3.5
    contrast_max_voxels: int = 12

    @classmethod
    def from_card(cls, block: dict[str, Any]) -> CandidateRule:
        """The card's ``candidates`` block (keys as the fields; missing ones take the defaults)."""
        d = cls()
        values = {k: block.get(k, getattr(d, k)) for k in cls.__dataclass_fields__}
        return cls(**{k: (int(v) if k == "contrast_max_voxels" else float(v))  # type: ignore[arg-type,misc]
                      for k, v in values.items()})

    def card(self) -> dict[str, float]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


DEFAULT_RULE = CandidateRule()
BASELINE_RULE = CandidateRule(threshold_hu=200.0)


@dataclass(frozen=True, eq=False)
class Candidates:
    """Components that may be stones, and where to look at them."""

    labels: np.ndarray
    """int32 (slices, rows, columns): component id per voxel, 0 = none (large ones removed)."""
    count: int
    centres: np.ndarray
    """int (n, 3): (slice, row, column) of every patch centre, sorted by slice."""
    component_of_centre: np.ndarray
    """int (n,): the component each patch centre belongs to."""
    dense_count: int = -1
    """Components 1..dense_count are dense ones, the rest local-contrast ones (-1: all dense)."""


def body_mask(hu: np.ndarray) -> np.ndarray:
    """The patient's body on a grid ``BODY_STRIDE`` times coarser in-plane (bool)."""
    coarse = hu[:, ::BODY_STRIDE, ::BODY_STRIDE] > BODY_HU
    labels, count = ndimage.label(coarse)
    if count == 0:
        return coarse
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    body = labels == int(sizes.argmax())
    for k in range(body.shape[0]):
        body[k] = ndimage.binary_fill_holes(body[k])
    return body


def find_candidates(volume: Volume, rule: CandidateRule = DEFAULT_RULE) -> Candidates:
    """Candidate components of ``volume`` under ``rule`` (see the module's text)."""
    hu = volume.hu
    dense = hu >= rule.threshold_hu
    # a preallocated int32 output: without it scipy labels into a wider temporary first
    labels = np.empty(dense.shape, dtype=np.int32)
    count = int(ndimage.label(dense, structure=np.ones((3, 3, 3), dtype=bool), output=labels))
    del dense
    if count == 0:
        return Candidates(labels, 0, np.zeros((0, 3), int), np.zeros(0, int))
    body = body_mask(hu)
    voxel_mm3 = volume.pixel_spacing[0] * volume.pixel_spacing[1] * volume.slice_spacing
    objects = ndimage.find_objects(labels)
    # relabel in place, box by box: kept components get 1..n, the others 0. A new id never
    # exceeds the old one, so a later component's voxels are never confused with a renamed one.
    # (np.take or bincount over the volume would widen it to int64: 8 bytes a voxel.)
    kept_boxes: list[tuple[int, tuple[slice, ...]]] = []
    for i, box in enumerate(objects, start=1):
        if box is None:
            continue
        region = labels[box]
        selected = region == i
        extent = (
            (box[0].stop - box[0].start) * volume.slice_spacing,
            (box[1].stop - box[1].start) * volume.pixel_spacing[0],
            (box[2].stop - box[2].start) * volume.pixel_spacing[1],
        )
        keep = int(selected.sum()) * voxel_mm3 <= rule.max_volume_mm3 and max(extent) <= rule.max_extent_mm
        if keep:
            k = (box[0].start + box[0].stop - 1) // 2
            r = min(body.shape[1] - 1, ((box[1].start + box[1].stop - 1) // 2) // BODY_STRIDE)
            c = min(body.shape[2] - 1, ((box[2].start + box[2].stop - 1) // 2) // BODY_STRIDE)
            keep = bool(body[k, r, c])
        if keep:
            kept_boxes.append((len(kept_boxes) + 1, box))
            region[selected] = len(kept_boxes)
        else:
            region[selected] = 0
    dense_count = len(kept_boxes)
    if rule.contrast_hu > 0:
        kept_boxes += _contrast_components(hu, labels, body, volume.pixel_spacing, rule, dense_count)
    centres = []
    owners = []
    for new_id, box in kept_boxes:
        local = labels[box] == new_id
        for dk in range(local.shape[0]):
            rr, cc = np.nonzero(local[dk])
            if rr.size == 0:
                continue
            centres.append((
                box[0].start + dk,
                box[1].start + (int(rr.min()) + int(rr.max())) // 2,
                box[2].start + (int(cc.min()) + int(cc.max())) // 2,
            ))
            owners.append(new_id)
    centres_arr = np.asarray(centres, dtype=int).reshape(-1, 3)
    owners_arr = np.asarray(owners, dtype=int)
    order = np.argsort(centres_arr[:, 0], kind="stable")
    return Candidates(labels, len(kept_boxes), centres_arr[order], owners_arr[order], dense_count)


def _contrast_components(hu: np.ndarray, labels: np.ndarray, body: np.ndarray,
                         pixel_spacing: tuple[float, float], rule: CandidateRule,
                         first: int) -> list[tuple[int, tuple[slice, ...]]]:
    """Add the local-contrast components to ``labels`` (ids first+1, ...) and return their boxes."""
    size = max(3, int(round(rule.contrast_window_mm / min(pixel_spacing))) | 1)
    seeds = (hu >= rule.contrast_min_hu) & (hu < rule.threshold_hu)
    if not seeds.any():
        return []
    # the top-hat only where it can matter: the slices and rows/columns holding seeds
    ks, rs, cs = (np.nonzero(seeds.any(axis=a))[0] for a in ((1, 2), (0, 2), (0, 1)))
    pad = size
    box = (slice(int(ks[0]), int(ks[-1]) + 1),
           slice(max(0, int(rs[0]) - pad), int(rs[-1]) + 1 + pad),
           slice(max(0, int(cs[0]) - pad), int(cs[-1]) + 1 + pad))
    sub = hu[box]
    background = ndimage.grey_opening(sub, size=(1, size, size))
    local = seeds[box] & (sub - background >= rule.contrast_hu)
    del background
    near_dense = ndimage.binary_dilation(labels[box] > 0, structure=np.ones((3, 3, 3), bool))
    local &= ~near_dense
    del near_dense
    small = np.empty(local.shape, dtype=np.int32)
    count = int(ndimage.label(local, structure=np.ones((3, 3, 3), dtype=bool), output=small))
    out: list[tuple[int, tuple[slice, ...]]] = []
    if count == 0:
        return out
    region_all = labels[box]
    for i, sbox in enumerate(ndimage.find_objects(small), start=1):
        if sbox is None:
            continue
        selected = small[sbox] == i
        if int(selected.sum()) > rule.contrast_max_voxels:
            continue
        k = (sbox[0].start + sbox[0].stop - 1) // 2 + box[0].start
        r = min(body.shape[1] - 1, ((sbox[1].start + sbox[1].stop - 1) // 2 + box[1].start) // BODY_STRIDE)
        c = min(body.shape[2] - 1, ((sbox[2].start + sbox[2].stop - 1) // 2 + box[2].start) // BODY_STRIDE)
        if not body[k, r, c]:
            continue
        new_id = first + len(out) + 1
        region_all[sbox][selected] = new_id
        full = tuple(slice(s.start + b.start, s.stop + b.start) for s, b in zip(sbox, box, strict=True))
        out.append((new_id, full))
    return out


def baseline_mask(volume: Volume, rule: CandidateRule = BASELINE_RULE) -> np.ndarray:
    """The plain baseline: every voxel of every candidate component under ``rule``."""
    return find_candidates(volume, rule).labels > 0


def cut_patches(hu: np.ndarray, centres: np.ndarray, size: int, context: int = 1) -> np.ndarray:
    """float32 (n, size, size, 2 * context + 1) windows of ``hu`` around each centre.

    Channel ``context`` is the centre's slice; the others are its neighbours (the
    edge slice repeats at the ends). Outside the image reads as air.
    """
    n = centres.shape[0]
    half = size // 2
    depth = 2 * context + 1
    out = np.full((n, size, size, depth), -1000.0, dtype=np.float32)
    slices, rows, cols = hu.shape
    for i, (k, r, c) in enumerate(centres):
        r0, c0 = r - half, c - half
        rs0, cs0 = max(0, r0), max(0, c0)
        rs1, cs1 = min(rows, r0 + size), min(cols, c0 + size)
        for d in range(depth):
            kk = min(slices - 1, max(0, k + d - context))
            out[i, rs0 - r0:rs1 - r0, cs0 - c0:cs1 - c0, d] = hu[kk, rs0:rs1, cs0:cs1]
    return out


def paste_patches(shape: tuple[int, int, int], centres: np.ndarray, patches: np.ndarray) -> np.ndarray:
    """Combine per-patch probabilities (n, size, size) into a volume by their maximum."""
    out = np.zeros(shape, dtype=np.float32)
    n, size = patches.shape[0], patches.shape[1]
    half = size // 2
    _, rows, cols = shape
    for i in range(n):
        k, r, c = centres[i]
        r0, c0 = r - half, c - half
        rs0, cs0 = max(0, r0), max(0, c0)
        rs1, cs1 = min(rows, r0 + size), min(cols, c0 + size)
        view = out[k, rs0:rs1, cs0:cs1]
        np.maximum(view, patches[i, rs0 - r0:rs1 - r0, cs0 - c0:cs1 - c0], out=view)
    return out
