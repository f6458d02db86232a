"""Whole-CT stand-ins on the validation side: what the real images (crops that all hold a stone) cannot show.

Three sets, all made from generated validation phantoms (seeds from ``VALIDATION_SEED``, used for
nothing else: training uses seeds below 10,000, the figures 50,000 and up):

- **series**: each phantom as a whole series; figures: false stones per series, stones found.
- **coarse lone slices**: each phantom's slices that hold a stone, and every sixth slice with no
  stone within two slices, each made as a coarse acquisition gives it (``COARSE_BLOCK`` x
  ``COARSE_BLOCK`` pixel blocks averaged, white noise of ``COARSE_NOISE_HU`` at that grain,
  interpolated back) and predicted alone; figures: stone-free slices with a false stone, stone
  sightings found.
- **planes**: each phantom cut as a coronal and a sagittal image through every stone's centre (the
  stone counted there only), and every ``PLANE_STEP`` th coronal and sagittal plane with no stone
  within ``PLANE_CLEAR`` planes (and a body across at least a fifth of it), the slices' axis resampled
  to the pixel spacing (linear), head up, and predicted alone as an uploaded image of that plane is;
  figures as the coarse slices'. It is the nearest stand-in here for "other views": the real images
  are all coronal crops and the real stone-free CTs axial. What it cannot say: how real anatomy looks
  in those planes (the generator paints its anatomy slice by slice, and its slices are 1-2 mm, so a
  plane is smoother along the head-feet axis than a thin-slice reformat).

A candidate component counts as on a stone when its densest voxel lies in the stone, grown by one
pixel in-plane (series) or two (slices); otherwise it is a false stone. A known limit of the
slices: the coarse image is interpolated back corner to corner (``ndimage.zoom`` without grid
mode), which moves it by up to 1.5 pixels at the edges, so a stone of a pixel or two can be
counted missed and false at once; every model is counted the same way (fixing it would move the
recorded counts of 3.1.0 and the runs judged against them). As in ``lab.choose``, every
component is scored once and any thresholds are counted without running the network again. What
they cannot stand in for: real anatomy (3.1.0 puts a false stone on 2 % of the coarse slices and on
28 % of the real example CT's lone slices).

A fifth set is made from the real validation images: **tight crops** (``crop_rows``), each image cut to a
square of a given side around each of its boxes' centres (clipped at the image's edges) and predicted
alone, as a user uploading a crop around a stone gives it; the box the crop was cut around is the
crop's one stone (another box inside it is neither found nor false), and a component is on it when its
densest pixel lies in the box grown by 2 mm.

A sixth set is made from them too: **other pixel sizes** (``scale_rows``), each image resized by a factor
(area-averaged smaller, linear larger) and saved as 8-bit, as another site's export of another field of
view or matrix gives it, then read back as every uploaded image is; its pixel size either **told**
(``ASSUMED_PIXEL_MM`` over the factor, as a DICOM image's own spacing tells it) or **not told** (read as
``ASSUMED_PIXEL_MM``, as an image file is). A component is on a box when its densest pixel lies in the box,
scaled, grown by 2 true mm; a stone's size is its box's larger side in true mm.

A seventh set: **whole slices exported** (``export_rows``), the generated validation phantoms' axial slices
(those holding a stone and every ``FREE_SLICE_STEP`` th stone-free one, as the coarse set picks them) or a
stone-free CT's slices, each shown in a 400/40 window as an 8-bit image, resized by a factor and read back
without its pixel size: at ``ASSUMED_PIXEL_MM``, or at the size ``estimate_pixel_mm`` gives from the body's
width. It is what another site's picture of a whole slice gives the node, at another matrix.

A fourth set is real: **stone-free CT** given as DICOM series (``stone_free_rows``; for the lab, the
chest CT that ``uronode fetch-stone-free`` unpacks, see ``lab.stonefree``), every series predicted
whole and every slice of it alone; every kept component is a false stone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from inference.components import ComponentTable
from inference.volume import Volume, find_dicom_files, group_series, load_volume
from lab.realimages import (
    ASSUMED_PIXEL_MM,
    Box,
    LabelledImage,
    estimate_pixel_mm,
    hu_to_grey,
    image_hu,
    image_volume,
)
from lab.synth import (
    PLANES,
    Phantom,
    centre_planes,
    clear_plane,
    generate_phantom,
    plane_image,
)

VALIDATION_SEED = 70_000
COARSE_BLOCK = 4
COARSE_NOISE_HU = 12.0
COARSE_NOISE_SEED = 123
FREE_SLICE_STEP = 6
PLANE_STEP = 48


@dataclass(frozen=True)
class Case:
    """A series or a lone slice: its stones (number -> diameter in mm)."""

    name: str
    stones: dict[int, float]


@dataclass(frozen=True)
class CaseRow:
    """One candidate component of a case: its group, its score, the stone it lies on (0: none)."""

    case: str
    group: str
    score: float
    stone: int


@dataclass(frozen=True)
class StandInFigures:
    cases: int
    false: int
    """Components kept at the thresholds that lie on no stone."""
    stone_free_cases: int
    stone_free_with_false: int
    large_found: int
    """Stones of 3 mm and more found (a stone per case: a stone seen on two slices counts twice)."""
    large: int
    small_found: int
    small: int

    def summary(self, unit: str, units: str) -> str:
        free = (f"; stone-free {units} with a false stone: {self.stone_free_with_false} of {self.stone_free_cases}"
                if self.stone_free_cases else "")
        stones = (f"; stones >= 3 mm found {self.large_found} of {self.large}, < 3 mm {self.small_found} of {self.small}"
                  if self.large or self.small else "")
        return f"{self.false / max(1, self.cases):.2f} false stones per {unit} ({self.false} in {self.cases}){free}{stones}"


def _rows(case: str, table: ComponentTable, stones_at: np.ndarray, score: str) -> list[CaseRow]:
    scores = table.scores(score)
    rows = []
    for i, box in enumerate(table.boxes):
        if box is None:
            continue
        k, r, c = (int(v) for v in table.peaks[i])
        rows.append(CaseRow(case, str(table.groups[i]), float(scores[i]), int(stones_at[k, r, c])))
    return rows


def _stones(phantom: Phantom, labels: np.ndarray) -> dict[int, float]:
    return {int(s): float(phantom.stones[int(s) - 1].diameter_mm) for s in np.unique(labels) if s}


def series_rows(analyse: Callable[[Volume], ComponentTable], seeds: Iterable[int],
                score: str = "classifier") -> tuple[list[Case], list[CaseRow]]:
    """Every candidate component of each generated phantom predicted as a series."""
    cases, rows = [], []
    for seed in seeds:
        phantom = generate_phantom(seed)
        grown = ndimage.grey_dilation(phantom.stone_labels, size=(1, 3, 3))
        cases.append(Case(str(seed), _stones(phantom, phantom.stone_labels)))
        rows += _rows(str(seed), analyse(phantom.to_volume()), grown, score)
    return cases, rows


def coarse_slice(hu: np.ndarray, rng: np.random.Generator, block: int = COARSE_BLOCK,
                 noise_hu: float = COARSE_NOISE_HU) -> np.ndarray:
    """One slice as a coarse acquisition gives it: blocks averaged, noise at that grain, linear back."""
    rows, columns = hu.shape[0] // block * block, hu.shape[1] // block * block
    coarse = hu[:rows, :columns].reshape(rows // block, block, columns // block, block).mean((1, 3))
    coarse = coarse + rng.normal(0, noise_hu, coarse.shape)
    return np.asarray(ndimage.zoom(coarse, block, order=1), np.float32)


def _chosen_slices(phantom: Phantom) -> list[int]:
    """A phantom's slices that hold a stone, then every ``FREE_SLICE_STEP`` th with no stone within two slices."""
    n = phantom.hu.shape[0]
    with_stone = [int(k) for k in np.nonzero(phantom.stone_labels.reshape(n, -1).max(1))[0]]
    return with_stone + [k for k in range(0, n, FREE_SLICE_STEP) if phantom.stone_labels[max(0, k - 2):k + 3].max() == 0]


def coarse_slice_rows(analyse: Callable[[Volume], ComponentTable], seeds: Iterable[int],
                      score: str = "classifier") -> tuple[list[Case], list[CaseRow]]:
    """Every candidate component of each phantom's chosen slices, made coarse and predicted alone."""
    rng = np.random.default_rng(COARSE_NOISE_SEED)
    cases, rows = [], []
    for seed in seeds:
        phantom = generate_phantom(seed)
        for k in _chosen_slices(phantom):
            hu = coarse_slice(phantom.hu[k], rng)
            labels = phantom.stone_labels[k][: hu.shape[0], : hu.shape[1]]
            name = f"{seed}/{k}"
            cases.append(Case(name, _stones(phantom, labels)))
            table = analyse(image_volume(hu, f"coarse-{name}", pixel_mm=phantom.pixel_spacing))
            rows += _rows(name, table, ndimage.grey_dilation(labels, size=(5, 5))[None], score)
    return cases, rows


def plane_slice_rows(analyse: Callable[[Volume], ComponentTable], seeds: Iterable[int],
                     score: str = "classifier") -> tuple[list[Case], list[CaseRow]]:
    """Every candidate component of each phantom's coronal and sagittal planes (the module's text),
    each predicted alone."""
    cases, rows = [], []
    for seed in seeds:
        phantom = generate_phantom(seed)
        labels = phantom.stone_labels
        for plane, axis in PLANES.items():
            # each stone is counted in the plane through its centre only; another stone that plane cuts
            # off-centre is neither a stone to find there nor a false stone
            through = centre_planes(phantom, axis)
            free = [i for i in range(PLANE_STEP // 2, labels.shape[axis], PLANE_STEP) if clear_plane(phantom, axis, i)]
            for i in dict.fromkeys([*through, *free]):
                hu, plane_labels = plane_image(phantom, plane, i)
                name = f"{seed}/{plane}/{i}"
                cases.append(Case(name, {s: d for s, d in _stones(phantom, plane_labels).items()
                                         if s in through.get(i, [])}))
                table = analyse(image_volume(hu, f"plane-{name}", pixel_mm=phantom.pixel_spacing))
                rows += _rows(name, table, ndimage.grey_dilation(plane_labels, size=(5, 5))[None], score)
    return cases, rows


def _inside(box: Box, shape: tuple[int, ...], r0: int, c0: int) -> np.ndarray:
    """bool (rows, columns): the pixels of an image cut at row ``r0``, column ``c0`` whose centres lie in
    ``box`` (given in the whole image's pixels), as ``Box.contains`` decides."""
    yy, xx = np.mgrid[r0:r0 + shape[0], c0:c0 + shape[1]] + 0.5
    return np.asarray((box.y0 <= yy) & (yy <= box.y1) & (box.x0 <= xx) & (xx <= box.x1))


def crop_rows(analyse: Callable[[Volume], ComponentTable], images: Iterable[LabelledImage], side_mm: float,
              score: str = "classifier") -> tuple[list[Case], list[CaseRow]]:
    """Every candidate component of each image cut to a ``side_mm`` square around each of its boxes (the
    module's text), predicted alone; a stone's size is its box's larger side in mm."""
    cases, rows = [], []
    for image in images:
        hu = image.as_hu()
        half = max(1, int(round(side_mm / image.pixel_mm / 2)))
        for j, box in enumerate(image.boxes):
            r, c = int((box.y0 + box.y1) / 2), int((box.x0 + box.x1) / 2)
            r0, c0 = max(0, r - half), max(0, c - half)
            crop = hu[r0:r + half, c0:c + half]
            # any other box of the image inside the crop: a component on it is not false (-1: not counted)
            on = np.zeros(crop.shape, np.int32)
            for k, other in enumerate(image.boxes):
                if k != j:
                    on[_inside(other.grown(2.0 / image.pixel_mm), crop.shape, r0, c0)] = -1
            on[_inside(box.grown(2.0 / image.pixel_mm), crop.shape, r0, c0)] = 1
            name = f"{image.name}/{j}"
            cases.append(Case(name, {1: max(box.width, box.height) * image.pixel_mm}))
            table = analyse(image_volume(crop, f"crop-{side_mm:g}-{name}", image.pixel_mm))
            rows += [r for r in _rows(name, table, on[None], score) if r.stone >= 0]
    return cases, rows


def _check_factor(factor: float) -> None:
    if not 0.1 <= factor <= 10:
        raise ValueError(f"a resize factor of {factor} is not one an export makes (0.1-10)")


def _exported(grey: np.ndarray, factor: float) -> np.ndarray:
    """An 8-bit image resized by ``factor`` as an export makes it: area-averaged smaller, linear larger."""
    import cv2

    size = (max(1, round(grey.shape[1] * factor)), max(1, round(grey.shape[0] * factor)))
    return np.asarray(cv2.resize(grey, size, interpolation=cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR))


def scale_rows(analyse: Callable[[Volume], ComponentTable], images: Iterable[LabelledImage], factor: float,
               told: bool, score: str = "classifier") -> tuple[list[Case], list[CaseRow]]:
    """Every candidate component of each image resized by ``factor`` (the module's text), its pixel size
    ``told`` or read as ``ASSUMED_PIXEL_MM``."""
    _check_factor(factor)
    cases, rows = [], []
    for image in images:
        resized = _exported(image.grey, factor)
        true_mm = image.pixel_mm / factor
        on = np.zeros(resized.shape, np.int32)
        stones = {}
        for k, box in enumerate(image.boxes):
            scaled = Box(box.x0 * factor, box.y0 * factor, box.x1 * factor, box.y1 * factor)
            on[_inside(scaled.grown(2.0 / true_mm), resized.shape, 0, 0)] = k + 1
            stones[k + 1] = max(box.width, box.height) * image.pixel_mm
        name = f"{image.name}/x{factor:g}/{'told' if told else 'assumed'}"
        cases.append(Case(name, stones))
        volume = image_volume(image_hu(resized, "auto"), f"scale-{name}", true_mm if told else ASSUMED_PIXEL_MM)
        rows += _rows(name, analyse(volume), on[None], score)
    return cases, rows


def _whole_slices(seeds: Iterable[int], folders: Sequence[Path]) -> Iterable[tuple[str, np.ndarray, np.ndarray,
                                                                                  dict[int, float]]]:
    """(name, HU, stone labels, stones) of each generated phantom's chosen axial slices, then of every slice of
    the stone-free CT series below ``folders``."""
    for seed in seeds:
        phantom = generate_phantom(seed)
        for k in _chosen_slices(phantom):
            labels = phantom.stone_labels[k]
            yield f"{seed}/{k}", phantom.hu[k], labels, _stones(phantom, labels)
    if folders:
        for uid, paths in sorted(group_series(find_dicom_files(folders)).items()):
            volume = load_volume(paths)
            for k in range(volume.shape[0]):
                yield f"{uid}/{k}", volume.hu[k], np.zeros(volume.shape[1:], np.int16), {}


def export_rows(analyse: Callable[[Volume], ComponentTable], seeds: Iterable[int], factor: float, estimate: str,
                folders: Sequence[Path] = (), score: str = "classifier") -> tuple[list[Case], list[CaseRow]]:
    """Every candidate component of each whole slice exported as an 8-bit image resized by ``factor`` and read
    back without its pixel size (the module's text): at ``ASSUMED_PIXEL_MM`` (``estimate`` 'off'), or at the
    one ``estimate_pixel_mm`` gives ('both'; 'finer': only where it says the pixels are smaller). A component
    is on a stone when its densest pixel lies in it grown by 2 pixels of the slice (then resized)."""
    import cv2

    _check_factor(factor)
    cases, rows = [], []
    for name, hu, labels, stones in _whole_slices(seeds, folders):
        grey = _exported(hu_to_grey(hu, (40.0, 400.0)), factor)
        size = (grey.shape[1], grey.shape[0])
        on = cv2.resize(ndimage.grey_dilation(labels, size=(5, 5)).astype(np.int32).astype(np.float32), size,
                        interpolation=cv2.INTER_NEAREST).astype(np.int32)
        read = image_hu(grey, "auto")
        pixel_mm = (ASSUMED_PIXEL_MM if estimate == "off" else
                    estimate_pixel_mm(read, finer_only=estimate == "finer").pixel_mm)
        case = f"{name}/x{factor:g}/{estimate}"
        cases.append(Case(case, stones))
        rows += _rows(case, analyse(image_volume(read, f"export-{case}", pixel_mm)), on[None], score)
    return cases, rows


def stone_free_rows(analyse: Callable[[Volume], ComponentTable], folders: Sequence[Path],
                    score: str = "classifier") -> tuple[tuple[list[Case], list[CaseRow]],
                                                        tuple[list[Case], list[CaseRow]]]:
    """Every candidate component of each DICOM series below ``folders`` (CT known to hold no stone),
    predicted as a series, and of each of its slices predicted alone: ((series cases, rows), (slice cases, rows)).
    A series is named by its Series Instance UID, a slice by that and its place from the first slice."""
    series = group_series(find_dicom_files(folders))
    if not series:
        raise ValueError(f"no DICOM series in {', '.join(map(str, folders))}")
    whole: tuple[list[Case], list[CaseRow]] = ([], [])
    lone: tuple[list[Case], list[CaseRow]] = ([], [])
    for uid, paths in sorted(series.items()):
        volume = load_volume(paths)
        whole[0].append(Case(uid, {}))
        whole[1].extend(_rows(uid, analyse(volume), np.zeros(volume.shape, np.int32), score))
        # the slices' files in the volume's order (a multi-frame file is one "slice" here: predicted alone whole)
        for k, path in enumerate(dict.fromkeys(volume.source_paths)):
            name = f"{uid}/{k}"
            alone = load_volume([path])
            lone[0].append(Case(name, {}))
            lone[1].extend(_rows(name, analyse(alone), np.zeros(alone.shape, np.int32), score))
    return whole, lone


def stone_free_image_rows(analyse: Callable[[Volume], ComponentTable], folders: Sequence[Path],
                          score: str = "classifier", pixel_mm: float = ASSUMED_PIXEL_MM,
                          window: tuple[float, float] = (40.0, 400.0)) -> tuple[tuple[list[Case], list[CaseRow]],
                                                                                tuple[list[Case], list[CaseRow]]]:
    """Every slice of each stone-free DICOM series below ``folders`` as an image of another site would give
    it: resized to ``pixel_mm`` (linear) and predicted alone in HU, and the same shown in ``window``
    (level, width), saved as 8-bit and read back as every uploaded image is (``image_hu``):
    ((HU cases, rows), (8-bit cases, rows)). Resizing by a factor that is not whole keeps the noise's peaks
    on the original grid and smooths it between them: a series' one noise figure then reads it lower than
    its peaks are, which is what an export resized by a viewer does to a noisy CT."""
    series = group_series(find_dicom_files(folders))
    if not series:
        raise ValueError(f"no DICOM series in {', '.join(map(str, folders))}")
    hu_set: tuple[list[Case], list[CaseRow]] = ([], [])
    grey_set: tuple[list[Case], list[CaseRow]] = ([], [])
    for uid, paths in sorted(series.items()):
        volume = load_volume(paths)
        zoom = (volume.pixel_spacing[0] / pixel_mm, volume.pixel_spacing[1] / pixel_mm)
        for k in range(volume.shape[0]):
            hu = ndimage.zoom(volume.hu[k].astype(np.float32), zoom, order=1)
            for (cases, rows), kind, image in (
                    (hu_set, "hu", hu),
                    (grey_set, "8-bit", image_hu(hu_to_grey(hu, window), "auto"))):
                name = f"{uid}/{k}/{kind}"
                alone = image_volume(image, name, pixel_mm)
                cases.append(Case(name, {}))
                rows.extend(_rows(name, analyse(alone), np.zeros(alone.shape, np.int32), score))
    return hu_set, grey_set


def false_per_case_at_most(cases: Sequence[Case], rows: Sequence[CaseRow],
                           per_case: float) -> Callable[[dict[str, float]], bool]:
    """A bound for ``lab.choose.choose`` (``allowed``): thresholds whose kept components lie on no stone at most
    ``per_case`` times per case, over all ``cases`` (``uronode choose --series-max-false``)."""
    most = per_case * len(cases) + 1e-9  # 0.29 x 100 is 28.999999999999996 in floating point, and 29 may

    def within(thresholds: dict[str, float]) -> bool:
        return figures(cases, rows, thresholds).false <= most

    return within


def stone_free_share_at_most(cases: Sequence[Case], rows: Sequence[CaseRow],
                             share: float) -> Callable[[dict[str, float]], bool]:
    """A bound for ``lab.choose.choose`` (``allowed``): thresholds that put a false stone on at most ``share``
    of the stone-free ``cases`` (``uronode choose --stone-free``, ``--stone-free-max-slices``)."""
    most = share * sum(1 for c in cases if not c.stones) + 1e-9

    def within(thresholds: dict[str, float]) -> bool:
        return figures(cases, rows, thresholds).stone_free_with_false <= most

    return within


def figures(cases: Sequence[Case], rows: Sequence[CaseRow], thresholds: dict[str, float]) -> StandInFigures:
    """The stand-in's figures at ``thresholds`` (group -> lowest score kept)."""
    found: set[tuple[str, int]] = set()
    false_in: dict[str, int] = {}
    for r in rows:
        if r.score < thresholds[r.group]:
            continue
        if r.stone:
            found.add((r.case, r.stone))
        else:
            false_in[r.case] = false_in.get(r.case, 0) + 1
    stones = [(c.name, s, d) for c in cases for s, d in c.stones.items()]
    free = [c for c in cases if not c.stones]
    return StandInFigures(
        cases=len(cases), false=sum(false_in.values()),
        stone_free_cases=len(free), stone_free_with_false=sum(1 for c in free if false_in.get(c.name)),
        large_found=sum((name, s) in found for name, s, d in stones if d >= 3),
        large=sum(1 for *_, d in stones if d >= 3),
        small_found=sum((name, s) in found for name, s, d in stones if d < 3),
        small=sum(1 for *_, d in stones if d < 3),
    )
