"""The generator: reproducible, stones where it says, real anatomy with stones in the real kidneys."""

from __future__ import annotations

import numpy as np

from lab.synth import STONE_SITES, generate_phantom, real_anatomy_phantom


def test_same_seed_same_phantom_other_seed_other_phantom() -> None:
    a = generate_phantom(11, rows=96, slice_spacing=3.0, coverage=(0.0, 0.5))
    b = generate_phantom(11, rows=96, slice_spacing=3.0, coverage=(0.0, 0.5))
    c = generate_phantom(12, rows=96, slice_spacing=3.0, coverage=(0.0, 0.5))
    np.testing.assert_array_equal(a.hu, b.hu)
    assert a.stones == b.stones and a.series_instance_uid == b.series_instance_uid
    assert not np.array_equal(a.hu, c.hu) and a.series_instance_uid != c.series_instance_uid


def test_stones_are_labelled_dense_and_in_range() -> None:
    phantom = generate_phantom(21, rows=256, n_stones=4, n_mimics=6)
    assert len(phantom.stones) == 4
    hu = phantom.hu
    for i, stone in enumerate(phantom.stones, start=1):
        assert stone.site in STONE_SITES
        assert 1.0 <= stone.diameter_mm <= 20.0 and 200 <= stone.hu <= 2000
        voxels = phantom.stone_labels == i
        assert voxels.any()
        # the labelled voxels lie around the stated centre
        idx = np.argwhere(voxels).mean(axis=0)
        centre = (phantom.origin_mm[0] + idx[2] * phantom.pixel_spacing,
                  phantom.origin_mm[1] + idx[1] * phantom.pixel_spacing,
                  phantom.origin_mm[2] + idx[0] * phantom.slice_spacing)
        assert np.linalg.norm(np.subtract(centre, stone.center_mm)) < max(2.0, stone.diameter_mm)
        if stone.diameter_mm > 4:
            assert hu[voxels].max() > 150
    assert {m.kind for m in phantom.mimics} <= {"phlebolith", "vascular_calcification", "bone_island",
                                              "bowel_pellet", "streak"}
    assert hu.min() >= -1024 and hu.max() <= 3071
    # the body is there: soft tissue and fat in the middle, air in the corner
    mid = hu[hu.shape[0] // 2]
    assert mid[0, 0] < -900 and -150 < np.median(mid[96:160, 96:160]) < 100


def test_real_anatomy_stones_sit_in_the_labelled_kidneys() -> None:
    phantom = real_anatomy_phantom(3, n_stones=3)
    assert phantom.stones
    import nibabel as nib

    from lab.synth import DEFAULT_REAL_DATA

    seg = np.asarray(nib.load(str(DEFAULT_REAL_DATA / "example_seg.nii.gz")).dataobj)
    # the right kidney (label 2) lies at lower LPS x (patient right) than the left (label 3)
    for stone in phantom.stones:
        others = [s for s in phantom.stones if s.side != stone.side]
        for other in others:
            assert (stone.center_mm[0] < other.center_mm[0]) == (stone.side == "right")
    assert seg.max() >= 3
    for i, _stone in enumerate(phantom.stones, start=1):
        assert (phantom.stone_labels == i).any()
