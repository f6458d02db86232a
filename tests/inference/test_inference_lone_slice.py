"""The shipped model on a lone slice, on windowed images, and on real images with stones.

A slice with no neighbours (an uploaded single file) must be predicted as
well as the same slice inside its series, and a windowed image read back as
HU (stones clipped with bone at the window's top) must still show its stones.
These guard the shipped model against regressions; its measured figures are
in docs/model.md.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from inference.pipeline import Pipeline
from inference.runtime import load_model
from inference.volume import Volume, load_volume
from inference.writers import write_results
from lab.imageeval import ImageTally
from lab.realimages import (
    ASSUMED_PIXEL_MM,
    ASSUMED_WINDOW,
    grey_to_hu,
    image_volume,
    read_image_set,
    rewindow,
    split_groups,
)
from lab.synth import Phantom, generate_phantom, shared_data_dir
from tests.factory import image_slice


@pytest.fixture(scope="module")
def pipeline() -> Pipeline:
    return Pipeline(load_model("default", cores=2))


@pytest.fixture(scope="module")
def phantoms() -> list[Phantom]:
    # seeds far from training (1000-9999) and from the documented evaluation (50000+)
    return [generate_phantom(91_000 + i, n_stones=4, coverage=(0.6, 0.95), stone_sites=("kidney",))
            for i in range(2)]


def _stone_slices(phantom: Phantom) -> list[tuple[int, int]]:
    """(stone label, slice) of the slice through the middle of each stone of 3 mm and more."""
    out = []
    for label, stone in enumerate(phantom.stones, start=1):
        if stone.diameter_mm < 3.0:
            continue
        ks = np.nonzero((phantom.stone_labels == label).any(axis=(1, 2)))[0]
        if ks.size:
            out.append((label, int(ks[ks.size // 2])))
    return out


def _lone(volume: Volume, k: int, hu: np.ndarray | None = None) -> Volume:
    return image_volume(volume.hu[k] if hu is None else hu, f"{volume.series_instance_uid}-{k}",
                        pixel_mm=volume.pixel_spacing[0])


def test_a_lone_slice_is_predicted_as_well_as_inside_its_series(pipeline: Pipeline, phantoms: list[Phantom]) -> None:
    in_series = alone = total = 0
    for phantom in phantoms:
        volume = phantom.to_volume()
        mask = pipeline.run(volume).mask
        for label, k in _stone_slices(phantom):
            truth = phantom.stone_labels[k] == label
            total += 1
            in_series += bool(mask[k][truth].any())
            alone += bool(pipeline.run(_lone(volume, k)).mask[0][truth].any())
    assert total >= 3
    assert in_series >= total - 1
    assert alone >= in_series - 1


def test_a_windowed_slice_read_back_as_hu_still_shows_its_stones(pipeline: Pipeline,
                                                                 phantoms: list[Phantom]) -> None:
    found = {w: 0 for w in ((40.0, 400.0), (50.0, 350.0), (60.0, 500.0))}
    total = 0
    for phantom in phantoms:
        volume = phantom.to_volume()
        for label, k in _stone_slices(phantom):
            truth = phantom.stone_labels[k] == label
            total += 1
            for window in found:
                shown = rewindow(volume.hu[k], window)
                assert shown.max() <= 240.0  # the stone is clipped with the bone
                found[window] += bool(pipeline.run(_lone(volume, k, shown)).mask[0][truth].any())
    assert total >= 3
    for window, n in found.items():
        assert n >= total - 1, window


def test_real_images_of_the_training_side_keep_their_stones(pipeline: Pipeline) -> None:
    """A regression guard on a few real images the model was trained on (never the held-out side)."""
    images = split_groups(read_image_set(shared_data_dir() / "real-stones"))["train"][:24]
    hit = total = false = 0
    for im in images:
        mask = pipeline.run(image_volume(grey_to_hu(im.grey), im.name)).mask[0]
        tally = ImageTally()
        tally.add(im.name, im.boxes, mask)
        hit += tally.found
        total += tally.stones
        false += tally.false_stones
    assert total >= 24
    assert hit / total >= 0.65  # 3.0.0 finds 0.74 of these 104; a guard, not a target
    assert false / len(images) <= 0.5


def test_a_lone_coronal_dicom_slice_is_predicted_as_its_image_is(pipeline: Pipeline, tmp_path: Path) -> None:
    """A coronal image sent or uploaded alone is read in its plane, as the model learned coronal images."""
    images = [im for im in split_groups(read_image_set(shared_data_dir() / "real-stones"))["train"][:6] if im.boxes]
    found = 0
    for n, im in enumerate(images):
        path = tmp_path / f"coronal-{n}.dcm"
        image_slice(path, im.grey, ASSUMED_PIXEL_MM, ASSUMED_WINDOW)
        volume = load_volume([path])
        assert volume.tilt_deg == pytest.approx(90.0)
        np.testing.assert_array_equal(volume.hu[0], grey_to_hu(im.grey))
        findings = pipeline.run(volume)
        np.testing.assert_array_equal(findings.mask[0], pipeline.run(image_volume(grey_to_hu(im.grey), im.name)).mask[0])
        tally = ImageTally()
        tally.add(im.name, im.boxes, findings.mask[0])
        found += tally.found
        if findings.stones:  # the results are written in the slice's own plane
            results = write_results(volume, findings)
            assert results.seg is not None
            shared = results.seg.SharedFunctionalGroupsSequence[0]
            assert [float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient] == [1, 0, 0, 0, 0, -1]
            assert all(s.max_diameter_mm > 0 for s in findings.stones)
    assert found >= 1
