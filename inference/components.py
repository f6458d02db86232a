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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

GROUPS = ("dense_small", "dense_large", "contrast")


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
                   override_voxels=int(block.get("override_voxels", d.override_voxels)))

    def card(self) -> dict[str, Any]:
        return {"pixel": self.pixel, "dense_small": self.dense_small, "dense_large": self.dense_large,
                "contrast": self.contrast, "small_voxels": self.small_voxels, "score": self.score,
                "override_pixel": self.override_pixel, "override_voxels": self.override_voxels}

    def for_group(self, group: str) -> float:
        return float(getattr(self, group))


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

    def scores(self, kind: str) -> np.ndarray:
        return self.classifier if kind == "classifier" else self.pixel


def component_table(labels: np.ndarray, count: int, dense_count: int, hu: np.ndarray, prob: np.ndarray,
                    owners: np.ndarray, patch_scores: np.ndarray | None, small_voxels: int = 30) -> ComponentTable:
    """Measure every candidate component (``labels`` 1..count) for ``select_mask``."""
    boxes = ndimage.find_objects(labels, max_label=count) if count else []
    voxels = np.zeros(count, dtype=np.int64)
    pixel = np.zeros(count, dtype=np.float32)
    peaks = np.zeros((count, 3), dtype=np.int64)
    groups = np.empty(count, dtype=object)
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
    return ComponentTable(list(boxes), voxels, groups, classifier, pixel, peaks)


def kept_components(table: ComponentTable, thresholds: ComponentThresholds) -> np.ndarray:
    """Component ids (1-based) whose score reaches their group's threshold."""
    scores = table.scores(thresholds.score)
    if not scores.size:
        return np.zeros(0, dtype=np.int64)
    limits = np.array([thresholds.for_group(g) for g in table.groups], dtype=np.float32)
    keep = scores >= limits
    if thresholds.override_pixel is not None:
        keep |= ((table.groups == "dense_large") & (table.voxels >= thresholds.override_voxels)
                 & (table.pixel >= thresholds.override_pixel))
    return np.nonzero(keep)[0] + 1


def select_mask(labels: np.ndarray, prob: np.ndarray, table: ComponentTable,
                thresholds: ComponentThresholds) -> np.ndarray:
    """uint8 mask of the kept components (see the module's text)."""
    mask = np.zeros(labels.shape, dtype=np.uint8)
    grow = np.ones((3, 5, 5), dtype=bool)
    for cid in kept_components(table, thresholds):
        box = table.boxes[cid - 1]
        if box is None:
            continue
        big = tuple(slice(max(0, s.start - m), min(n, s.stop + m))
                    for s, m, n in zip(box, (1, 2, 2), labels.shape, strict=True))
        near = ndimage.binary_dilation(labels[big] == cid, structure=grow)
        mask[big] |= (near & (prob[big] >= thresholds.pixel)).astype(np.uint8)
        mask[tuple(table.peaks[cid - 1])] = 1
    return mask
