"""Image folders whose files carry Hounsfield units: 16-bit images and DICOM CT images in any plane.

Other hospitals' images come as 16-bit stored values or as DICOM more often than as
8-bit display images; read as 8-bit they were refused, read through the assumed
window they would lose what the file says (the HU, the pixel spacing).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest

from lab.imageeval import score_images
from lab.realimages import (
    ASSUMED_PIXEL_MM,
    ASSUMED_WINDOW,
    ImageSetError,
    hu_to_grey,
    read_image_set,
)
from tests.factory import ct_slice, uid

CORONAL = [1, 0, 0, 0, 0, -1]


def _hu_image(rows: int = 48, columns: int = 64) -> np.ndarray:
    """Air around a body of fat and soft tissue, with a 900 HU stone and -1000 HU gas in a loop."""
    hu = np.full((rows, columns), -1000, np.int32)
    hu[6:42, 6:58] = -100
    hu[12:36, 14:50] = 40
    hu[22:26, 30:34] = 900
    hu[14:17, 40:44] = -990
    return hu


def _folder(tmp_path: Path, name: str) -> tuple[Path, Path]:
    images, labels = tmp_path / "set" / "images", tmp_path / "set" / "labels"
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(exist_ok=True)
    (labels / f"{Path(name).stem}.txt").write_text(f"0 {32 / 64} {24 / 48} {6 / 64} {6 / 48}\n")
    return images / name, tmp_path / "set"


@pytest.mark.parametrize("offset", [1024, 32768], ids=["stored-values", "deeplesion"])
def test_a_16_bit_image_of_stored_ct_values_is_read_as_hu(tmp_path: Path, offset: int) -> None:
    hu = _hu_image()
    path, folder = _folder(tmp_path, "a.png")
    assert cv2.imwrite(str(path), (hu + offset).astype(np.uint16))
    (image,) = read_image_set(folder)
    assert image.hu is not None
    np.testing.assert_array_equal(image.hu, hu.astype(np.float32))
    np.testing.assert_array_equal(image.grey, hu_to_grey(hu.astype(np.float32), ASSUMED_WINDOW))
    assert image.pixel_mm == ASSUMED_PIXEL_MM and image.as_hu() is image.hu


def test_a_signed_16_bit_image_holds_the_hu_themselves(tmp_path: Path) -> None:
    hu = _hu_image()
    path, folder = _folder(tmp_path, "a.tif")
    assert cv2.imwrite(str(path), hu.astype(np.int16))
    (image,) = read_image_set(folder)
    assert image.hu is not None
    np.testing.assert_array_equal(image.hu, hu.astype(np.float32))


def test_a_signed_16_bit_image_of_stored_values_is_read_with_their_offset(tmp_path: Path) -> None:
    """pydicom's pixel_array of a signed CT (intercept -1024) saved as it is: no negative value, air at 0."""
    hu = _hu_image()
    path, folder = _folder(tmp_path, "a.tif")
    assert cv2.imwrite(str(path), (hu + 1024).astype(np.int16))
    (image,) = read_image_set(folder)
    assert image.hu is not None
    np.testing.assert_array_equal(image.hu, hu.astype(np.float32))


def test_a_display_image_scaled_to_16_bits_is_read_as_its_8_bit_self(tmp_path: Path) -> None:
    grey = hu_to_grey(_hu_image().astype(np.float32), ASSUMED_WINDOW)
    path, folder = _folder(tmp_path, "a.png")
    assert cv2.imwrite(str(path), grey.astype(np.uint16) * 257)  # 255 -> 65535
    (image,) = read_image_set(folder)
    assert image.hu is None
    np.testing.assert_array_equal(image.grey, grey)


def test_16_bit_values_that_are_no_ct_numbers_are_refused(tmp_path: Path) -> None:
    path, folder = _folder(tmp_path, "a.png")
    assert cv2.imwrite(str(path), np.full((48, 64), 9000, np.uint16))  # 7,976 HU everywhere
    with pytest.raises(ImageSetError, match="not CT numbers"):
        read_image_set(folder)


def _dicom(path: Path, hu: np.ndarray, *, orientation: list[int], spacing: float) -> None:
    ds = ct_slice(uid("study", path), uid("series", path), 0, spacing=spacing)
    ds.Rows, ds.Columns = hu.shape
    ds.ImageOrientationPatient = orientation
    ds.PixelSpacing = [spacing, spacing]
    ds.PixelData = (hu + 1024).astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)


def test_a_dicom_image_in_any_plane_is_read_with_its_hu_and_spacing(tmp_path: Path) -> None:
    hu = _hu_image()
    path, folder = _folder(tmp_path, "a.dcm")
    _dicom(path, hu, orientation=CORONAL, spacing=0.6)
    (image,) = read_image_set(folder)
    assert image.hu is not None
    np.testing.assert_array_equal(image.hu, hu.astype(np.float32))
    assert image.pixel_mm == pytest.approx(0.6)
    # scored at its own spacing: the 6-pixel box is 3.6 mm, and grown by 2 mm is 3.3 pixels, not 2.7
    result = score_images([image], lambda im: (im.as_hu() > 500).astype(np.uint8))
    assert result["stone_sensitivity"] == 1.0 and result["false_stones"] == 0
    assert result["stones_by_size"]["3-5 mm"] == 1
    assert result["images_at_their_own_pixel_mm"] == 1


@pytest.mark.parametrize("kind", ["not-ct", "not-dicom"])
def test_a_dicom_file_that_is_no_ct_image_is_refused_with_the_reason(tmp_path: Path, kind: str) -> None:
    path, folder = _folder(tmp_path, "a.dcm")
    _dicom(path, _hu_image(), orientation=CORONAL, spacing=0.7)
    if kind == "not-ct":
        ds = pydicom.dcmread(path)
        ds.Modality = "MR"
        ds.save_as(path)
    else:
        path.write_bytes(b"a JPEG renamed, perhaps" * 20)
    with pytest.raises(ImageSetError, match="not CT" if kind == "not-ct" else "cannot be read as DICOM") as info:
        read_image_set(folder)
    assert "a.dcm" in str(info.value)


def test_a_pixel_spacing_given_for_the_images_that_carry_none(tmp_path: Path) -> None:
    hu = _hu_image()
    path, folder = _folder(tmp_path, "a.png")
    assert cv2.imwrite(str(path), hu_to_grey(hu.astype(np.float32), ASSUMED_WINDOW))
    _dicom(folder / "images" / "b.dcm", hu, orientation=CORONAL, spacing=0.6)
    (folder / "labels" / "b.txt").write_text("")
    png, dcm = read_image_set(folder, pixel_mm=0.4)
    assert png.pixel_mm == 0.4 and dcm.pixel_mm == pytest.approx(0.6)  # a DICOM image keeps its own
    assert not png.own_spacing and dcm.own_spacing
    result = score_images([png], lambda im: (im.as_hu() > 500).astype(np.uint8), pixel_mm=0.4)
    assert result["pixel_mm"] == 0.4 and result["images_at_their_own_pixel_mm"] == 0
    assert result["stones_by_size"]["<3 mm"] == 1  # the 6-pixel box is 2.4 mm at 0.4 mm (4.5 at 0.75)
    with pytest.raises(ImageSetError, match="not a CT image's"):
        read_image_set(folder, pixel_mm=50.0)


def test_evaluate_refuses_an_unreadable_folder_before_any_other_work(tmp_path: Path) -> None:
    path, folder = _folder(tmp_path, "a.png")
    assert cv2.imwrite(str(path), np.full((48, 64), 9000, np.uint16))
    done = subprocess.run([sys.executable, "-m", "uronode", "evaluate", "--series", "30", "--images", str(folder)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "cannot read" in done.stderr and "not CT numbers" in done.stderr
    assert "generated" not in done.stdout  # no generated series was evaluated first


def test_dicom_images_of_one_study_are_one_examination_for_the_split(tmp_path: Path) -> None:
    hu = _hu_image()
    for name in ("a.dcm", "b.dcm"):
        path, folder = _folder(tmp_path, name)
        _dicom(path, hu, orientation=CORONAL, spacing=0.7)
    a, b = read_image_set(folder)
    assert a.study_uid is not None and a.study_uid != b.study_uid  # the factory gives each file its own study
    assert a.source == f"study-{a.study_uid}"
    ds = pydicom.dcmread(folder / "images" / "b.dcm")
    ds.StudyInstanceUID = a.study_uid
    ds.save_as(folder / "images" / "b.dcm")
    a, b = read_image_set(folder)
    assert a.source == b.source  # one study: one examination, never on both sides of the split
