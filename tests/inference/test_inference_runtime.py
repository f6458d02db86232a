"""Model folders: cards, the legacy Keras 2 format, the .keras format, errors with reasons."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from inference.errors import InferenceError, ModelError
from inference.network import CHANNELS, CONTEXT, PATCH, build_unet, preprocess
from inference.runtime import ModelCard, load_model
from tests.inference.legacy_model import THRESHOLD_HU, write_legacy_model


def _hu_patches() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.uniform(-1000, 2000, (2, PATCH, PATCH, 2 * CONTEXT + 1)).astype(np.float32)


def test_legacy_json_and_h5_load_and_predict(tmp_path: Path) -> None:
    loaded = load_model(write_legacy_model(tmp_path / "legacy"))
    assert loaded.format == "legacy-json-h5"
    assert loaded.card.name == "test-threshold-legacy"
    hu = _hu_patches()
    prob = np.asarray(loaded.keras_model(preprocess(hu)))[..., 0]
    expected = hu[..., CONTEXT] > THRESHOLD_HU
    far = np.abs(hu[..., CONTEXT] - THRESHOLD_HU) > 20  # the sigmoid is steep but not a step
    np.testing.assert_array_equal((prob > 0.5)[far], expected[far])


def test_legacy_weights_must_not_be_named_dot_weights_h5(tmp_path: Path) -> None:
    folder = write_legacy_model(tmp_path / "legacy", weights_name="model.weights.h5")
    with pytest.raises(ModelError, match=r"\*\.weights\.h5"):
        load_model(folder)


def test_keras_format_round_trip(tmp_path: Path) -> None:
    model = build_unet(base=4, levels=1)
    folder = tmp_path / "k3"
    folder.mkdir()
    model.save(folder / "model.keras")
    card = {"name": "tiny", "version": "1", "input": {"patch": PATCH, "channels": CHANNELS},
            "preprocessing": {}, "threshold": 0.5, "labels": [], "files": {"model": "model.keras"}}
    (folder / "card.json").write_text(json.dumps(card))
    loaded = load_model(folder)
    assert loaded.format == "keras"
    x = preprocess(_hu_patches())
    np.testing.assert_allclose(np.asarray(loaded.keras_model(x)), np.asarray(model(x)), atol=1e-6)


def test_card_and_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not found"):
        load_model(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="no card.json"):
        load_model(tmp_path / "empty")
    with pytest.raises(ModelError, match="lacks threshold, labels"):
        ModelCard.from_dict({"name": "x", "version": "1", "input": {}, "preprocessing": {}})
    with pytest.raises(ModelError, match="between 0 and 1") as info:
        ModelCard.from_dict({"name": "x", "version": "1", "input": {}, "preprocessing": {},
                             "threshold": 2, "labels": []})
    assert isinstance(info.value, InferenceError)
    folder = write_legacy_model(tmp_path / "nofile")
    (folder / "weights.h5").unlink()
    with pytest.raises(ModelError, match="weights.h5"):
        load_model(folder)


def test_a_hand_edited_card_of_the_wrong_shape_is_refused_with_the_key() -> None:
    """Found by probing: `"input": 64` or a card that is a JSON list gave a TypeError traceback."""
    good = {"name": "x", "version": "1", "input": {}, "preprocessing": {}, "threshold": 0.5, "labels": []}
    with pytest.raises(ModelError, match="JSON list, not an object"):
        ModelCard.from_dict([good])  # type: ignore[arg-type]
    for key, value, said in (("input", 64, "input is a JSON int, not an object"),
                             ("labels", "stone", "labels is a JSON str, not a list"),
                             ("files", ["model.keras"], "files is a JSON list, not an object")):
        with pytest.raises(ModelError, match=said):
            ModelCard.from_dict({**good, key: value})
    assert ModelCard.from_dict(good).input == {}


def test_a_truncated_keras_file_is_named_as_damaged(tmp_path: Path) -> None:
    """Keras says "File not found" of a .keras file cut short (a copy that stopped); the node says what it is."""
    folder = tmp_path / "cut"
    folder.mkdir()
    build_unet(base=4, levels=1).save(folder / "model.keras")
    whole = (folder / "model.keras").read_bytes()
    (folder / "model.keras").write_bytes(whole[: len(whole) // 2])
    card = {"name": "tiny", "version": "1", "input": {"patch": PATCH, "channels": CHANNELS},
            "preprocessing": {}, "threshold": 0.5, "labels": [], "files": {"model": "model.keras"}}
    (folder / "card.json").write_text(json.dumps(card))
    with pytest.raises(ModelError, match="model.keras is not a Keras file \\(truncated or damaged\\)"):
        load_model(folder)
