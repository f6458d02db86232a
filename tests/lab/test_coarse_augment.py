"""The coarse-acquisition augmentation (``uronode train --coarse``): what it changes and what it leaves."""

from __future__ import annotations

import numpy as np

from inference.network import InputSpec
from lab.augment import Augmentation, augment_patches, coarsen_patches

SPEC = InputSpec(patch=32, context=2, wide=(4,))
DEPTH = 2 * SPEC.context + 1


def patches(n: int, rng: np.random.Generator, lone: bool = False) -> np.ndarray:
    hu = rng.normal(40, 10, (n, SPEC.patch, SPEC.patch, SPEC.raw_channels)).astype(np.float32)
    hu[:, 16, 16, :DEPTH] = 900.0  # a one-pixel stone on every slice
    if lone:
        hu[..., :DEPTH] = hu[..., SPEC.context:SPEC.context + 1]
    return hu


def test_blocks_average_the_slices_and_keep_the_wide_views() -> None:
    rng = np.random.default_rng(1)
    hu = patches(3, rng)
    out = coarsen_patches(hu, np.array([2, 3, 4]), np.zeros(3, np.float32), SPEC, rng)
    assert out.shape == hu.shape and out.dtype == np.float32
    assert np.array_equal(out[..., DEPTH:], hu[..., DEPTH:])
    peaks = out[:, 14:19, 14:19, :DEPTH].max(axis=(1, 2)).min(axis=1)
    assert (peaks < 900).all() and (peaks > 60).all()  # a sub-block stone fades, it does not vanish
    assert peaks[0] > peaks[2]  # the coarser, the fainter
    # the mean is kept away from the edges (area averaging, then linear interpolation)
    assert abs(float(out[:, 4:-4, 4:-4, :DEPTH].mean()) - float(hu[:, 4:-4, 4:-4, :DEPTH].mean())) < 2.0
    # the fine texture is gone: neighbouring pixels are alike
    assert np.abs(np.diff(out[2, :, :12, 0], axis=1)).mean() < 0.5 * np.abs(np.diff(hu[2, :, :12, 0], axis=1)).mean()


def test_noise_at_the_grain_each_slice_its_own_and_a_lone_slice_stays_one() -> None:
    rng = np.random.default_rng(2)
    flat = np.zeros((2, SPEC.patch, SPEC.patch, SPEC.raw_channels), np.float32)
    flat[..., :DEPTH] = 40.0 + np.arange(DEPTH, dtype=np.float32)  # flat slices, each its own level: a series
    out = coarsen_patches(flat, np.array([4, 4]), np.array([15.0, 15.0], np.float32), SPEC, rng)
    assert 3.0 < float(out[0, ..., 0].std()) < 15.0  # noise, smoothed by the interpolation
    grains = out[0, ..., :DEPTH] - flat[0, ..., :DEPTH]
    assert abs(np.corrcoef(grains[..., 0].ravel(), grains[..., 1].ravel())[0, 1]) < 0.5  # each slice its own
    lone = patches(2, rng, lone=True)
    out = coarsen_patches(lone, np.array([3, 4]), np.array([15.0, 15.0], np.float32), SPEC, rng)
    for c in range(DEPTH):
        assert np.array_equal(out[..., c], out[..., SPEC.context])


def test_off_by_default_and_off_draws_nothing() -> None:
    hu = patches(16, np.random.default_rng(3))
    windowed = np.arange(16) % 2 == 0
    a = augment_patches(hu, windowed, SPEC, np.random.default_rng(4))
    b = augment_patches(hu, windowed, SPEC, np.random.default_rng(4), Augmentation(coarse=0.0))
    assert np.array_equal(a, b)
    c = augment_patches(hu, windowed, SPEC, np.random.default_rng(4), Augmentation(coarse=1.0))
    assert not np.array_equal(a, c)
