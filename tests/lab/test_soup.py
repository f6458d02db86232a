"""Model soups (``uronode soup``): the weights' average, written as a loadable model with its card."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from inference.errors import ModelError
from inference.pipeline import Pipeline
from inference.runtime import load_model
from lab.soup import average_weights, make_soup
from lab.synth import generate_phantom


def test_the_average_is_element_wise_and_keeps_each_dtype() -> None:
    a: list[np.ndarray] = [np.array([[1.0, 2.0]], np.float32), np.array([3], np.int64)]
    b: list[np.ndarray] = [np.array([[3.0, 5.0]], np.float32), np.array([5], np.int64)]
    mean = average_weights([a, b])
    assert mean[0].dtype == np.float32 and mean[1].dtype == np.int64
    np.testing.assert_array_equal(mean[0], [[2.0, 3.5]])
    np.testing.assert_array_equal(mean[1], [4])


def test_models_of_different_shapes_are_refused() -> None:
    a: list[np.ndarray] = [np.zeros((2, 3), np.float32)]
    with pytest.raises(ModelError, match="shape"):
        average_weights([a, [np.zeros((3, 2), np.float32)]])
    with pytest.raises(ModelError, match="weight arrays"):
        average_weights([a, [*a, *a]])
    with pytest.raises(ModelError, match="at least"):
        average_weights([])


def test_the_soup_of_two_shipped_models_is_their_mean_and_predicts(tmp_path: Path) -> None:
    """2.1.0 and 3.6.0 share the network's shape (3.x was fine-tuned from 2.1.0) and read their patches alike
    (3.7.0, the default, mirrors tight crops, so a soup with it is refused): their soup's every weight is the
    two models' mean, its card names both and keeps the data's attribution, and the node's pipeline loads
    and runs it."""
    out = tmp_path / "soup"
    done = subprocess.run([sys.executable, "-m", "uronode", "soup", "--models", "cascade-3.6.0", "cascade-2.1.0",
                           "--out", str(out), "--version", "9.9.9"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    soup, first, second = load_model(out), load_model("cascade-3.6.0"), load_model("cascade-2.1.0")
    for s, a, b in zip(soup.keras_model.get_weights(), first.keras_model.get_weights(),
                       second.keras_model.get_weights(), strict=True):
        np.testing.assert_allclose(s, (a.astype(np.float64) + b) / 2, rtol=1e-6, atol=1e-7)
    assert any(not np.array_equal(s, a) for s, a in zip(soup.keras_model.get_weights(),
                                                        first.keras_model.get_weights(), strict=True))
    card = json.loads((out / "card.json").read_text())
    assert card["version"] == "9.9.9" and card["files"] == {"model": "model.keras"}
    assert "not evaluated" in card["metrics"]["note"]
    assert [i["folder"] for i in card["training"]["ingredients"]] == ["cascade-3.6.0", "cascade-2.1.0"]
    assert card["training"]["attribution"] == first.card.raw["training"]["attribution"]
    assert "uronode choose" in card["components"]["chosen_on"]
    volume = generate_phantom(90_101, rows=128, slice_spacing=2.0, coverage=(0.66, 0.96), n_stones=2,
                              stone_sites=("kidney",)).to_volume()
    prob, mask, _ = Pipeline(soup).analyse(volume)
    assert prob.shape == volume.hu.shape == mask.shape and np.isfinite(prob).all()


def test_a_soup_of_one_model_with_itself_is_that_model(tmp_path: Path) -> None:
    make_soup(["default", "default"], tmp_path / "same", version="0.0.1")
    same, default = load_model(tmp_path / "same"), load_model("default")
    for s, d in zip(same.keras_model.get_weights(), default.keras_model.get_weights(), strict=True):
        np.testing.assert_array_equal(s, d)


def test_a_soup_of_one_model_or_into_a_model_folder_is_refused(tmp_path: Path) -> None:
    one = subprocess.run([sys.executable, "-m", "uronode", "soup", "--models", "default", "--out", str(tmp_path / "x"),
                          "--version", "1.0.0"], capture_output=True, text=True, timeout=600)
    assert one.returncode == 2 and "at least two models" in one.stderr and not (tmp_path / "x").exists()
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "card.json").write_text("{}")
    with pytest.raises(ModelError, match="already holds a model"):
        make_soup(["default", "default"], tmp_path / "taken", version="1.0.0")
    assert (tmp_path / "taken" / "card.json").read_text() == "{}"
    # 3.7.0 reads a tight crop mirrored, 3.6.0 with air: the same network, read two ways, is not one soup
    with pytest.raises(ModelError, match="read their patches differently"):
        make_soup(["default", "cascade-3.6.0"], tmp_path / "two-ways", version="1.0.0")
