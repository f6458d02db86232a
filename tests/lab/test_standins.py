"""The whole-CT stand-ins of the validation side (lab/standins.py): counting, coarse slices, stone placement."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from inference.components import ComponentTable
from inference.volume import Volume
from lab.realimages import image_volume
from lab.standins import (
    PLANES,
    Case,
    CaseRow,
    coarse_slice,
    coarse_slice_rows,
    figures,
    plane_image,
    plane_slice_rows,
)
from lab.synth import PLANE_CLEAR, generate_phantom

THRESHOLDS = {"dense_small": 0.7, "dense_large": 0.7, "contrast": 0.9}


def test_figures_count_false_stones_stone_free_cases_and_stones_by_size() -> None:
    cases = [Case("a", {1: 5.0, 2: 2.0}), Case("b", {}), Case("c", {})]
    rows = [
        CaseRow("a", "dense_large", 0.9, 1),  # the 5 mm stone, found
        CaseRow("a", "dense_large", 0.95, 1),  # found twice: still one stone
        CaseRow("a", "contrast", 0.8, 2),  # the 2 mm stone, under the contrast threshold
        CaseRow("a", "dense_small", 0.75, 0),  # a false stone on a slice with stones
        CaseRow("b", "dense_small", 0.71, 0),  # a false stone on a stone-free case
        CaseRow("b", "dense_small", 0.99, 0),  # and another on the same case
        CaseRow("c", "dense_small", 0.69, 0),  # under its threshold: nothing
    ]
    f = figures(cases, rows, THRESHOLDS)
    assert (f.cases, f.false, f.stone_free_cases, f.stone_free_with_false) == (3, 3, 2, 1)
    assert (f.large_found, f.large, f.small_found, f.small) == (1, 1, 0, 1)
    looser = figures(cases, rows, {**THRESHOLDS, "contrast": 0.5, "dense_small": 0.995})
    assert (looser.false, looser.stone_free_with_false, looser.small_found) == (0, 0, 1)
    assert "stone-free lone slices with a false stone: 1 of 2" in f.summary("lone slice", "lone slices")


def test_a_coarse_slice_keeps_the_mean_and_loses_the_fine_detail() -> None:
    rng = np.random.default_rng(0)
    hu = np.zeros((64, 64), np.float32)
    hu[30:32, 30:32] = 800.0  # a 2-pixel stone: averaged into its 4 x 4 block
    out = coarse_slice(hu, rng, noise_hu=0.0)
    assert out.shape == hu.shape
    assert abs(out.mean() - hu.mean()) < 1.0
    assert 100 < out.max() < 400  # 800 HU spread over the block: a small stone fades, as it does on coarse CT
    noisy = coarse_slice(np.zeros((64, 64), np.float32), np.random.default_rng(1), noise_hu=12.0)
    assert 4 < noisy.std() < 12  # the noise is at the block's grain, then interpolated


def test_components_on_a_stone_and_off_it_are_told_apart() -> None:
    """An ``analyse`` that reports, on every slice, one component on each of its stones and one in the
    slice's corner: every stone sighting is found, and every corner component is a false stone."""
    phantom = generate_phantom(70_000)
    n = phantom.hu.shape[0]
    with_stone = [int(k) for k in np.nonzero(phantom.stone_labels.reshape(n, -1).max(1))[0]]
    order = iter(with_stone + [k for k in range(0, n, 6) if phantom.stone_labels[max(0, k - 2):k + 3].max() == 0])

    def analyse(volume: Volume) -> ComponentTable:
        assert volume.hu.shape[0] == 1  # predicted alone
        labels = phantom.stone_labels[next(order)]
        peaks = [[0, int(r), int(c)] for r, c in (np.argwhere(labels == s)[0] for s in np.unique(labels) if s)]
        peaks.append([0, 0, 0])
        count = len(peaks)
        return ComponentTable(boxes=[(slice(0, 1),)] * count, voxels=np.ones(count), groups=np.array(["dense_small"] * count),
                              classifier=np.full(count, 0.95), pixel=np.zeros(count), peaks=np.array(peaks))

    cases, rows = coarse_slice_rows(analyse, [70_000])
    assert next(order, None) is None  # every chosen slice was predicted, once
    free = [c for c in cases if not c.stones]
    assert len(cases) - len(free) == len(with_stone) and free
    f = figures(cases, rows, THRESHOLDS)
    assert f.large_found + f.small_found == f.large + f.small == sum(len(c.stones) for c in cases)
    assert f.false == len(cases) and f.stone_free_with_false == len(free)
    assert figures(cases, rows, {g: 0.99 for g in THRESHOLDS}).false == 0


def test_a_stone_free_series_is_predicted_whole_and_slice_by_slice_in_its_order(tmp_path: Path) -> None:
    """Every component of a stone-free CT is false; its lone slices come in the series' order, one file each."""
    from lab.standins import stone_free_rows
    from tests.factory import write_series

    # file i lies at z = -i * thickness: the volume's first slice (lowest z) is the last file
    _, series, _ = write_series(tmp_path / "ct", 5, size=32)
    (tmp_path / "ct" / "notes.txt").write_text("not DICOM: skipped")
    seen: list[np.ndarray] = []

    def analyse(volume: Volume) -> ComponentTable:
        seen.append(volume.hu.copy())
        # one confident component on each slice, at the slice's first pixel
        n = volume.hu.shape[0]
        return ComponentTable(boxes=[(slice(k, k + 1),) for k in range(n)], voxels=np.ones(n),
                              groups=np.array(["dense_small"] * n), classifier=np.full(n, 0.95),
                              pixel=np.zeros(n), peaks=np.array([[k, 0, 0] for k in range(n)]))

    (series_cases, series_rows), (slice_cases, slice_rows) = stone_free_rows(analyse, [tmp_path / "ct"])
    assert [c.name for c in series_cases] == [series] and all(not c.stones for c in series_cases + slice_cases)
    assert [c.name for c in slice_cases] == [f"{series}/{k}" for k in range(5)]
    whole = seen[0]
    assert whole.shape[0] == 5 and [s.shape[0] for s in seen[1:]] == [1] * 5
    for k, alone in enumerate(seen[1:]):  # the k-th lone slice is the k-th slice of the series
        assert np.array_equal(alone[0], whole[k])
    assert all(r.stone == 0 for r in series_rows + slice_rows)
    f = figures(slice_cases, slice_rows, THRESHOLDS)
    assert (f.stone_free_cases, f.stone_free_with_false, f.false) == (5, 5, 5)
    assert figures(series_cases, series_rows, THRESHOLDS).false == 5
    assert figures(slice_cases, slice_rows, {g: 0.99 for g in THRESHOLDS}).stone_free_with_false == 0


def test_no_series_is_an_error(tmp_path: Path) -> None:
    import pytest

    from lab.standins import stone_free_rows

    (tmp_path / "x.txt").write_text("no DICOM here")
    with pytest.raises(ValueError, match="no DICOM series"):
        stone_free_rows(lambda v: None, [tmp_path])  # type: ignore[arg-type, return-value]


def test_a_plane_through_a_stone_shows_it_head_up_at_the_pixel_spacing() -> None:
    phantom = generate_phantom(70_000)
    n, rows, columns = phantom.hu.shape
    stone = int(np.max(phantom.stone_labels))
    z, r, c = (int(round(float(v.mean()))) for v in np.nonzero(phantom.stone_labels == stone))
    hu, labels = plane_image(phantom, "sagittal", c)
    factor = phantom.slice_spacing / phantom.pixel_spacing
    assert hu.shape == labels.shape == (round(n * factor), rows)
    assert labels.max() == stone and set(np.unique(labels)) <= set(np.unique(phantom.stone_labels))
    # head up: the image's first row is the series' last (highest) slice
    assert np.array_equal(plane_image(phantom, "coronal", r)[0][0], phantom.hu[-1, r, :])
    # the stone sits where the series has it, its height scaled by the slice spacing
    at = np.argwhere(labels == stone).mean(0)
    assert abs(at[0] - (n - 1 - z) * factor) <= factor + 1 and abs(at[1] - r) <= 2


def test_planes_are_cut_through_every_stone_and_stone_free_elsewhere() -> None:
    """An ``analyse`` that reports one component on each stone of a plane and one in its corner: every
    stone is found in both planes, and every plane has one false stone."""
    phantom = generate_phantom(70_000)
    labels = phantom.stone_labels
    # which plane a lone image is, by the stable UIDs image_volume makes from its name
    planes = {image_volume(np.zeros((1, 1), np.float32), f"plane-70000/{p}/{i}").series_instance_uid: (p, i)
              for p, axis in PLANES.items() for i in range(labels.shape[axis])}
    seen = []

    def analyse(volume: Volume) -> ComponentTable:
        assert volume.hu.shape[0] == 1  # predicted alone
        plane, index = planes[volume.series_instance_uid]
        seen.append((plane, index))
        hu, plane_labels = plane_image(phantom, plane, index)
        assert np.array_equal(volume.hu[0], hu) and volume.pixel_spacing == (phantom.pixel_spacing,) * 2
        peaks = [[0, int(r), int(c)] for r, c in (np.argwhere(plane_labels == s)[0] for s in np.unique(plane_labels) if s)]
        peaks.append([0, 0, 0])
        count = len(peaks)
        return ComponentTable(boxes=[(slice(0, 1),)] * count, voxels=np.ones(count), groups=np.array(["dense_small"] * count),
                              classifier=np.full(count, 0.95), pixel=np.zeros(count), peaks=np.array(peaks))

    cases, rows = plane_slice_rows(analyse, [70_000])
    assert len(seen) == len(set(seen)) == len(cases)
    stones = {int(s) for s in np.unique(labels) if s}
    for plane in PLANES:
        assert {s for c in cases if f"/{plane}/" in c.name for s in c.stones} == stones
        free = [c for c in cases if f"/{plane}/" in c.name and not c.stones]
        assert free and all(not labels.take(range(max(0, i - PLANE_CLEAR), i + PLANE_CLEAR + 1),
                                             axis=PLANES[plane]).any()
                            for i in (int(c.name.split("/")[-1]) for c in free))
    # every stone counted once in each plane, in the one through its centre; a stone another plane cuts
    # off-centre (seed 70000's sagittal plane through its 1.7 mm stone clips its 10 mm one) is not counted
    # there, found or false
    f = figures(cases, rows, THRESHOLDS)
    assert f.large_found + f.small_found == f.large + f.small == 2 * len(stones)
    assert f.false == len(cases)
    def shown(case: Case) -> int:
        _, plane, index = case.name.split("/")
        return int(np.count_nonzero(np.unique(plane_image(phantom, plane, int(index))[1])))

    assert any(shown(c) > len(c.stones) for c in cases if c.stones)


def test_tight_crops_are_cut_around_each_box_and_count_that_box_alone() -> None:
    """An ``analyse`` that reports a component at each crop's centre and one in its corner: the centre is
    the crop's stone (found), the corner a false stone unless another box of the image covers it."""
    from lab.realimages import read_image_set, split_groups
    from lab.standins import crop_rows
    from lab.synth import shared_data_dir

    images = [im for im in split_groups(read_image_set(shared_data_dir() / "real-stones"))["validation"]
              if len(im.boxes) > 1][:3]
    shapes = []

    def analyse(volume: Volume) -> ComponentTable:
        assert volume.hu.shape[0] == 1 and volume.pixel_spacing == (images[0].pixel_mm,) * 2
        rows, columns = volume.hu.shape[1:]
        shapes.append((rows, columns))
        peaks = np.array([[0, rows // 2, columns // 2], [0, 0, 0]])
        return ComponentTable(boxes=[(slice(0, 1),)] * 2, voxels=np.ones(2), groups=np.array(["dense_small"] * 2),
                              classifier=np.full(2, 0.95), pixel=np.zeros(2), peaks=peaks)

    cases, rows = crop_rows(analyse, images, 40.0)
    boxes = sum(len(im.boxes) for im in images)
    assert len(cases) == len(shapes) == boxes and all(len(c.stones) == 1 for c in cases)
    side = 2 * round(40.0 / images[0].pixel_mm / 2)  # an even square, the box centre at its middle
    assert all(r <= side and c <= side for r, c in shapes) and max(shapes) == (side, side)
    f = figures(cases, rows, THRESHOLDS)
    # a crop clipped at the image's edge is off-centre; every other one has its box at its centre
    assert f.large_found + f.small_found >= boxes - sum(min(s) < side for s in shapes)
    assert 0 < f.false <= len(cases)


@pytest.mark.parametrize("factor", [0.5, 2.0])
def test_resized_images_keep_their_boxes_in_true_millimetres_told_or_not(factor: float) -> None:
    """An ``analyse`` that reports a component at each box's scaled centre and one in a corner: every box is
    found and the corner is a false stone, whatever the factor; the pixel size given to ``analyse`` is the
    true one when told, the assumed one when not."""
    from lab.realimages import ASSUMED_PIXEL_MM, read_image_set, split_groups
    from lab.standins import scale_rows
    from lab.synth import shared_data_dir

    images = [im for im in split_groups(read_image_set(shared_data_dir() / "real-stones"))["validation"]
              if len(im.boxes) > 1][:2]
    seen: list[tuple[tuple[int, ...], float]] = []

    def analyse(volume: Volume) -> ComponentTable:
        seen.append((volume.hu.shape[1:], volume.pixel_spacing[0]))
        image = images[len(seen) - 1]
        peaks = [[0, int((b.y0 + b.y1) / 2 * factor), int((b.x0 + b.x1) / 2 * factor)] for b in image.boxes]
        n = len(peaks) + 1
        return ComponentTable(boxes=[(slice(0, 1),)] * n, voxels=np.ones(n),
                              groups=np.array(["dense_small"] * n), classifier=np.full(n, 0.95),
                              pixel=np.zeros(n), peaks=np.array(peaks + [[0, 0, 0]]))

    for told in (True, False):
        seen.clear()
        cases, rows = scale_rows(analyse, images, factor, told)
        for image, (shape, pixel_mm) in zip(images, seen, strict=True):
            assert shape == (round(image.grey.shape[0] * factor), round(image.grey.shape[1] * factor))
            assert pixel_mm == pytest.approx(image.pixel_mm / factor if told else ASSUMED_PIXEL_MM)
        f = figures(cases, rows, THRESHOLDS)
        boxes = sum(len(im.boxes) for im in images)
        # overlapping grown boxes: the later box holds the pixel, so a stone may be counted through another
        assert f.large_found + f.small_found >= boxes - 1 and f.large + f.small == boxes
        assert f.false == len(images)
        # sizes are the boxes' in true millimetres, the same at every factor
        assert sorted(d for c in cases for d in c.stones.values()) == sorted(
            max(b.width, b.height) * im.pixel_mm for im in images for b in im.boxes)
    with pytest.raises(ValueError, match="resize factor"):
        scale_rows(analyse, images, 0.0, True)
