"""Real images with boxes: label reading, grouping and the split, box supervision, windows, scoring."""

from __future__ import annotations

from dataclasses import astuple
from pathlib import Path

import cv2
import numpy as np
import pytest

from inference.network import InputSpec
from lab.augment import (
    Augmentation,
    augment_patches,
    blur_patches,
    drop_neighbours,
    regrey_patches,
    rewindow_patches,
)
from lab.dataset import patches_from_images
from lab.imageeval import ImageTally, reported_stones, score_slices
from lab.realimages import (
    Box,
    ImageSetError,
    LabelledImage,
    box_mask,
    exam_keys,
    grey_to_hu,
    hu_to_grey,
    image_volume,
    read_boxes,
    read_image_set,
    rewindow,
    source_key,
    split_groups,
    split_of,
)

UID = "1-3-46-670589-33-1-{ticks}00001-{n}"


def _name(ticks: int, n: int, copy: str) -> str:
    return UID.format(ticks=ticks, n=n) + f"_png_jpg.rf.{copy}"


def test_yolo_lines_become_pixel_boxes() -> None:
    boxes = read_boxes("0 0.5 0.25 0.1 0.2\n\n1 0.05 0.95 0.1 0.1\n", rows=200, columns=400)
    assert astuple(boxes[0]) == pytest.approx((180.0, 30.0, 220.0, 70.0))
    # clipped to the image; every class is a stone
    assert astuple(boxes[1]) == pytest.approx((0.0, 180.0, 40.0, 200.0))
    assert read_boxes("", 10, 10) == ()


def test_a_polygon_line_is_its_bounding_box_and_a_confidence_is_ignored() -> None:
    (poly,) = read_boxes("0 0.1 0.2 0.3 0.2 0.2 0.6\n", rows=100, columns=200)
    assert astuple(poly) == pytest.approx((20.0, 20.0, 60.0, 60.0))
    (box,) = read_boxes("0 0.5 0.25 0.1 0.2 0.93\n", rows=200, columns=400)
    assert astuple(box) == pytest.approx((180.0, 30.0, 220.0, 70.0))


@pytest.mark.parametrize("line", ["0 0.5 0.5 0.1", "0 a 0.5 0.1 0.1", "0 1.5 0.5 0.1 0.1", "0 0.5 0.5 0 0.1",
                                  "0 0.1 0.2 0.3 0.2 0.2 1.6", "0 0.1 0.2 0.3 0.2 0.5 0.2",
                                  "0 0.1 0.2 0.3 0.2 0.2 0.6 0.9", "0"])
def test_a_bad_label_line_is_refused_with_where_it_is(line: str) -> None:
    with pytest.raises(ImageSetError, match="lab.txt:1"):
        read_boxes(line, 10, 10, where="lab.txt")


def test_an_image_folder_is_read_with_its_labels(tmp_path: Path) -> None:
    for split in ("train", "valid"):
        (tmp_path / split / "images").mkdir(parents=True)
        (tmp_path / split / "labels").mkdir()
    grey = np.full((40, 50), 90, np.uint8)
    cv2.imwrite(str(tmp_path / "train" / "images" / "a.jpg"), cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR))
    (tmp_path / "train" / "labels" / "a.txt").write_text("0 0.5 0.5 0.2 0.25\n")
    cv2.imwrite(str(tmp_path / "valid" / "images" / "b.png"), grey)  # no label file: no stone
    images = read_image_set(tmp_path)
    assert [im.name for im in images] == ["a", "b"]
    assert images[0].grey.shape == (40, 50) and images[0].grey.dtype == np.uint8
    assert [astuple(b) for b in images[0].boxes] == [pytest.approx((20.0, 15.0, 30.0, 25.0))]
    assert images[1].boxes == ()
    with pytest.raises(ImageSetError, match="has no images"):
        read_image_set(tmp_path / "train" / "labels")


def test_the_ultralytics_and_the_flat_layouts_are_read_with_their_labels(tmp_path: Path) -> None:
    grey = np.full((40, 50), 90, np.uint8)
    # Ultralytics: DIR/images/<split>/ with DIR/labels/<split>/
    for split, line in (("train", "0 0.5 0.5 0.2 0.25\n"), ("val", "0 0.5 0.5 0.2 0.25\n0 0.2 0.2 0.1 0.1\n")):
        (tmp_path / "u" / "images" / split).mkdir(parents=True)
        (tmp_path / "u" / "labels" / split).mkdir(parents=True)
        cv2.imwrite(str(tmp_path / "u" / "images" / split / f"{split}.png"), grey)
        (tmp_path / "u" / "labels" / split / f"{split}.txt").write_text(line)
    cv2.imwrite(str(tmp_path / "u" / "preview.png"), grey)  # not in an images folder: not part of the set
    images = read_image_set(tmp_path / "u")
    assert [(im.name, len(im.boxes)) for im in images] == [("train", 1), ("val", 2)]
    # the split's own folder given: its labels are still found
    assert [len(im.boxes) for im in read_image_set(tmp_path / "u" / "images" / "train")] == [1]
    # flat: images with their label files beside them, no images folder at all
    (tmp_path / "flat" / "case1").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "flat" / "case1" / "a.jpg"), grey)
    (tmp_path / "flat" / "case1" / "a.txt").write_text("0 0.5 0.5 0.2 0.25\n1 0.2 0.2 0.1 0.1\n")
    cv2.imwrite(str(tmp_path / "flat" / "b.png"), grey)  # no label file: no stone
    flat = read_image_set(tmp_path / "flat")
    assert [(im.name, len(im.boxes), im.has_label_file) for im in flat] == [("b", 0, False), ("a", 2, True)]


def test_a_folder_named_images_above_the_set_changes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "images" / "set"
    (root / "train" / "images").mkdir(parents=True)
    (root / "train" / "labels").mkdir()
    grey = np.full((40, 50), 90, np.uint8)
    cv2.imwrite(str(root / "train" / "images" / "a.png"), grey)
    (root / "train" / "labels" / "a.txt").write_text("0 0.5 0.5 0.2 0.25\n")
    cv2.imwrite(str(root / "preview.png"), grey)  # beside the set, not in its images folder
    assert [(im.name, len(im.boxes)) for im in read_image_set(root)] == [("a", 1)]


def test_the_two_copies_of_a_source_and_its_examination_stay_together() -> None:
    a1, a2 = _name(637007007498655107, 11, "aaa1"), _name(637007007498655107, 11, "bbb2")
    assert source_key(a1) == source_key(a2) == UID.format(ticks=637007007498655107, n=11)
    # 0.2 s later: the same examination; 2 hours later: another one
    same = UID.format(ticks=637007007500595218, n=12)
    later = UID.format(ticks=637007007498655107 + 72_000_000_000, n=13)
    keys = exam_keys([source_key(a1), same, later, "plain-name"])
    assert keys[source_key(a1)] == keys[same] != keys[later]
    assert keys["plain-name"] == "plain-name"
    grey = np.zeros((4, 4), np.uint8)
    images = [LabelledImage(Path(n + ".jpg"), grey, ()) for n in (a1, a2, same + "_png_jpg.rf.c", later)]
    sides = split_groups(images)
    where = {im.name: side for side, ims in sides.items() for im in ims}
    assert where[a1] == where[a2] == where[same + "_png_jpg.rf.c"]
    # the side is a property of the examination alone: adding images elsewhere moves nothing
    more = split_groups(images + [LabelledImage(Path("other.jpg"), grey, ())])
    assert {im.name: s for s, ims in more.items() for im in ims if im.name != "other"} == where


def test_the_split_follows_its_fractions() -> None:
    sides = [split_of(f"exam-{i}", (("train", 0.65), ("validation", 0.15), ("test", 0.2))) for i in range(4000)]
    share = {s: sides.count(s) / len(sides) for s in ("train", "validation", "test")}
    assert abs(share["train"] - 0.65) < 0.03 and abs(share["test"] - 0.2) < 0.03


def test_box_supervision_takes_the_pixels_above_the_boxs_background() -> None:
    grey = np.full((60, 60), 100, np.uint8)
    rr, cc = np.mgrid[:60, :60]
    disc = (rr - 30) ** 2 + (cc - 30) ** 2 <= 4**2
    grey[disc] = 250
    grey[10, 10] = 255  # bright, but outside the box
    mask = box_mask(grey, Box(22.0, 22.0, 39.0, 39.0))
    assert (mask == disc).all()
    # a box without contrast gives its brightest pixel only
    flat = np.full((60, 60), 100, np.uint8)
    flat[31, 29] = 105
    assert np.argwhere(box_mask(flat, Box(22.0, 22.0, 39.0, 39.0))).tolist() == [[31, 29]]


def test_windowed_grey_and_hu_round_trip_and_clip_stone_and_bone_alike() -> None:
    assert grey_to_hu(np.array([0, 255], np.uint8)).tolist() == [-160.0, 240.0]
    hu = np.array([-1000.0, -160.0, 40.0, 240.0, 700.0, 1500.0], np.float32)
    back = rewindow(hu, (40.0, 400.0))
    assert back[0] == back[1] == -160.0
    assert abs(back[2] - 40.0) <= 400 / 255
    assert back[3] == back[4] == back[5] == 240.0  # bone (700) and a stone (1500) both at the top
    assert hu_to_grey(hu, (40.0, 400.0)).tolist() == [0, 0, 128, 255, 255, 255]


def test_augmentation_windows_lone_slices_and_noise() -> None:
    spec = InputSpec(context=2, wide=(2, 4))
    rng = np.random.default_rng(0)
    hu = rng.normal(40, 300, (6, 64, 64, spec.raw_channels)).astype(np.float32)
    lone = drop_neighbours(hu, spec)
    for d in range(5):
        assert np.array_equal(lone[..., d], hu[..., 2])
    assert np.array_equal(lone[..., 5:], hu[..., 5:])
    shown = rewindow_patches(hu, np.array([40.0] * 6), np.array([400.0] * 6))
    assert shown.min() >= -160.0 and shown.max() <= 240.0
    # a narrower window clips more, read back through the assumed one
    narrow = rewindow_patches(hu, np.array([40.0] * 6), np.array([250.0] * 6))
    assert (narrow >= 239.9).sum() > (shown >= 239.9).sum()
    windowed = shown
    same = regrey_patches(windowed, np.ones(6), np.zeros(6))
    assert np.allclose(same, windowed, atol=1e-3)
    windowed_flag = np.array([True, True, True, False, False, False])
    out = augment_patches(hu, windowed_flag, spec, rng, Augmentation(rewindow=0, regrey=1, lone=1, noise=0))
    assert np.array_equal(out[3:, ..., 0], out[3:, ..., 2])  # HU patches: lone
    assert not np.array_equal(out[:3], hu[:3])  # windowed patches: another window


def test_blur_softens_the_slices_only_and_is_off_by_default() -> None:
    spec = InputSpec(context=2, wide=(2, 4))
    hu = np.full((4, 64, 64, spec.raw_channels), 40.0, np.float32)
    hu[:, 30:34, 30:34, :] = 800.0  # a 4-pixel stone on every channel
    blurred = blur_patches(hu, np.array([0.4, 0.8, 1.2, 1.2]), spec)
    peaks = blurred[:, 31, 31, 2]
    assert peaks[0] > peaks[1] > peaks[2] and peaks[2] < 800.0  # softer with the SD
    assert blurred[:, 30:34, 30:34, :5].sum() < hu[:, 30:34, 30:34, :5].sum()  # spread out of the stone
    assert np.allclose(blurred[..., :5].sum(axis=(1, 2)), hu[..., :5].sum(axis=(1, 2)), rtol=1e-3)  # kept
    np.testing.assert_array_equal(blurred[..., 5:], hu[..., 5:])  # the wide views are block means already
    rng_a, rng_b = np.random.default_rng(3), np.random.default_rng(3)
    off = augment_patches(hu, np.zeros(4, bool), spec, rng_a, Augmentation(rewindow=0, lone=0, noise=0))
    np.testing.assert_array_equal(off, hu)
    for _ in ("noise", "lone", "rewindow", "regrey"):  # the draws of the other changes' choices, and no more:
        rng_b.random(4)  # off, blur leaves the rotations drawn after it as they were
    assert rng_a.random() == rng_b.random()
    on = augment_patches(hu, np.zeros(4, bool), spec, rng_a, Augmentation(rewindow=0, lone=0, noise=0, blur=1))
    assert (on[:, 31, 31, 2] < 800.0).all()


def test_real_image_patches_mark_stone_candidates(tmp_path: Path) -> None:
    grey = np.full((160, 160), 100, np.uint8)
    rr, cc = np.mgrid[:160, :160]
    grey[(rr - 80) ** 2 + (cc - 80) ** 2 <= 9] = 255  # a stone in its box
    grey[(rr - 30) ** 2 + (cc - 120) ** 2 <= 9] = 255  # an unmarked bright spot
    image = LabelledImage(tmp_path / "x.png", grey, (Box(74.0, 74.0, 87.0, 87.0),))
    spec = InputSpec(context=2, wide=(2, 4))
    data = patches_from_images([image], spec=spec)
    assert data.windowed is not None and data.windowed.all()
    assert data.centre_stone is not None and data.centre_stone.sum() == 1
    assert data.patches.shape[1:] == (64, 64, spec.raw_channels)
    assert data.patches.max() <= 240.0


def test_image_scoring_counts_found_missed_and_false_stones() -> None:
    tally = ImageTally(pixel_mm=0.75)
    mask = np.zeros((100, 100), np.uint8)
    mask[10:13, 10:13] = 1  # centroid (11, 11): inside box A grown by 2 mm (2.67 px), not inside A itself
    mask[60:62, 80:82] = 1  # no box: a false stone
    boxes = [Box(13.0, 13.0, 20.0, 20.0), Box(40.0, 40.0, 50.0, 50.0)]
    tally.add("one", boxes, mask)
    tally.add("empty", [], np.zeros((100, 100), np.uint8))
    r = tally.as_dict()
    assert r["stones"] == 2 and r["stone_sensitivity"] == 0.5
    assert r["false_stones"] == 1 and r["false_stones_per_image"] == 0.5
    assert r["image_sensitivity"] == 1.0 and r["image_specificity"] == 1.0
    assert r["missed"][0]["box"] == [40.0, 40.0, 50.0, 50.0]
    assert r["stones_by_size"]["5-10 mm"] == 2
    assert [round(v) for v in reported_stones(mask)[0][:2]] == [11, 11]
    assert score_slices([mask, np.zeros_like(mask)])["slices_with_a_false_stone"] == 1


def test_a_lone_image_is_a_one_slice_volume() -> None:
    v = image_volume(np.zeros((30, 40), np.float32), "name")
    assert v.shape == (1, 30, 40)
    assert v.series_instance_uid == image_volume(np.zeros((30, 40), np.float32), "name").series_instance_uid
    assert v.series_instance_uid != image_volume(np.zeros((30, 40), np.float32), "other").series_instance_uid
