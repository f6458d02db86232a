"""The pixel size of an image file that states none, from its body's width (lab.realimages.estimate_pixel_mm)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from lab.imageeval import score_images
from lab.realimages import (
    ASSUMED_PIXEL_MM,
    estimate_pixel_mm,
    hu_to_grey,
    image_hu,
    read_image_set,
    split_groups,
)
from lab.synth import generate_phantom, shared_data_dir


@pytest.fixture(scope="module")
def whole_slice() -> tuple[np.ndarray, float]:
    """A generated abdomen's axial slice (HU) and its pixel size: the body whole inside the image."""
    phantom = generate_phantom(93_000, slices=3, n_stones=1)
    return phantom.hu[1], phantom.pixel_spacing


def _export(hu: np.ndarray, factor: float) -> np.ndarray:
    """``hu`` shown in a soft-tissue window, resized by ``factor`` and read back, as an export of it is."""
    grey = hu_to_grey(hu, (40.0, 400.0))
    grey = cv2.resize(grey, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR)
    return image_hu(grey)


def test_a_whole_slice_at_its_own_pixels_keeps_the_assumed_size(whole_slice: tuple[np.ndarray, float]) -> None:
    hu, _ = whole_slice
    for image in (hu, _export(hu, 1.0)):
        estimate = estimate_pixel_mm(image)
        assert estimate.how == "assumed" and estimate.pixel_mm == ASSUMED_PIXEL_MM
        assert estimate.body_width_px is not None  # measured, and near enough to the assumption to keep it


def test_finer_only_keeps_the_assumed_size_for_an_export_at_a_smaller_matrix(
        whole_slice: tuple[np.ndarray, float]) -> None:
    hu, pixel_mm = whole_slice
    assert estimate_pixel_mm(_export(hu, 0.5), finer_only=True).how == "assumed"
    larger = estimate_pixel_mm(_export(hu, 2.0), finer_only=True)
    assert larger.how == "body width" and larger.pixel_mm == pytest.approx(pixel_mm / 2, rel=0.33)
    with pytest.raises(ValueError, match="estimate_pixel"):
        read_image_set(shared_data_dir() / "real-stones", estimate_pixel="yes")


@pytest.mark.parametrize("factor", [0.5, 2.0])
def test_a_whole_slice_exported_at_another_matrix_is_read_near_its_true_pixel_size(
        whole_slice: tuple[np.ndarray, float], factor: float) -> None:
    hu, pixel_mm = whole_slice
    estimate = estimate_pixel_mm(_export(hu, factor))
    assert estimate.how == "body width"
    # the generator's bodies are 250-340 mm wide, the estimate takes 320: within a third of the truth
    assert estimate.pixel_mm == pytest.approx(pixel_mm / factor, rel=0.33)


def test_a_crop_or_an_empty_image_keeps_the_assumed_size(whole_slice: tuple[np.ndarray, float]) -> None:
    hu, _ = whole_slice
    half = _export(hu, 0.5)
    rows, columns = half.shape
    # the body cut by the image's edges: nothing says how wide it is
    assert estimate_pixel_mm(half[rows // 4: 3 * rows // 4, columns // 4: 3 * columns // 4]).how == "assumed"
    assert estimate_pixel_mm(np.full((200, 200), -1000.0, np.float32)).how == "assumed"
    assert estimate_pixel_mm(np.full((40, 40), 40.0, np.float32)).how == "assumed"


def test_no_real_stone_image_is_given_an_estimate() -> None:
    """The real images are crops around the kidneys: were the estimate on, every figure on them would stand."""
    images = read_image_set(shared_data_dir() / "real-stones", estimate_pixel="both")
    assert len(images) == 1177
    assert {(im.pixel_from, im.pixel_mm) for im in images} == {("assumed", ASSUMED_PIXEL_MM)}
    assert {im.pixel_from for im in read_image_set(shared_data_dir() / "real-stones", pixel_mm=0.8)[:5]} == {"given"}


def test_a_set_of_exported_whole_slices_is_read_and_scored_at_the_estimate(
        tmp_path: Path, whole_slice: tuple[np.ndarray, float]) -> None:
    hu, pixel_mm = whole_slice
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    grey = cv2.resize(hu_to_grey(hu, (40.0, 400.0)), None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)
    cv2.imwrite(str(tmp_path / "images" / "half.png"), grey)
    (tmp_path / "labels" / "half.txt").write_text("0 0.5 0.5 0.02 0.02\n")
    real = split_groups(read_image_set(shared_data_dir() / "real-stones"))["validation"][0]
    cv2.imwrite(str(tmp_path / "images" / "crop.png"), real.grey)
    (tmp_path / "labels" / "crop.txt").write_text("")
    assert {im.pixel_from for im in read_image_set(tmp_path)} == {"assumed"}  # off unless asked for
    images = {im.name: im for im in read_image_set(tmp_path, estimate_pixel="both")}
    assert images["half"].pixel_from == "body width"
    assert images["half"].pixel_mm == pytest.approx(2 * pixel_mm, rel=0.33)
    assert images["crop"].pixel_from == "assumed" and images["crop"].pixel_mm == ASSUMED_PIXEL_MM
    result = score_images(images.values(), lambda im: np.zeros(im.grey.shape, np.uint8))
    assert result["images_at_an_estimated_pixel_mm"] == 1 and result["images_at_their_own_pixel_mm"] == 0
    # the box is sized in the estimated millimetres: 5 pixels of 1.6 mm (8 mm), not of the assumed 0.75 (3.8 mm)
    assert sum(result["stones_by_size"].values()) == 1 and result["stones_by_size"]["3-5 mm"] == 0
