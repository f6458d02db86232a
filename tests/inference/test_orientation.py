"""A patient lying feet first (probe 37): the images are the head-first ones mirrored and their slices run head end
first, so the network, which learned head-first series, is shown them mirrored back with their neighbouring slices
feet end first (``inference.pipeline.as_head_first``), and finds the same stones at the same sizes."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from inference.network import cut_inputs
from inference.pipeline import Pipeline, as_head_first
from inference.volume import Volume
from lab.synth import generate_phantom


def feet_first(volume: Volume) -> Volume:
    """The same patient and voxels as a feet-first series stores them (ImageOrientationPatient -1,0,0,0,1,0): each
    image mirrored left-right, the slices in the order of their normal, which points to the feet."""
    columns = volume.shape[2]
    row = np.asarray(volume.row_direction)
    return dataclasses.replace(
        volume, hu=np.ascontiguousarray(volume.hu[::-1, :, ::-1]),
        positions=volume.positions[::-1] + (columns - 1) * volume.pixel_spacing[1] * row,
        row_direction=(-row[0], -row[1], -row[2]), sop_instance_uids=volume.sop_instance_uids[::-1],
        frame_numbers=volume.frame_numbers[::-1], source_paths=volume.source_paths[::-1])


def test_a_feet_first_series_is_the_same_patient_and_its_patches_are_shown_head_first() -> None:
    rng = np.random.default_rng(37)
    head = dataclasses.replace(generate_phantom(1, rows=96, slices=12, n_stones=1).to_volume(),
                               hu=rng.normal(0, 300, (12, 96, 96)).astype(np.float32))
    feet = feet_first(head)
    assert not head.index_from_head and feet.index_from_head
    n, _, columns = head.shape
    for k, r, c in [(0, 5, 7), (6, 40, 90), (11, 95, 0)]:
        np.testing.assert_allclose(feet.index_to_patient(np.array([n - 1 - k, r, columns - 1 - c])),
                                   head.index_to_patient(np.array([k, r, c])), atol=1e-6)
        assert feet.hu[n - 1 - k, r, columns - 1 - c] == head.hu[k, r, c]
    spec = Pipeline().spec
    centres = np.array([[5, 40, 50], [1, 10, 80], [10, 90, 3]])  # near the edges too: mirrored padding
    # an even patch's window mirrored spans one column on (as the pipeline cuts it)
    mirrored = np.array([[n - 1 - k, r, columns - 1 - c + 1] for k, r, c in centres])
    np.testing.assert_allclose(as_head_first(cut_inputs(feet.hu, mirrored, spec), spec),
                               cut_inputs(head.hu, centres, spec), atol=1e-3)  # the wide views' means: float sums


@pytest.mark.slow
def test_a_feet_first_series_reports_the_stones_of_the_same_series_head_first() -> None:
    """Probe 37 measured one abdomen's three stones at 6.71 / 5.60 / 5.03 mm head first and 6.45 / 5.30 / 5.03 mm
    feet first, with volumes up to 4 % apart: the network saw mirrored images with reversed neighbours. Now the
    same voxels."""
    head = generate_phantom(100, rows=512, slice_spacing=2.5, slices=24, coverage=(0.72, 0.88), n_stones=3,
                            stone_sites=("kidney",)).to_volume()
    pipeline = Pipeline()
    by_head, by_feet = pipeline.run(head), pipeline.run(feet_first(head))
    assert by_head.stones and len(by_feet.stones) == len(by_head.stones)
    for a in by_head.stones:
        (b,) = [s for s in by_feet.stones if np.linalg.norm(np.subtract(s.centroid_mm, a.centroid_mm)) < 1.0]
        assert b.side == a.side and b.mean_hu == pytest.approx(a.mean_hu, abs=1e-3)  # the same voxels
        for size in ("max_diameter_mm", "length_mm", "volume_mm3"):
            assert getattr(b, size) == pytest.approx(getattr(a, size), abs=1e-6), size
