"""A patient lying feet first (probe 37): the images are the head-first ones mirrored and their slices run head end
first; the series is analysed as the head-first series of the same patient (``inference.volume.mirrored``), which
is what the model learned from, and its outputs are mirrored back: the same stones, the same voxels."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from inference.pipeline import Pipeline
from inference.volume import mirrored
from lab.synth import generate_phantom


def test_a_feet_first_series_is_the_same_patient_mirrored() -> None:
    rng = np.random.default_rng(37)
    head = dataclasses.replace(generate_phantom(1, rows=96, slices=12, n_stones=1).to_volume(),
                               hu=rng.normal(0, 300, (12, 96, 96)).astype(np.float32))
    feet = mirrored(head)
    assert not head.index_from_head and feet.index_from_head and not mirrored(feet).index_from_head
    assert np.all(np.diff(feet.offsets_mm) > 0)  # still in the order of its normal
    n, _, columns = head.shape
    for k, r, c in [(0, 5, 7), (6, 40, 90), (11, 95, 0)]:
        np.testing.assert_allclose(feet.index_to_patient(np.array([n - 1 - k, r, columns - 1 - c])),
                                   head.index_to_patient(np.array([k, r, c])), atol=1e-6)
        assert feet.hu[n - 1 - k, r, columns - 1 - c] == head.hu[k, r, c]
        assert feet.sop_instance_uids[n - 1 - k] == head.sop_instance_uids[k]
    back = mirrored(feet)
    np.testing.assert_array_equal(back.hu, head.hu)
    np.testing.assert_allclose(back.positions, head.positions, atol=1e-9)
    assert back.row_direction == head.row_direction and back.sop_instance_uids == head.sop_instance_uids


@pytest.mark.slow
def test_a_feet_first_series_reports_the_stones_of_the_same_series_head_first() -> None:
    """Probe 37 measured one abdomen's three stones at 6.71 / 5.60 / 5.03 mm head first and 6.45 / 5.30 / 5.03 mm
    feet first, with volumes up to 4 % apart: the network saw mirrored images with reversed neighbours. Now the
    same voxels, on the series' own grid, and the same components."""
    head = generate_phantom(100, rows=512, slice_spacing=2.5, slices=24, coverage=(0.72, 0.88), n_stones=3,
                            stone_sites=("kidney",)).to_volume()
    feet = mirrored(head)
    pipeline = Pipeline()
    prob_head, mask_head, table_head = pipeline.analyse(head)
    prob_feet, mask_feet, table_feet = pipeline.analyse(feet)
    np.testing.assert_array_equal(mask_feet[::-1, :, ::-1], mask_head)
    np.testing.assert_array_equal(prob_feet[::-1, :, ::-1], prob_head)
    n, _, columns = head.shape
    np.testing.assert_array_equal(table_feet.peaks, [[n - 1 - k, r, columns - 1 - c] for k, r, c in table_head.peaks])
    for box_head, box_feet in zip(table_head.boxes, table_feet.boxes, strict=True):
        assert box_head is not None and box_feet is not None
        np.testing.assert_array_equal(np.asarray(mask_head[box_head]), np.asarray(mask_feet[box_feet])[::-1, :, ::-1])
    by_head, by_feet = pipeline.run(head), pipeline.run(feet)
    assert len(by_head.stones) == 3 and len(by_feet.stones) == 3
    for a in by_head.stones:
        (b,) = [s for s in by_feet.stones if np.linalg.norm(np.subtract(s.centroid_mm, a.centroid_mm)) < 1e-3]
        assert b.side == a.side and b.mean_hu == pytest.approx(a.mean_hu, abs=1e-3)
        for size in ("max_diameter_mm", "length_mm", "volume_mm3"):
            assert getattr(b, size) == pytest.approx(getattr(a, size), abs=1e-6), size
