"""Real images with boxes: label reading, grouping and the split, box supervision, windows, scoring."""

from __future__ import annotations

import codecs
from collections.abc import Callable
from dataclasses import astuple
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

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
    exam_time_s,
    grey_to_hu,
    hu_to_grey,
    image_volume,
    read_boxes,
    read_hu16,
    read_image,
    read_image_set,
    rewindow,
    source_key,
    split_groups,
    split_of,
    stone_mask,
    unique_names,
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


def _labelled_set(root: Path, images: str = "images", labels: str = "labels") -> None:
    """``root/<images>/a.png`` (a bright square at rows 10-19, columns 20-29) with its box in ``root/<labels>/a.txt``."""
    (root / images).mkdir(parents=True)
    (root / labels).mkdir()
    grey = np.full((40, 50), 90, np.uint8)
    grey[10:20, 20:30] = 220
    cv2.imwrite(str(root / images / "a.png"), grey)
    (root / labels / "a.txt").write_text("0 0.5 0.375 0.2 0.25\n")


def test_label_values_a_hair_outside_the_image_are_clipped_not_refused() -> None:
    """A tool's rounding (cx -1e-6, w 1.0000001) is clipped to the image; further out is still refused."""
    low, wide = read_boxes("0 -0.000001 0.5 0.02 0.02\n0 0.5 0.5 1.0000001 0.1\n", rows=100, columns=100)
    assert astuple(low) == pytest.approx((0.0, 49.0, 1.0, 51.0))
    assert astuple(wide) == pytest.approx((0.0, 45.0, 100.0, 55.0))
    (poly,) = read_boxes("0 -0.0009 0.2 0.3 0.2 0.2 1.0009\n", rows=100, columns=100)
    assert astuple(poly) == pytest.approx((0.0, 20.0, 30.0, 100.0))
    for line in ("0 -0.002 0.5 0.1 0.1", "0 0.5 0.5 1.002 0.1", "0 -0.002 0.2 0.3 0.2 0.2 0.6"):
        with pytest.raises(ImageSetError, match="lab.txt:1"):
            read_boxes(line, 10, 10, where="lab.txt")


@pytest.mark.parametrize("encode", [
    lambda text: text.encode("utf-16"),  # Windows PowerShell 5's '>' and Out-File: a BOM, then UTF-16 LE
    lambda text: codecs.BOM_UTF16_BE + text.encode("utf-16-be"),
    lambda text: codecs.BOM_UTF8 + text.encode(),  # Notepad, .NET's StreamWriter
], ids=["utf-16", "utf-16-be", "utf-8-bom"])
def test_label_files_in_utf16_or_with_a_byte_order_mark_are_read(tmp_path: Path,
                                                                   encode: Callable[[str], bytes]) -> None:
    _labelled_set(tmp_path)
    (tmp_path / "labels" / "a.txt").write_bytes(encode("0 0.5 0.375 0.2 0.25\r\n0 0.2 0.2 0.1 0.1\r\n"))
    (image,) = read_image_set(tmp_path)
    assert [astuple(b) for b in image.boxes] == [pytest.approx((20.0, 10.0, 30.0, 20.0)),
                                                 pytest.approx((7.5, 6.0, 12.5, 10.0))]


def test_a_label_file_that_is_not_text_is_refused_with_its_name(tmp_path: Path) -> None:
    _labelled_set(tmp_path)
    (tmp_path / "labels" / "a.txt").write_bytes("0 0.5 0.375 0.2 0.25 # Taş\n".encode("cp1254"))
    with pytest.raises(ImageSetError, match="a.txt: not text in UTF-8 or UTF-16"):
        read_image_set(tmp_path)


def test_hidden_folders_and_macos_leftovers_are_not_part_of_the_set(tmp_path: Path) -> None:
    root = tmp_path / ".cache" / "set"  # a set inside a hidden folder is still read
    _labelled_set(root)
    (root / "__MACOSX" / "images").mkdir(parents=True)
    (root / "__MACOSX" / "images" / "._a.png").write_bytes(b"\x00\x05\x16\x07 Mac OS X resource fork")
    (root / "images" / ".ipynb_checkpoints").mkdir()
    cv2.imwrite(str(root / "images" / ".ipynb_checkpoints" / "a-checkpoint.png"), np.zeros((40, 50), np.uint8))
    cv2.imwrite(str(root / "images" / ".b.png"), np.zeros((40, 50), np.uint8))
    assert [(im.name, len(im.boxes)) for im in read_image_set(root)] == [("a", 1)]


@pytest.mark.parametrize(("images", "labels"), [("Images", "Labels"), ("IMAGES", "labels"), ("images", "Labels")])
def test_images_and_labels_folders_are_found_in_any_case(tmp_path: Path, images: str, labels: str) -> None:
    _labelled_set(tmp_path / "set", images, labels)
    cv2.imwrite(str(tmp_path / "set" / "preview.png"), np.zeros((40, 50), np.uint8))  # not in the images folder
    (image,) = read_image_set(tmp_path / "set")
    assert image.has_label_file and [astuple(b) for b in image.boxes] == [pytest.approx((20.0, 10.0, 30.0, 20.0))]


def test_a_jpegs_exif_orientation_is_applied(tmp_path: Path) -> None:
    """Stored on its side with EXIF Orientation 6 (turn 90 degrees clockwise to show): labelled as shown."""
    shown = np.full((40, 60), 30, np.uint8)
    shown[5:15, 40:55] = 230
    exif = Image.Exif()
    exif[0x0112] = 6
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    Image.fromarray(np.rot90(shown, 1)).save(tmp_path / "images" / "a.jpg", exif=exif.tobytes(), quality=95)
    (tmp_path / "labels" / "a.txt").write_text(f"0 {47.5 / 60} {10 / 40} {15 / 60} {10 / 40}\n")
    (image,) = read_image_set(tmp_path)
    assert image.grey.shape == (40, 60)
    assert np.abs(image.grey.astype(int) - shown).mean() < 3
    mask = stone_mask(image)  # the box lies on the bright square
    assert mask.any() and image.grey[mask].min() > 180


def _palette_png(path: Path, grey: np.ndarray) -> None:
    picture = Image.fromarray(grey, mode="L").convert("P")
    picture.putpalette([v for i in range(256) for v in (i, i, i)])
    picture.save(path)


GREY = (np.arange(48 * 64).reshape(48, 64) % 251).astype(np.uint8)
HU = (np.arange(48 * 64).reshape(48, 64) % 1500 - 1000).astype(np.int16)


@pytest.mark.parametrize(("name", "write", "grey", "hu"), [
    ("ct.png", lambda p: cv2.imwrite(str(p), (HU + 1024).astype(np.uint16)), hu_to_grey(HU.astype(np.float32),
                                                                                          (40.0, 400.0)), HU),
    ("ct.tif", lambda p: cv2.imwrite(str(p), HU), hu_to_grey(HU.astype(np.float32), (40.0, 400.0)), HU),
    ("rgba.png", lambda p: cv2.imwrite(str(p), np.dstack([GREY, GREY, GREY, np.full_like(GREY, 128)])), GREY, None),
    ("palette.png", lambda p: _palette_png(p, GREY), GREY, None),
    ("display16.png", lambda p: cv2.imwrite(str(p), GREY.astype(np.uint16) * 257), GREY, None),
], ids=["16-bit-png", "signed-16-bit-tiff", "rgba-png", "palette-png", "16-bit-display-png"])
def test_image_kinds_read_as_they_were(tmp_path: Path, name: str, write: Callable[[Path], object],
                                       grey: np.ndarray, hu: np.ndarray | None) -> None:
    """The EXIF-applying flags keep 16 bits, the sign, and the grey of colour, alpha and palette images."""
    write(tmp_path / name)
    got_grey, got_hu, _, _ = read_image(tmp_path / name)
    np.testing.assert_array_equal(got_grey, grey)
    if hu is None:
        assert got_hu is None
    else:
        assert got_hu is not None
        np.testing.assert_array_equal(got_hu, hu.astype(np.float32))


def test_a_grayscale_jpeg_reads_as_its_own_grey(tmp_path: Path) -> None:
    cv2.imwrite(str(tmp_path / "g.jpg"), GREY)
    got_grey, got_hu, _, _ = read_image(tmp_path / "g.jpg")
    assert got_hu is None and got_grey.ndim == 2
    np.testing.assert_array_equal(got_grey, cv2.imread(str(tmp_path / "g.jpg"), cv2.IMREAD_GRAYSCALE))


def test_an_8bit_image_saved_in_a_16bit_file_is_read_as_8bit(tmp_path: Path) -> None:
    """ImageJ's or MATLAB's ``uint16(img)``: every value 0-255, the grey levels themselves; not refused."""
    grey, hu = read_hu16(GREY.astype(np.uint16))
    assert hu is None and grey.dtype == np.uint8
    np.testing.assert_array_equal(grey, GREY)
    cv2.imwrite(str(tmp_path / "raw.png"), GREY.astype(np.uint16))
    got_grey, got_hu, _, _ = read_image(tmp_path / "raw.png")
    assert got_hu is None
    np.testing.assert_array_equal(got_grey, GREY)
    # stored CT values (HU + 1024) above 255 are still HU
    assert read_hu16((HU + 1024).astype(np.uint16))[1] is not None


def _two_patients(root: Path) -> None:
    """``p1`` and ``p2`` each with ``images/slice1.png`` and ``slice2.png``; only p1's slice1 has a stone."""
    for folder in ("p1", "p2"):
        (root / folder / "images").mkdir(parents=True)
        (root / folder / "labels").mkdir()
        for stem in ("slice1", "slice2"):
            grey = np.full((60, 60), 200 if folder == "p1" else 20, np.uint8)
            cv2.imwrite(str(root / folder / "images" / f"{stem}.png"), grey)
    (root / "p1" / "labels" / "slice1.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    cv2.imwrite(str(root / "p2" / "images" / "only.png"), np.zeros((60, 60), np.uint8))


def test_images_with_one_name_in_two_folders_keep_apart(tmp_path: Path) -> None:
    """Each patient's ``slice1`` is its own image and its own source; a unique name stays as it was."""
    _two_patients(tmp_path)
    images = read_image_set(tmp_path)
    assert [im.name for im in images] == ["p1/images/slice1", "p1/images/slice2", "only", "p2/images/slice1",
                                          "p2/images/slice2"]
    assert [im.source for im in images] == [im.name for im in images]
    assert [len(im.boxes) for im in images] == [1, 0, 0, 0, 0]
    assert len(set(exam_keys(im.source for im in images).values())) == 5
    sides = split_groups(images)
    assert sorted(im.name for ims in sides.values() for im in ims) == sorted(im.name for im in images)


def test_unique_names_qualify_only_what_collides() -> None:
    root = Path("set")
    paths = [root / "p1/images/a.jpg", root / "p1/images/a.png", root / "p2/images/a.jpg",
             root / "p2/images/x_png.rf.1f2e.jpg", root / "p3/images/x_png.rf.1f2e.jpg", root / "b.jpg"]
    unique = unique_names(paths, root)
    assert unique == ["p1/images/a.jpg", "p1/images/a.png", "p2/images/a", "p2/images/x_png.rf.1f2e",
                      "p3/images/x_png.rf.1f2e", ""]
    grey = np.zeros((4, 4), np.uint8)
    images = [LabelledImage(p, grey, (), unique_as=u) for p, u in zip(paths, unique, strict=True)]
    assert [im.source for im in images] == ["p1/images/a", "p1/images/a", "p2/images/a", "p2/images/x",
                                            "p3/images/x", "b"]
    # a timestamped UID after the folder is still an examination's time
    ticks = UID.format(ticks=637007007498655107, n=11)
    assert exam_time_s(f"p1/images/{ticks}") == exam_time_s(ticks) == exam_time_s("p1/images/63700700749865510700001-11")


def test_the_pictures_of_a_miss_show_its_own_image(tmp_path: Path) -> None:
    """``evaluate --pictures`` draws a miss in the image it was missed in, not another of the same file name."""
    from lab.cli import _image_failure_pictures
    from lab.imageeval import failure_picture, score_images

    _two_patients(tmp_path)
    images = read_image_set(tmp_path)

    def nothing(im: LabelledImage) -> np.ndarray:
        return np.zeros(im.grey.shape, np.uint8)

    result = score_images(images, nothing)
    (miss,) = result["missed"]
    pictures = _image_failure_pictures(images, nothing, result)
    (drawn,) = pictures["missed-stone-5mm-and-more"] + pictures["missed-stone-under-5mm"]
    x0, y0, x1, y1 = miss["box"]
    mine = images[0]
    expected = failure_picture(mine.grey, nothing(mine), mine.boxes, ((y0 + y1) / 2, (x0 + x1) / 2),
                               f"missed {miss['size_mm']} mm")
    np.testing.assert_array_equal(drawn, expected)
