"""Choosing a model's component thresholds on labelled real images (``uronode choose``).

Every candidate component of every image is scored once (``Pipeline.analyse``);
then every combination of the three groups' thresholds (dense small, dense
large, local contrast) on a grid is counted without running the network again:
a box is found when a kept component's densest pixel lies in it, grown by
``margin_mm``; a kept component in no box is a false stone. The rule that chose
3.0.0's and 3.1.0's thresholds: the most boxes found with at most
``max_false`` false stones per image (ties: fewer false stones, then the
higher thresholds). Run it on the validation side of the split only.

``allowed`` adds bounds the real images cannot show (they all hold a stone):
``uronode choose --stone-free DIR`` keeps only thresholds that put a false
stone on at most a given share of the slices of a real stone-free CT, each
predicted alone (``lab.standins.stone_free_share_at_most``), and
``--series-max-false F`` only those with at most F false stones per generated
validation series on average (``lab.standins.false_per_case_at_most``).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from inference.components import GROUPS, ComponentTable
from inference.volume import Volume
from lab.realimages import LabelledImage, image_volume

GRID = (0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass(frozen=True)
class ComponentRow:
    """One candidate component of one image: its group, its score, the boxes its densest pixel lies in."""

    image: int
    """The image's place in the images given to ``component_rows``: unique, where names need not be."""
    group: str
    score: float
    boxes: tuple[int, ...]


@dataclass(frozen=True)
class Choice:
    thresholds: dict[str, float]
    sensitivity: float
    """Boxes found, over every box of the images."""
    false_per_image: float


def component_rows(images: Iterable[LabelledImage], analyse: Callable[[Volume], ComponentTable],
                   window: str = "auto", margin_mm: float = 2.0, score: str = "classifier") -> list[ComponentRow]:
    """Every candidate component of every image, scored once by ``analyse`` (``score``: the card's kind)."""
    rows = []
    for index, im in enumerate(images):
        table = analyse(image_volume(im.as_hu(window), im.name, im.pixel_mm))
        grown = [b.grown(margin_mm / im.pixel_mm) for b in im.boxes]
        scores = table.scores(score)
        for i, box in enumerate(table.boxes):
            if box is None:
                continue
            _, row, column = (int(v) for v in table.peaks[i])
            rows.append(ComponentRow(index, str(table.groups[i]), float(scores[i]),
                                     tuple(j for j, b in enumerate(grown) if b.contains(row, column))))
    return rows


def count(rows: Sequence[ComponentRow], thresholds: dict[str, float], boxes: int, images: int) -> tuple[float, float]:
    """(boxes found / ``boxes``, false stones per image) at ``thresholds``."""
    found: set[tuple[int, int]] = set()
    false = 0
    for r in rows:
        if r.score < thresholds[r.group]:
            continue
        if r.boxes:
            found.update((r.image, b) for b in r.boxes)
        else:
            false += 1
    return len(found) / max(1, boxes), false / max(1, images)


def choose(rows: Sequence[ComponentRow], boxes: int, images: int, max_false: float,
           grid: Sequence[float] = GRID, allowed: Callable[[dict[str, float]], bool] | None = None) -> Choice | None:
    """The grid's thresholds that find the most boxes with at most ``max_false`` false stones per image
    (and, if given, that ``allowed`` accepts)."""
    best: tuple[tuple[float, float, tuple[float, ...]], Choice] | None = None
    for values in itertools.product(grid, repeat=len(GROUPS)):
        thresholds = dict(zip(GROUPS, values, strict=True))
        if allowed is not None and not allowed(thresholds):
            continue
        sensitivity, false = count(rows, thresholds, boxes, images)
        if false > max_false:
            continue
        key = (sensitivity, -false, values)
        if best is None or key > best[0]:
            best = (key, Choice(thresholds, sensitivity, false))
    return None if best is None else best[1]
