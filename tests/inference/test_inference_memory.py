"""Peak memory of the cascade's volume-wide stages, and that its thrift changes no result.

A series is held once as float32 HU (4 bytes a voxel); the candidate stage adds about 3 bytes a voxel
(the dense mask and narrow labels) and the measurement about 1 (the kept mask). Each economy is
checked against the whole-volume computation it replaces on the same input: the slab-wise
local-contrast rule against one slab of the whole series, the graph labelling against
``ndimage.label``, the narrow labels against int32 ones. The memory bounds are tracemalloc peaks
(NumPy's arrays report to it), in bytes a voxel, with a wide margin to what the whole-volume code
took: it labelled into int32 (4) and made the local-contrast rule's top-hat (4) and labels (4) over
the whole series, and measured stones with a bool copy of the mask (1).
"""

from __future__ import annotations

import json
import tracemalloc
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from scipy import ndimage

from inference.candidates import (
    NEIGHBOURS,
    CandidateRule,
    _contrast_components,
    _keep_dense,
    body_mask,
    dense_threshold,
    estimate_noise,
    find_candidates,
    label_narrow,
    label_sparse,
    narrowest_labels,
)
from inference.postprocess import measure_stones
from inference.runtime import resolve_model_dir
from inference.volume import Volume
from lab.synth import Phantom, generate_phantom


def card_rule() -> CandidateRule:
    """The shipped card's candidate rule (local-contrast rule, budgets and noise slabs on)."""
    card = json.loads((resolve_model_dir(None) / "card.json").read_text())
    return CandidateRule.from_card(card["candidates"])


def peak_bytes(call: Callable[[], Any]) -> tuple[Any, int]:
    """``call()``'s result and the most memory tracemalloc saw allocated during it, beyond what was before."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        result = call()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return result, peak - before


@pytest.fixture(scope="module")
def long_phantom() -> Phantom:
    """A 512 x 512 series of 80 thin slices (0.8 mm) over the kidneys: longer than the local-contrast slabs."""
    return generate_phantom(11, slices=80, slice_spacing=0.8, coverage=(0.6, 0.9), n_stones=3,
                            stone_sites=("kidney",))


@pytest.fixture(scope="module")
def noisy_volume(small_phantom: Phantom) -> Volume:
    """The small phantom with 8 HU of white noise: thousands of local-contrast seeds, some components."""
    noise = np.random.default_rng(3).normal(0.0, 8.0, small_phantom.hu.shape).astype(np.float32)
    return replace(small_phantom.to_volume(), hu=np.round(small_phantom.hu + noise).astype(np.float32))


@pytest.mark.parametrize("seed", range(6))
def test_sparse_labels_are_ndimage_labels(seed: int) -> None:
    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(1, 14)), int(rng.integers(1, 20)), int(rng.integers(1, 20)))
    for density in (0.02, 0.1, 0.3, 0.6):
        mask = rng.random(shape) < density
        expected, count = ndimage.label(mask, structure=NEIGHBOURS)
        where = np.flatnonzero(mask)
        ids, sparse_count = label_sparse(where, shape)
        assert sparse_count == count
        np.testing.assert_array_equal(ids, expected.reshape(-1)[where])


def test_sparse_labels_of_nothing() -> None:
    ids, count = label_sparse(np.zeros(0, dtype=np.int64), (3, 4, 5))
    assert count == 0 and ids.size == 0


def test_narrow_labels_are_int32_labels() -> None:
    rng = np.random.default_rng(5)
    mask = rng.random((20, 40, 40)) < 0.2
    expected, count = ndimage.label(mask, structure=NEIGHBOURS)
    labels, narrow_count = label_narrow(mask)
    assert labels.dtype == np.uint16 and narrow_count == count
    np.testing.assert_array_equal(labels, expected)
    # more components than uint16 holds: int32, the same ids
    many = np.zeros((84, 84, 84), dtype=bool)
    many[::2, ::2, ::2] = True
    labels, narrow_count = label_narrow(many)
    assert labels.dtype == np.int32 and narrow_count == 42**3
    np.testing.assert_array_equal(labels, ndimage.label(many, structure=NEIGHBOURS)[0])


@pytest.mark.parametrize(("count", "dtype"), [(0, np.uint8), (255, np.uint8), (256, np.uint16),
                                              (65535, np.uint16), (65536, np.int32)])
def test_narrowest_labels_hold_their_count(count: int, dtype: type) -> None:
    labels = np.zeros((2, 3, 3), dtype=np.int32)
    labels[1, 2, 2] = count
    narrow = narrowest_labels(labels, count)
    assert narrow.dtype == dtype
    np.testing.assert_array_equal(narrow, labels)


@pytest.mark.parametrize("clear", [0, 1])
@pytest.mark.parametrize("cut", [False, True])
def test_contrast_rule_by_slab_is_the_whole_volume_rule(noisy_volume: Volume, cut: bool, clear: int) -> None:
    """Slabs of 1, 2, 5 and 7 slices give the components and labels of one slab holding the whole series,
    with a slab held back as too noisy too; ``cut``: on a crop whose edges cut the body (seeds at the edges);
    ``clear``: the removed dense structures keep the contrast voxels off too (3.9.0)."""
    rule = replace(card_rule(), contrast_max_voxels=30, clear_of_removed=clear)
    if cut:
        noisy_volume = replace(noisy_volume, hu=np.ascontiguousarray(noisy_volume.hu[:, 30:100, 25:95]))
    hu = noisy_volume.hu
    threshold = dense_threshold(rule, estimate_noise(hu))
    body = body_mask(hu)
    dense, count = label_narrow(hu >= threshold)
    kept, removed, _ = _keep_dense(dense, count, hu, body, noisy_volume, rule)
    assert (removed.size > 0) == bool(clear)  # the phantom's bone
    slices = hu.shape[0]
    for too_noisy in ((), ((4, 9),)):
        whole, whole_labels = _contrast_components(hu, dense.copy(), body, noisy_volume.pixel_spacing, rule,
                                                   threshold, kept.count, too_noisy, slab=slices, removed=removed)
        assert whole.count > 3  # the noise makes some
        for slab in (1, 2, 5, 7):
            parts, labels = _contrast_components(hu, dense.copy(), body, noisy_volume.pixel_spacing, rule,
                                                 threshold, kept.count, too_noisy, slab=slab, removed=removed)
            np.testing.assert_array_equal(parts.starts, whole.starts)
            np.testing.assert_array_equal(parts.stops, whole.stops)
            np.testing.assert_array_equal(parts.strength, whole.strength)
            np.testing.assert_array_equal(labels, whole_labels)


def test_candidate_labels_are_the_narrowest_type(long_phantom: Phantom) -> None:
    found = find_candidates(long_phantom.to_volume(), card_rule())
    assert found.count > 0
    assert found.labels.dtype == narrowest_labels(found.labels, found.count).dtype
    assert int(found.labels.max()) == found.count


def test_candidates_peak_memory_per_voxel(long_phantom: Phantom) -> None:
    """The whole-volume code took about 8.4 bytes a voxel here (int32 labels, then the local-contrast rule's
    float32 top-hat and int32 labels over the series); now the dense mask and the uint16 labels, about 3."""
    volume = long_phantom.to_volume()
    found, peak = peak_bytes(lambda: find_candidates(volume, card_rule()))
    assert found.count > 0
    assert peak / volume.hu.size < 5.0


def test_measure_stones_peak_memory_per_voxel(long_phantom: Phantom) -> None:
    """The kept mask (1 byte a voxel) and little more: no bool copy of the mask (it took 2)."""
    volume = long_phantom.to_volume()
    mask = (long_phantom.stone_labels > 0).astype(np.uint8)
    findings, peak = peak_bytes(lambda: measure_stones(volume, mask))
    assert findings.stones
    np.testing.assert_array_equal(findings.mask, mask)
    assert peak / volume.hu.size < 1.5
