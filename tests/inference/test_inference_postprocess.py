"""Postprocessing on known masks: components, measurements in mm, sides, boxes."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.typing import ArrayLike

from inference.postprocess import max_axial_diameter_mm, measure_stones
from inference.volume import Volume


def _volume(slices: int = 10, rows: int = 64, spacing: tuple[float, float] = (0.5, 0.8),
            positions: ArrayLike | None = None) -> Volume:
    hu = np.full((slices, rows, rows), -1000.0, dtype=np.float32)
    hu[:, 8:rows - 8, 8:rows - 8] = 40.0  # the body, centred on column (rows - 1) / 2
    if positions is None:
        positions = np.array([[-25.2, -10.0, 100.0 + 2.0 * k] for k in range(slices)])
    return Volume(
        hu=hu, positions=np.asarray(positions, dtype=float),
        row_direction=(1.0, 0.0, 0.0), column_direction=(0.0, 1.0, 0.0),
        pixel_spacing=spacing, slice_spacing=float(np.median(np.diff(np.asarray(positions)[:, 2]))),
        frame_of_reference_uid="1.2.3", study_instance_uid="1.2.4", series_instance_uid="1.2.5",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        sop_instance_uids=tuple(f"1.2.6.{k}" for k in range(slices)),
        frame_numbers=(1,) * slices, source_paths=("",) * slices,
    )


def test_one_cuboid_stone_is_measured_in_mm() -> None:
    volume = _volume()
    mask = np.zeros(volume.shape, np.uint8)
    mask[3:6, 20:26, 40:44] = 1  # 3 slices x 6 rows x 4 columns, patient left of the midline
    volume.hu[3:6, 20:26, 40:44] = 500.0
    volume.hu[4, 22, 41] = 900.0
    findings = measure_stones(volume, mask, box_margin_mm=2.0)
    assert len(findings.stones) == 1
    stone = findings.stones[0]
    assert stone.sop_instance_uids == ("1.2.6.3", "1.2.6.4", "1.2.6.5")
    assert stone.volume_mm3 == pytest.approx(3 * 6 * 4 * 0.5 * 0.8 * 2.0)
    # centre: column 41.5, row 22.5, slice 4
    assert stone.centroid_mm == pytest.approx((-25.2 + 41.5 * 0.8, -10.0 + 22.5 * 0.5, 108.0))
    # farthest pixel centres: 5 rows x 0.5 and 3 columns x 0.8 apart, plus half a pixel along that line (the
    # chord of the ellipse the 0.5 x 0.8 pixel holds), not its corner-to-corner width (probe 14: round stones
    # measured 13-21 % too wide); a cuboid, all corners, measures less than its box's diagonal
    d = np.hypot(2.5, 2.4)
    chord = 1.0 / np.hypot((2.5 / d) / 0.5, (2.4 / d) / 0.8)
    assert stone.max_diameter_mm == pytest.approx(d + chord / 2)
    assert stone.max_diameter_mm < d + (2.5 / d) * 0.5 + (2.4 / d) * 0.8 - 0.3  # the corner-to-corner width
    assert stone.max_hu == 900.0
    assert stone.mean_hu == pytest.approx((71 * 500 + 900) / 72)
    assert stone.side == "midline"  # 8 mm left of the midline: too near it for a laterality (SIDE_TOLERANCE_MM)
    assert stone.voxel_count == 72
    assert [b.slice_index for b in findings.boxes] == [3, 4, 5]
    box = findings.boxes[0]
    assert (box.row_min, box.column_min, box.row_max, box.column_max) == (16, 37, 29, 46)
    assert box.tight == (20, 40, 25, 43)  # the stone's own pixels on the slice, no margin
    assert box.diameter_mm == pytest.approx(stone.max_diameter_mm)
    # length: farthest voxel centres 2 slices x 2 mm, 5 rows x 0.5, 3 columns x 0.8 apart, plus half a voxel along
    # it (the chord of the ellipsoid the voxel's box holds)
    e = np.array([2.5, 2.4, 4.0])  # (row, column, slice) mm
    n = float(np.linalg.norm(e))
    assert stone.length_mm == pytest.approx(n + 0.5 / float(np.linalg.norm((e / n) / np.array([0.5, 0.8, 2.0]))))
    assert findings.mask.sum() == 72


def test_several_stones_sides_min_size_and_diagonal_connectivity() -> None:
    volume = _volume(rows=128)  # 102 mm wide, the body's midline at column 63.5
    mask = np.zeros(volume.shape, np.uint8)
    mask[2, 30, 10] = 1  # right (low column = patient right), one voxel: dropped with min_voxels=2
    mask[6, 30, 12] = mask[7, 31, 13] = 1  # right (41 mm), diagonal across two slices: one stone
    mask[6, 30, 110] = mask[6, 30, 111] = 1  # left (37 mm), same slice as the other
    mask[6, 30:32, 79:81] = 1  # 13 mm left of the midline: near it, no side
    findings = measure_stones(volume, mask, min_voxels=2)
    assert len(findings.stones) == 3
    sides = sorted(s.side for s in findings.stones)
    assert sides == ["left", "midline", "right"]
    diagonal = next(s for s in findings.stones if s.side == "right")
    assert diagonal.slice_indices == (6, 7)
    assert findings.mask[2, 30, 10] == 0
    assert len([b for b in findings.boxes if b.slice_index == 6]) == 3
    stones = findings.to_json()["stones"]
    assert isinstance(stones, list) and stones[0].keys() >= {
        "sop_instance_uids", "centroid_mm", "max_diameter_mm", "length_mm", "volume_mm3", "mean_hu", "max_hu", "side"}


def test_uneven_spacing_gives_each_slice_its_own_extent() -> None:
    z = [0.0, 1.0, 2.0, 5.0, 8.0]
    volume = _volume(slices=5, positions=[[-25.2, -10.0, v] for v in z])
    mask = np.zeros(volume.shape, np.uint8)
    mask[1:4, 30, 45] = 1
    stone = measure_stones(volume, mask).stones[0]
    assert stone.volume_mm3 == pytest.approx(0.4 * (1.0 + 2.0 + 3.0))
    assert stone.centroid_mm[2] == pytest.approx(np.mean([1.0, 2.0, 5.0]))


def test_empty_mask_gives_no_stones() -> None:
    volume = _volume()
    findings = measure_stones(volume, np.zeros(volume.shape, np.uint8))
    assert findings.stones == () and findings.boxes == ()


def test_diameter_of_a_disc() -> None:
    rr, cc = np.mgrid[0:41, 0:41]
    disc = (rr - 20) ** 2 + (cc - 20) ** 2 <= 20**2
    rows, cols = np.nonzero(disc)
    assert max_axial_diameter_mm(rows, cols, (0.5, 0.5)) == pytest.approx(20.5, abs=0.3)
    assert max_axial_diameter_mm(np.array([3]), np.array([4]), (0.7, 0.9)) == pytest.approx(0.9)
