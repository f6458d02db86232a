"""Reading an 8-bit image in an unknown window: ``estimate_window`` and ``image_hu``.

Images in a soft-tissue window (the real stone images, a real CT shown at
300-600 wide) keep the assumed window; a real CT shown in a wide (bone)
window is recognised, and a stone of uric-acid density that the assumed
window would read as soft tissue is found once the image is read through the
estimated window.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from inference.pipeline import Pipeline
from inference.runtime import load_model
from lab.realimages import (
    ASSUMED_WINDOW,
    estimate_window,
    hu_to_grey,
    image_hu,
    image_volume,
    read_image_set,
    split_groups,
)
from lab.synth import real_anatomy_phantom, shared_data_dir


@pytest.fixture(scope="module")
def ct_slices() -> list[np.ndarray]:
    phantom = real_anatomy_phantom(7001)
    return [phantom.hu[k] for k in range(0, phantom.hu.shape[0], 6)]


@pytest.mark.parametrize("window", [(40, 400), (50, 350), (40, 300), (60, 600)])
def test_soft_tissue_windows_keep_the_assumed_one(ct_slices: list[np.ndarray], window: tuple[int, int]) -> None:
    hows = Counter(estimate_window(hu_to_grey(s, window)).how for s in ct_slices)
    assert hows == Counter({"assumed": len(ct_slices)})
    assert estimate_window(hu_to_grey(ct_slices[0], window)).window == ASSUMED_WINDOW


@pytest.mark.parametrize("window", [(300, 1500), (400, 2000)])
def test_wide_windows_are_recognised(ct_slices: list[np.ndarray], window: tuple[int, int]) -> None:
    estimates = [estimate_window(hu_to_grey(s, window)) for s in ct_slices]
    wide = [e for e in estimates if e.how == "fat and soft tissue"]
    assert len(wide) >= 0.6 * len(estimates)
    level, width = window
    assert abs(np.median([e.width for e in wide]) / width - 1) < 0.25
    assert abs(np.median([e.level for e in wide]) - level) < 100


def test_real_stone_images_keep_the_assumed_window() -> None:
    images = split_groups(read_image_set(shared_data_dir() / "real-stones"))["train"]
    assert Counter(estimate_window(im.grey).how for im in images) == Counter({"assumed": len(images)})


def test_image_hu_names_its_choices() -> None:
    grey = np.full((64, 64), 128, np.uint8)
    assert image_hu(grey, "assumed").flat[0] == pytest.approx(-160 + 128 * 400 / 255, abs=1e-3)
    with pytest.raises(ValueError, match="auto"):
        image_hu(grey, "bone")


def test_a_grey_stone_in_a_bone_window_is_found_through_the_estimate() -> None:
    phantom = real_anatomy_phantom(7001)
    big = 1 + int(np.argmax([s.diameter_mm for s in phantom.stones]))
    k = int(np.argmax((phantom.stone_labels == big).sum(axis=(1, 2))))
    truth = phantom.stone_labels[k] == big
    # a uric-acid-like stone: 450 HU at most, grey in a 1500/300 window
    hu = np.where(truth, np.minimum(phantom.hu[k], 450.0), phantom.hu[k])
    grey = hu_to_grey(hu, (300, 1500))
    assert estimate_window(grey).how == "fat and soft tissue"
    pipeline = Pipeline(load_model("default", cores=2))
    through_assumed = pipeline.run(image_volume(image_hu(grey, "assumed"), "bone")).mask[0] > 0
    through_estimate = pipeline.run(image_volume(image_hu(grey, "auto"), "bone")).mask[0] > 0
    assert not (through_assumed & truth).any()
    assert (through_estimate & truth).any()
