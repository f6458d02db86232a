"""Scoring stone finding on real images with boxes, and on real slices without stones.

Per image, every reported stone is a connected component of the predicted
mask (8-connected) and is placed at its centroid. Against the marked boxes:

- a **marked stone is found** when a reported stone's centroid lies inside its
  box grown by ``MARGIN_MM`` on every side (at the image's pixel spacing);
- a **false stone** is a reported stone whose centroid lies in no grown box;
- an **image is called positive** when it has at least one reported stone:
  image-level sensitivity over the images with a box, specificity over those
  without (none when the set has no image without a box);
- sensitivity **by box size**: the box's longer side in mm.

Each figure comes with a 95 % interval (``lab.intervals``) that resamples whole
examinations (``realimages.exam_keys``; a source without a timestamp is its
own examination), as the split does: images of one examination are not independent.

``score_slices`` scores images known to hold no stone (lone slices of a real
CT): the share of slices with a false stone.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict

import numpy as np
from scipy import ndimage

from lab.intervals import UnitCounts, with_interval
from lab.realimages import ASSUMED_PIXEL_MM, Box, LabelledImage, exam_keys

MARGIN_MM = 2.0
BOX_BINS = (("<3 mm", 0.0, 3.0), ("3-5 mm", 3.0, 5.0), ("5-10 mm", 5.0, 10.0), (">=10 mm", 10.0, 1e9))


def reported_stones(mask: np.ndarray) -> list[tuple[float, float, int]]:
    """(row, column, pixels) of each 8-connected component of a 2D mask."""
    labels, count = ndimage.label(mask > 0, structure=np.ones((3, 3), bool))
    if count == 0:
        return []
    centres = ndimage.center_of_mass(np.ones(labels.shape), labels, range(1, count + 1))
    sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    return [(float(r), float(c), int(n)) for (r, c), n in zip(centres, sizes, strict=True)]


class MissedBox(TypedDict):
    image: str
    box: list[float]
    """x0, y0, x1, y1 (pixels)."""
    size_mm: float


class FalseStone(TypedDict):
    image: str
    row: float
    column: float
    pixels: int


class ImageScores(TypedDict):
    """One predictor's figures over a set of labelled images (JSON as it is)."""

    images: int
    images_with_stones: int
    images_without_stones: int
    stones: int
    stone_sensitivity: float | None
    false_stones: int
    false_stones_per_image: float | None
    image_sensitivity: float | None
    image_specificity: float | None
    stones_by_size: dict[str, int]
    sensitivity_by_size: dict[str, float | None]
    margin_mm: float
    pixel_mm: float
    images_at_their_own_pixel_mm: int
    images_at_an_estimated_pixel_mm: int
    missed: list[MissedBox]
    false: list[FalseStone]
    intervals: dict[str, list[float] | None]
    """95 % intervals of the figures above, resampling ``interval_units``."""
    interval_units: str
    per_unit: dict[str, dict[str, int]]
    """The counts per examination (``uronode compare`` pairs two results by them)."""


class SliceScores(TypedDict):
    slices: int
    slices_with_a_false_stone: int
    share_with_a_false_stone: float | None
    false_stones: int
    intervals: dict[str, list[float] | None]
    interval_units: str
    per_unit: dict[str, dict[str, int]]


IMAGE_COUNTS = ("images", "positive_images", "negative_images", "true_positive_images", "true_negative_images",
                "stones", "found", "false_stones")
"""What ``ImageTally`` counts per examination, besides the stones and stones found by size."""

IMAGE_RATIOS: dict[str, tuple[str, str, bool]] = {
    "stone_sensitivity": ("found", "stones", True),
    "false_stones_per_image": ("false_stones", "images", False),
    "image_sensitivity": ("true_positive_images", "positive_images", True),
    "image_specificity": ("true_negative_images", "negative_images", True),
    **{f"sensitivity {n}": (f"found {n}", f"stones {n}", True) for n, _, _ in BOX_BINS},
}


@dataclass
class ImageTally:
    pixel_mm: float = ASSUMED_PIXEL_MM
    images: int = 0
    positive_images: int = 0
    negative_images: int = 0
    true_positive_images: int = 0
    true_negative_images: int = 0
    stones: int = 0
    found: int = 0
    false_stones: int = 0
    by_size_total: dict[str, int] = field(default_factory=lambda: {n: 0 for n, _, _ in BOX_BINS})
    by_size_found: dict[str, int] = field(default_factory=lambda: {n: 0 for n, _, _ in BOX_BINS})
    missed: list[MissedBox] = field(default_factory=list)
    false: list[FalseStone] = field(default_factory=list)
    own_spacing: int = 0
    """Images scored at their own pixel spacing (DICOM) instead of ``pixel_mm``."""
    estimated_spacing: int = 0
    """Images scored at the pixel spacing estimated from their body's width (``estimate_pixel_mm``)."""
    units: UnitCounts = field(default_factory=UnitCounts)
    """The same counts per examination, for the intervals."""

    def add(self, name: str, boxes: Iterable[Box], mask: np.ndarray, pixel_mm: float | None = None,
            unit: str | None = None, estimated: bool = False) -> None:
        """Score one image's mask; ``pixel_mm``: the spacing its file states, or estimated from it when
        ``estimated`` (default: the tally's); ``unit``: the examination it belongs to (default: the image is
        its own)."""
        boxes = list(boxes)
        reported = reported_stones(mask)
        if pixel_mm is not None and estimated:
            self.estimated_spacing += 1
        elif pixel_mm is not None:
            self.own_spacing += 1
        pixel_mm = pixel_mm or self.pixel_mm
        margin = MARGIN_MM / pixel_mm
        grown = [b.grown(margin) for b in boxes]
        # this image's counts, added to the totals and to its examination's
        counts = Counter(images=1, positive_images=int(bool(boxes)), negative_images=int(not boxes),
                         true_positive_images=int(bool(boxes) and bool(reported)),
                         true_negative_images=int(not boxes and not reported))
        for box, big in zip(boxes, grown, strict=True):
            size = max(box.width, box.height) * pixel_mm
            name_bin = next(n for n, lo, hi in BOX_BINS if lo <= size < hi)
            hit = any(big.contains(r, c) for r, c, _ in reported)
            counts.update({"stones": 1, f"stones {name_bin}": 1, "found": int(hit), f"found {name_bin}": int(hit)})
            if not hit:
                self.missed.append({"image": name, "box": [round(v, 1) for v in (box.x0, box.y0, box.x1, box.y1)],
                                    "size_mm": round(size, 1)})
        for r, c, n in reported:
            if not any(big.contains(r, c) for big in grown):
                counts["false_stones"] += 1
                self.false.append({"image": name, "row": round(r, 1), "column": round(c, 1), "pixels": n})
        self.images += counts["images"]
        self.positive_images += counts["positive_images"]
        self.negative_images += counts["negative_images"]
        self.true_positive_images += counts["true_positive_images"]
        self.true_negative_images += counts["true_negative_images"]
        self.stones += counts["stones"]
        self.found += counts["found"]
        self.false_stones += counts["false_stones"]
        for size_bin, _, _ in BOX_BINS:
            self.by_size_total[size_bin] += counts[f"stones {size_bin}"]
            self.by_size_found[size_bin] += counts[f"found {size_bin}"]
        by_size = (f"{what} {size_bin}" for what in ("stones", "found") for size_bin, _, _ in BOX_BINS)
        self.units.add(unit or name, **{k: counts[k] for k in (*IMAGE_COUNTS, *by_size)})

    def as_dict(self) -> ImageScores:
        def ratio(a: int, b: int) -> float | None:
            return a / b if b else None

        return {
            "images": self.images,
            "images_with_stones": self.positive_images,
            "images_without_stones": self.negative_images,
            "stones": self.stones,
            "stone_sensitivity": ratio(self.found, self.stones),
            "false_stones": self.false_stones,
            "false_stones_per_image": ratio(self.false_stones, self.images),
            "image_sensitivity": ratio(self.true_positive_images, self.positive_images),
            "image_specificity": ratio(self.true_negative_images, self.negative_images),
            "stones_by_size": dict(self.by_size_total),
            "sensitivity_by_size": {n: ratio(self.by_size_found[n], self.by_size_total[n]) for n, _, _ in BOX_BINS},
            "margin_mm": MARGIN_MM,
            "pixel_mm": self.pixel_mm,
            "images_at_their_own_pixel_mm": self.own_spacing,
            "images_at_an_estimated_pixel_mm": self.estimated_spacing,
            "missed": self.missed[:100],
            "false": self.false[:100],
            "intervals": self.units.intervals(IMAGE_RATIOS),
            "interval_units": f"examinations ({len(self.units)})",
            "per_unit": self.units.as_dict(),
        }


def score_images(images: Iterable[LabelledImage], predict: Callable[[LabelledImage], np.ndarray],
                 pixel_mm: float = ASSUMED_PIXEL_MM, progress: bool = False) -> ImageScores:
    """Run ``predict`` (image -> 2D mask) on every image and score it (see the module's text)."""
    images = list(images)
    exams = exam_keys(im.source for im in images)
    tally = ImageTally(pixel_mm=pixel_mm)
    iterator: Iterable[LabelledImage] = images
    if progress:
        from tqdm import tqdm

        iterator = tqdm(list(images), desc="images", unit="image")
    for im in iterator:
        own = im.pixel_from in ("file", "body width")
        tally.add(im.name, im.boxes, predict(im), im.pixel_mm if own else None, unit=exams[im.source],
                  estimated=im.pixel_from == "body width")
    return tally.as_dict()


SLICE_RATIOS: dict[str, tuple[str, str, bool]] = {"share_with_a_false_stone": ("with_false", "slices", True)}

SLICE_BLOCK = 10
"""Consecutive slices resampled together for the lone slices' interval (30 mm of the 3 mm example CT)."""


def score_slices(masks: Iterable[np.ndarray], block: int = SLICE_BLOCK) -> SliceScores:
    """Slices known to hold no stone, in order along their CT: how many have a false stone, and how many
    false stones. The interval resamples blocks of ``block`` consecutive slices: neighbouring slices
    show the same structures, and all of them are one patient's, so it says how much the figure moves
    along this CT, not across patients."""
    slices = with_false = false_stones = 0
    units = UnitCounts()
    for k, mask in enumerate(masks):
        n = len(reported_stones(mask))
        slices += 1
        with_false += n > 0
        false_stones += n
        units.add(f"block {k // block}", slices=1, with_false=int(n > 0), false_stones=n)
    return {"slices": slices, "slices_with_a_false_stone": with_false,
            "share_with_a_false_stone": with_false / slices if slices else None,
            "false_stones": false_stones,
            "intervals": units.intervals(SLICE_RATIOS),
            "interval_units": f"blocks of {block} consecutive slices ({len(units)}), one CT",
            "per_unit": units.as_dict()}


def format_image_table(results: dict[str, ImageScores]) -> str:
    """A Markdown table of the headline figures of ``score_images`` results (95 % intervals in brackets)."""

    def f(v: object) -> str:
        return "-" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))

    lines = ["| method | images | stones | stone sens | false stones/image | image sens | image spec "
             "| sens <3 / 3-5 / 5-10 / >=10 mm |", "|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        by, ci = r["sensitivity_by_size"], r["intervals"]
        lines.append(f"| {name} | {r['images']} | {r['stones']} | "
                     f"{with_interval(r['stone_sensitivity'], ci['stone_sensitivity'])} | "
                     f"{with_interval(r['false_stones_per_image'], ci['false_stones_per_image'])} | "
                     f"{f(r['image_sensitivity'])} | {f(r['image_specificity'])} | "
                     + " / ".join(f(by[n]) for n, _, _ in BOX_BINS) + " |")
    return "\n".join(lines)


def failure_picture(grey: np.ndarray, mask: np.ndarray, boxes: Iterable[Box], at: tuple[float, float],
                    caption: str, half: int = 64, zoom: int = 3) -> np.ndarray:
    """An RGB crop (2 * half pixels square, ``zoom`` x) around ``at`` (row, column): the image, the
    model's mask in red, the marked boxes in green, the failure ringed in yellow, and a caption."""
    import cv2

    rows, columns = grey.shape
    r, c = int(round(at[0])), int(round(at[1]))
    r0, c0 = min(max(0, r - half), max(0, rows - 2 * half)), min(max(0, c - half), max(0, columns - 2 * half))
    crop = grey[r0:r0 + 2 * half, c0:c0 + 2 * half]
    rgb = np.repeat(crop[..., None], 3, axis=2).astype(np.float32)
    red = mask[r0:r0 + 2 * half, c0:c0 + 2 * half] > 0
    rgb[red] = 0.45 * rgb[red] + 0.55 * np.array([255.0, 0.0, 0.0])
    big = cv2.resize(rgb.astype(np.uint8), None, fx=zoom, fy=zoom, interpolation=cv2.INTER_NEAREST)
    big = np.ascontiguousarray(big)
    for b in boxes:
        p0 = (int((b.x0 - c0) * zoom), int((b.y0 - r0) * zoom))
        p1 = (int((b.x1 - c0) * zoom), int((b.y1 - r0) * zoom))
        cv2.rectangle(big, p0, p1, (0, 255, 0), 1)
    cv2.circle(big, (int((at[1] - c0 + 0.5) * zoom), int((at[0] - r0 + 0.5) * zoom)), 9 * zoom, (255, 255, 0), 1)
    cv2.putText(big, caption, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 0), 1, cv2.LINE_AA)
    return big


def write_pictures(pictures: dict[str, list[np.ndarray]], out_dir: Path) -> list[Path]:
    """One PNG per failure kind: its pictures side by side (at most four)."""
    import cv2

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for kind, crops in pictures.items():
        if not crops:
            continue
        row = np.concatenate(crops[:4], axis=1)
        path = out_dir / f"{kind}.png"
        cv2.imwrite(str(path), cv2.cvtColor(row, cv2.COLOR_RGB2BGR))
        written.append(path)
    return written
