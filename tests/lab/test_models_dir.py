"""``predict``, ``evaluate`` and ``choose`` find a model by its name as the node does: a folder as given, else in
the node's ``inference.models_dir``, else among the models uronode ships with.

Found by probing (probe 13, finding 3): the model-upgrade step of docs/operations.md puts the new model in
``<inference.models_dir>/<name>/`` (``/opt/uronode/models`` in the Docker image) and measures it first with
``uronode evaluate --model <name>``; the commands looked only among the shipped models and said "not found".
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from inference.runtime import find_model
from tests.factory import write_series
from uronode.app.cli import main
from uronode.settings import default_models_dir

SHIPPED = default_models_dir()
FINDERS = [find_model]
"""The one lookup predict, evaluate and choose share (inference.runtime)."""


class Loaded(Exception):
    """Raised by the stand-in pipeline: the command got as far as loading this model folder."""

    def __init__(self, model: object) -> None:
        super().__init__(model)
        self.model = model


def stand_in_pipeline(model: object, **_: object) -> None:
    raise Loaded(model)


def added_model(models_dir: Path, name: str = "mymodel", version: str = "9.9.9-added") -> Path:
    """A copy of the shipped default model in ``models_dir``, as an operator adds one, its card's version
    changed so that the findings tell which copy ran."""
    folder = models_dir / name
    shutil.copytree(SHIPPED / "default", folder)
    card = json.loads((folder / "card.json").read_text())
    card["version"] = version
    (folder / "card.json").write_text(json.dumps(card))
    return folder


@pytest.fixture(autouse=True)
def no_node_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the settings a test gives: none from the environment the tests run in."""
    for variable in ("URONODE_CONFIG", "URONODE_INFERENCE__MODELS_DIR", "URONODE_INFERENCE__MODEL"):
        monkeypatch.delenv(variable, raising=False)


def test_predict_runs_a_model_that_only_the_configured_models_dir_holds(tmp_path: Path) -> None:
    """End to end, as in the Docker image: the models folder set in the environment, the model named."""
    added_model(tmp_path / "models")
    write_series(tmp_path / "ct", 4, size=64)
    env = {**os.environ, "URONODE_INFERENCE__MODELS_DIR": str(tmp_path / "models")}
    done = subprocess.run([sys.executable, "-m", "uronode", "predict", str(tmp_path / "ct"), "--out",
                           str(tmp_path / "out"), "--model", "mymodel", "--no-previews", "--no-dicom"],
                          capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "findings.json").read_text())
    assert report["model"]["version"] == "9.9.9-added"


def test_evaluate_and_choose_load_the_model_the_config_file_s_models_dir_holds(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The models folder in a config file, given after the command (``--config``) or by ``URONODE_CONFIG``."""
    folder = added_model(tmp_path / "models")
    config = tmp_path / "uronode.toml"
    config.write_text(f'[inference]\nmodels_dir = "{tmp_path / "models"}"\n')
    images = _one_labelled_image(tmp_path / "set")
    monkeypatch.setattr("inference.pipeline.Pipeline", stand_in_pipeline)
    for argv in (["evaluate", "--model", "mymodel", "--config", str(config), "--series", "1", "--rows", "64"],
                 ["choose", "--model", "mymodel", "--config", str(config), "--images", str(images),
                  "--split", "all"]):
        with pytest.raises(Loaded) as loaded:
            main(argv)
        assert loaded.value.model == folder, argv
    monkeypatch.setenv("URONODE_CONFIG", str(config))
    with pytest.raises(Loaded) as loaded:
        main(["evaluate", "--model", "mymodel", "--series", "1", "--rows", "64"])
    assert loaded.value.model == folder


@pytest.mark.parametrize("command", [
    ["predict", "ct", "--out", "out"],
    ["evaluate", "--series", "1"],
    ["choose", "--images", "images"],
])
def test_a_name_found_nowhere_is_refused_naming_every_place_looked_in(
        command: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("URONODE_INFERENCE__MODELS_DIR", str(tmp_path / "models"))
    assert main([*command, "--model", "nosuch"]) == 2
    said = capsys.readouterr().err
    assert "model 'nosuch' not found: neither a folder nosuch here" in said
    assert f"{tmp_path / 'models' / 'nosuch'} (inference.models_dir)" in said
    assert f"{SHIPPED / 'nosuch'} (the models uronode ships with)" in said
    assert not (tmp_path / "out").exists()  # refused before anything was read or written


@pytest.mark.parametrize("find", FINDERS)
def test_a_folder_as_given_then_the_models_dir_then_the_shipped_models(
        find: Callable[[str | None, Path | None], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("URONODE_INFERENCE__MODELS_DIR", str(tmp_path / "models"))
    added = added_model(tmp_path / "models", "default")  # the node's own copy of a shipped name comes first
    assert find("default", None) == added
    assert find(None, None) == added
    assert find("cascade-3.7.1", None) == SHIPPED / "cascade-3.7.1"  # not in models_dir: the shipped one
    assert find(str(tmp_path / "models" / "default"), None) == tmp_path / "models" / "default"
    monkeypatch.delenv("URONODE_INFERENCE__MODELS_DIR")
    assert find("default", None) == SHIPPED / "default"
    from inference.errors import ModelError

    with pytest.raises(ModelError, match=r"\(inference\.models_dir, the models uronode ships with\)"):
        find("nosuch", None)  # the default models_dir is the shipped one: named once
    with pytest.raises(ModelError, match="model folder /nowhere/model not found"):
        find("/nowhere/model", None)


def _one_labelled_image(folder: Path) -> Path:
    """A YOLO set of one grey image with one box (``train --images``' format): enough for ``choose`` to read."""
    (folder / "images").mkdir(parents=True)
    (folder / "labels").mkdir()
    pixels = np.full((64, 64), 90, dtype=np.uint8)
    pixels[28:36, 28:36] = 250
    Image.fromarray(pixels).save(folder / "images" / "a.png")
    (folder / "labels" / "a.txt").write_text("0 0.5 0.5 0.125 0.125\n")
    return folder


def test_train_init_finds_a_model_of_the_nodes_models_dir_by_its_name(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """`train --init`, `soup --models` and `experiment --validate` look a name up as predict does (they looked in
    the shipped models alone)."""
    from inference.errors import ModelError
    from lab.cli import _init_model_file

    models = tmp_path / "models"
    shutil.copytree(default_models_dir() / "default", models / "site-model")
    with pytest.raises(ModelError):
        _init_model_file(Path("site-model"))
    monkeypatch.setenv("URONODE_INFERENCE__MODELS_DIR", str(models))
    assert _init_model_file(Path("site-model")) == models / "site-model" / "model.keras"


def test_the_node_names_the_model_its_worker_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker queue's HTTP side names the node's model (to compare a remote worker's with it) through the
    lookup the node's worker loads it by, `uronode.settings.model_folder`: the folder in ``inference.models_dir``,
    never a shipped model of the same name that the worker would not run."""
    from dicomweb.workers import node_model
    from inference.errors import ModelError
    from inference.runtime import resolve_model_dir
    from uronode.settings import load_settings, model_label

    monkeypatch.setenv("URONODE_INFERENCE__MODELS_DIR", str(tmp_path / "models"))
    (tmp_path / "models").mkdir()
    settings = load_settings()
    assert node_model(settings) == ""  # the worker would find no model here; the shipped one is not named
    with pytest.raises(ModelError, match="model 'default' not found"):
        resolve_model_dir(settings.inference.model, settings.inference.models_dir)
    added = added_model(tmp_path / "models", "default")
    assert resolve_model_dir(settings.inference.model, settings.inference.models_dir) == added
    assert node_model(settings) == "uronode-stone-cascade 9.9.9-added"
    card = json.loads((added / "card.json").read_text())
    del card["version"]
    (added / "card.json").write_text(json.dumps(card))
    assert node_model(settings) == "" and model_label(None) == ""
