"""A tight crop is mirrored beyond its edges, not read as air (inference.network.InputSpec.outside)."""

from __future__ import annotations

import numpy as np
import pytest

from inference.candidates import cut_patches
from inference.network import CASCADE_SPEC, InputSpec, cut_inputs
from inference.pipeline import Pipeline
from lab.realimages import image_volume, read_image_set, split_groups
from lab.synth import shared_data_dir

REAL = shared_data_dir() / "real-stones"


def test_mirrored_patches_are_the_image_padded_symmetrically_however_far_out() -> None:
    rng = np.random.default_rng(0)
    hu = rng.normal(0, 100, (3, 20, 30)).astype(np.float32)
    centres = np.array([[1, 0, 0], [0, 19, 29], [2, 10, 15]])
    for size in (8, 64):  # a window wider than the image folds back more than once
        got = cut_patches(hu, centres, size, context=1, outside="mirror")
        for i, (k, r, c) in enumerate(centres):
            for d in range(3):
                kk = min(2, max(0, k + d - 1))
                padded = np.pad(hu[kk], size, mode="symmetric")  # numpy folds again where the pad is wider
                top, left = r - size // 2 + size, c - size // 2 + size
                assert np.array_equal(got[i, ..., d], padded[top:top + size, left:left + size])
    air = cut_patches(hu, centres, 8, context=1)
    assert air[0, 0, 0, 1] == -1000.0 and np.array_equal(air[2], cut_patches(hu, centres, 8, 1, "mirror")[2])
    with pytest.raises(ValueError, match="outside"):
        cut_patches(hu, centres, 8, 1, "zeros")


def test_only_an_image_under_the_bound_is_mirrored_and_one_at_it_is_cut_as_before() -> None:
    spec = InputSpec(patch=64, context=2, wide=(2, 4), mirror_below=128)
    assert spec.outside(127, 500) == spec.outside(500, 127) == "mirror"
    assert spec.outside(128, 128) == "air" and CASCADE_SPEC.outside(10, 10) == "air"
    rng = np.random.default_rng(1)
    at_bound = rng.normal(0, 50, (1, 128, 140)).astype(np.float32)
    centres = np.array([[0, 5, 5], [0, 64, 70]])
    assert np.array_equal(cut_inputs(at_bound, centres, spec), cut_inputs(at_bound, centres, CASCADE_SPEC))
    small = at_bound[:, :100, :100]
    assert not np.array_equal(cut_inputs(small, centres, spec), cut_inputs(small, centres, CASCADE_SPEC))
    assert (cut_inputs(small, centres, spec) > -1000.0).all()  # no air read in: the crop folds back
    assert InputSpec.from_card({"mirror_below_px": 128, "wide_factors": [2, 4]}, 64).mirror_below == 128
    assert InputSpec.from_card({}).mirror_below == 0  # earlier cards: air, as they were measured
    # only the wide views mirrored: the near patch (the slices) reads air beyond the edges, as a whole image's
    wide_only = InputSpec(patch=64, context=2, wide=(2, 4), mirror_below=128, mirror_near=False)
    raw = cut_inputs(small, centres, wide_only)
    assert np.array_equal(raw[..., :5], cut_inputs(small, centres, CASCADE_SPEC)[..., :5])
    assert np.array_equal(raw[..., 5:], cut_inputs(small, centres, spec)[..., 5:])
    assert (raw[0, 0, 0, :5] == -1000.0).all() and (raw[..., 5:] > -1000.0).all()
    assert not InputSpec.from_card({"mirror_below_px": 128, "mirror_near": False}).mirror_near
    assert InputSpec.from_card({"mirror_below_px": 128}).mirror_near  # 3.7.0's card: all of it mirrored


def test_a_real_stone_in_a_tight_crop_is_found_only_when_the_crop_is_mirrored() -> None:
    """Real validation images cut to 60 mm (80 pixels) around a stone the model finds in the whole image:
    the default (3.7.1) mirrors their wide views, 3.6.0 (the same network) read them with air."""
    air, mirror = Pipeline("cascade-3.6.0"), Pipeline("default")
    assert air.spec.mirror_below == 0 and mirror.spec.mirror_below == 128
    images = split_groups(read_image_set(REAL))["validation"][:4]
    found = {"air": 0, "mirror": 0}
    for image in images:
        hu = image.as_hu()
        box = image.boxes[0]
        r, c = int((box.y0 + box.y1) / 2), int((box.x0 + box.x1) / 2)
        r0, c0 = max(0, r - 40), max(0, c - 40)
        crop = hu[r0:r + 40, c0:c + 40]
        assert min(crop.shape) < 128
        whole = air.run(image_volume(hu, image.name, image.pixel_mm)).mask[0]
        assert whole[int(box.y0):int(np.ceil(box.y1)), int(box.x0):int(np.ceil(box.x1))].any()
        for name, pipeline in (("air", air), ("mirror", mirror)):
            mask = pipeline.run(image_volume(crop, f"{image.name}-crop", image.pixel_mm)).mask[0]
            found[name] += bool(mask[int(box.y0) - r0:int(np.ceil(box.y1)) - r0,
                                     int(box.x0) - c0:int(np.ceil(box.x1)) - c0].any())
    assert found["air"] <= 1 and found["mirror"] >= 3, found
