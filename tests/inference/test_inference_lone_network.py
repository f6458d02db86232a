"""A card may name a second network for volumes of one slice (``files.lone_model``).

An uploaded image or a single DICOM file is one slice with no neighbours; a
series has them. The pipeline predicts a one-slice volume with the lone-image
network where the card names one, and everything else with the model. These
tests give the default model a second network of the same shape with other
weights and check which one answered, patch by patch and component by
component.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from inference.errors import ModelError
from inference.network import build_unet
from inference.pipeline import Pipeline
from inference.runtime import load_model
from lab.realimages import image_volume
from lab.synth import Phantom

DEFAULT = Path(__file__).resolve().parents[2] / "models" / "default"


def _with_network(folder: Path, network_file: str, lone: bool, patch: int | None = None,
                  classifier: bool = True) -> Path:
    """The default model copied to ``folder``, with a freshly built network (seeded) either as its lone-image
    network (``lone``) or in place of its model."""
    import keras

    shutil.copytree(DEFAULT, folder)
    card = json.loads((folder / "card.json").read_text())
    keras.utils.set_random_seed(5)
    other = build_unet(channels=int(card["input"]["channels"]), patch=patch or int(card["input"]["patch"]),
                       classifier=classifier)
    other.save(folder / network_file)
    if lone:
        card["files"] = {**card["files"], "lone_model": network_file}
    else:
        card["files"] = {"model": network_file}
    (folder / "card.json").write_text(json.dumps(card))
    return folder


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Pipeline]:
    root = tmp_path_factory.mktemp("models")
    return {
        "default": Pipeline(load_model(DEFAULT, cores=2)),
        "both": Pipeline(load_model(_with_network(root / "both", "lone.keras", lone=True), cores=2)),
        "other": Pipeline(load_model(_with_network(root / "other", "other.keras", lone=False), cores=2)),
    }


def test_patches_go_to_the_network_their_volume_asks_for(pipelines: dict[str, Pipeline]) -> None:
    both, default, other = pipelines["both"], pipelines["default"], pipelines["other"]
    assert both.has_lone_network and not default.has_lone_network and not other.has_lone_network
    # soft tissue with noise, half of the patches with a dense blob at the centre (HU, the cut inputs' channels)
    rng = np.random.default_rng(3)
    half = both.patch // 2
    blob = np.hypot(*np.mgrid[-half:half, -half:half]) < 4
    patches = (rng.normal(40, 30, (24, both.patch, both.patch, both.spec.raw_channels))
               + np.where(rng.random((24, 1, 1, 1)) < 0.5, 600.0, 0.0) * blob[None, :, :, None]).astype(np.float32)
    series_pixels, series_scores = both.predict_patches(patches)
    lone_pixels, lone_scores = both.predict_patches(patches, lone=True)
    default_pixels, default_scores = default.predict_patches(patches)
    other_pixels, other_scores = other.predict_patches(patches)
    assert series_scores is not None and lone_scores is not None
    np.testing.assert_array_equal(series_pixels, default_pixels)
    np.testing.assert_array_equal(series_scores, default_scores)
    np.testing.assert_array_equal(lone_pixels, other_pixels)
    np.testing.assert_array_equal(lone_scores, other_scores)
    assert not np.allclose(lone_scores, series_scores, atol=1e-3)  # two different networks answered
    # a card without a lone-image network predicts a lone volume's patches with its model
    np.testing.assert_array_equal(default.predict_patches(patches, lone=True)[1], default_scores)


def test_a_one_slice_volume_is_scored_by_the_lone_network_and_a_series_by_the_model(
        pipelines: dict[str, Pipeline], small_phantom: Phantom) -> None:
    both, default, other = pipelines["both"], pipelines["default"], pipelines["other"]
    series = small_phantom.to_volume()
    k = int(np.nonzero(small_phantom.stone_labels.any(axis=(1, 2)))[0][0])
    lone = image_volume(series.hu[k], "lone", float(series.pixel_spacing[0]))
    for volume, expected in ((series, default), (lone, other)):
        table = both.analyse(volume)[2]
        reference = expected.analyse(volume)[2]
        assert len(table.boxes) == len(reference.boxes) > 0
        np.testing.assert_array_equal(table.scores("classifier"), reference.scores("classifier"))
    assert not np.array_equal(both.analyse(lone)[2].scores("classifier"),
                              default.analyse(lone)[2].scores("classifier"))


def test_a_missing_or_misshapen_lone_network_is_refused(tmp_path: Path) -> None:
    missing = _with_network(tmp_path / "missing", "lone.keras", lone=True)
    (missing / "lone.keras").unlink()
    with pytest.raises(ModelError, match=r"lone.keras \(the card's files.lone_model\) is missing"):
        load_model(missing)
    small = _with_network(tmp_path / "small", "lone.keras", lone=True, patch=32)
    with pytest.raises(ModelError, match=r"the lone-image model takes \(32, 32, \d+\), the card says \(64, 64, \d+\)"):
        load_model(small)
    headless = _with_network(tmp_path / "headless", "lone.keras", lone=True, classifier=False)
    with pytest.raises(ModelError, match="the lone-image model has 1 outputs, the model 2"):
        load_model(headless)
