"""Test-time views: averaged over every view where they can change a decision, and only there.

The shipped model averages four views (quarter turns) of each patch. A patch
whose component score and pixel probabilities, seen as it is, stay under the
gate keeps that single view; every other patch gets the average of all four,
exactly as if every patch had been seen four times.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from inference.candidates import find_candidates
from inference.network import cut_inputs, preprocess
from inference.pipeline import VIEWS, Pipeline
from inference.runtime import load_model
from lab.synth import generate_phantom


@pytest.fixture(scope="module")
def pipeline() -> Pipeline:
    return Pipeline(load_model("default", cores=2))


@pytest.fixture(scope="module")
def patches(pipeline: Pipeline) -> np.ndarray:
    volume = generate_phantom(93_001, n_stones=4, coverage=(0.6, 0.95), stone_sites=("kidney",)).to_volume()
    found = find_candidates(volume, pipeline.rule)
    assert found.centres.shape[0] >= 40
    return cut_inputs(volume.hu, found.centres[:160], pipeline.spec)


def _every_view(pipeline: Pipeline, patches: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(first view's pixels, first view's scores, average pixels, average scores), computed directly."""
    x = preprocess(patches, pipeline.spec)
    outputs = [pipeline._view(x, k, flip) for k, flip in VIEWS[pipeline.views]]
    pixels = np.stack([o[0] for o in outputs])
    view_scores = [o[1] for o in outputs if o[1] is not None]
    assert len(view_scores) == len(outputs), "the shipped model has a component head"
    scores = np.stack(view_scores)
    return pixels[0], scores[0], pixels.mean(axis=0), scores.mean(axis=0)


def test_the_shipped_model_uses_four_views(pipeline: Pipeline) -> None:
    assert pipeline.views == 4 and pipeline.has_component_head


def test_gate_zero_averages_every_patch(pipeline: Pipeline, patches: np.ndarray) -> None:
    _, _, mean_pixels, mean_scores = _every_view(pipeline, patches)
    pipeline.views_gate = 0.0
    try:
        pixels, scores = pipeline.predict_patches(patches)
    finally:
        pipeline.views_gate = 0.1
    np.testing.assert_allclose(pixels, mean_pixels, atol=1e-5)
    assert scores is not None
    np.testing.assert_allclose(scores, mean_scores, atol=1e-5)


def test_the_gate_spares_only_patches_far_under_it(pipeline: Pipeline, patches: np.ndarray) -> None:
    first_pixels, first_scores, mean_pixels, mean_scores = _every_view(pipeline, patches)
    pixels, scores = pipeline.predict_patches(patches)
    assert scores is not None
    seen = np.maximum(first_pixels.reshape(len(patches), -1).max(axis=1), first_scores) >= pipeline.views_gate
    assert 0 < seen.sum() < len(patches)
    np.testing.assert_allclose(pixels[seen], mean_pixels[seen], atol=1e-5)
    np.testing.assert_allclose(scores[seen], mean_scores[seen], atol=1e-5)
    np.testing.assert_allclose(pixels[~seen], first_pixels[~seen], atol=1e-5)
    np.testing.assert_allclose(scores[~seen], first_scores[~seen], atol=1e-5)
    # a spared patch stays far under every threshold the card sets
    lowest = min(pipeline.thresholds.dense_small, pipeline.thresholds.dense_large, pipeline.thresholds.contrast)
    assert (scores[~seen] < lowest).all()


def test_the_extra_views_run_only_on_undecided_patches(pipeline: Pipeline, patches: np.ndarray) -> None:
    seen_rows: list[int] = []
    forward = pipeline._forward

    def counting(x: np.ndarray) -> Any:  # what the compiled forward pass returns: TensorFlow tensors
        seen_rows.append(int(x.shape[0]))
        return forward(x)

    pipeline._forward = counting
    try:
        pipeline.predict_patches(patches)
    finally:
        pipeline._forward = forward
    # every patch once, then three more views for each undecided one: fewer than four passes
    extra = sum(seen_rows) - len(patches)
    assert extra % 3 == 0
    assert 0 < extra < 3 * len(patches)
