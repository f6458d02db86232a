"""Model folders (``models/<name>/``): the card, the Keras model, and TensorFlow's threads.

A folder holds ``card.json`` and either ``model.keras`` (Keras 3) or the seed
paper's legacy Keras 2 pair ``model.json`` + ``weights.h5``. The card says which
(``files``) and everything the code needs to feed the model (input size,
preprocessing, thresholds, labels with their codes) and what it was measured to
do. Load once per worker process (``load_model``) and keep it.
"""

from __future__ import annotations

import json
import logging
import os
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from inference.errors import ModelError
from uronode.settings import DEFAULT_MODEL, default_models_dir, model_folder

if TYPE_CHECKING:  # the network module (numpy, scipy) only when a model is built or run
    from inference.network import KerasModel

logger = logging.getLogger(__name__)

CARD_NAME = "card.json"
REQUIRED_CARD_KEYS = ("name", "version", "input", "preprocessing", "threshold", "labels")


@dataclass(frozen=True)
class ModelCard:
    """What ``card.json`` says about a model."""

    name: str
    version: str
    input: dict[str, Any]
    preprocessing: dict[str, Any]
    threshold: float
    labels: list[dict[str, Any]]
    candidates: dict[str, Any] = field(default_factory=dict)
    postprocessing: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelCard:
        if not isinstance(data, dict):
            raise ModelError(f"model card is a JSON {type(data).__name__}, not an object")
        missing = [k for k in REQUIRED_CARD_KEYS if k not in data]
        if missing:
            raise ModelError(f"model card lacks {', '.join(missing)}")
        try:
            threshold = float(data["threshold"])
        except (TypeError, ValueError) as exc:
            raise ModelError("model card threshold is not a number") from exc
        if not 0.0 < threshold < 1.0:
            raise ModelError(f"model card threshold {threshold} is not between 0 and 1")
        for key, kind in (("input", dict), ("preprocessing", dict), ("labels", list), ("candidates", dict),
                          ("postprocessing", dict), ("files", dict)):
            if key in data and not isinstance(data[key], kind):
                raise ModelError(f"model card {key} is a JSON {type(data[key]).__name__}, not "
                                 f"{'an object' if kind is dict else 'a list'}")
        return cls(
            name=str(data["name"]),
            version=str(data["version"]),
            input=dict(data["input"]),
            preprocessing=dict(data["preprocessing"]),
            threshold=threshold,
            labels=list(data["labels"]),
            candidates=dict(data.get("candidates", {})),
            postprocessing=dict(data.get("postprocessing", {})),
            files=dict(data.get("files", {})),
            raw=dict(data),
        )

    @classmethod
    def read(cls, folder: Path) -> ModelCard:
        path = folder / CARD_NAME
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError as exc:
            raise ModelError(f"{folder} has no {CARD_NAME}") from exc
        except json.JSONDecodeError as exc:
            raise ModelError(f"{path} is not valid JSON: {exc}") from exc
        return cls.from_dict(data)


@dataclass(frozen=True, eq=False)
class LoadedModel:
    card: ModelCard
    keras_model: KerasModel
    folder: Path
    load_seconds: float
    format: str
    """'keras' or 'legacy-json-h5'."""
    lone_keras_model: KerasModel | None = None
    """The network for a volume of one slice (an uploaded image, a single-frame DICOM file), where the card's
    ``files.lone_model`` names one; else ``keras_model`` serves every volume."""


def find_model(name: str | os.PathLike[str] | None, config: Path | None = None) -> Path:
    """The folder of the model ``name`` (None: the default model), found as the node finds its own: a folder
    path as given, else ``<inference.models_dir>/<name>`` of the node's settings (environment and ``config``
    or ``URONODE_CONFIG``, as every command reads them), else the models uronode ships with.

    The shipped models come last so that a name works here whether or not ``inference.models_dir`` holds it
    (the Docker image sets it to a folder of its own). :class:`inference.errors.ModelError` names every place
    looked in; :class:`uronode.settings.ConfigError` says what is wrong with the settings. ``uronode predict``,
    ``evaluate`` and ``choose`` find their ``--model`` with it."""
    from uronode.settings import load_settings

    name = str(name or DEFAULT_MODEL)
    if Path(name).is_absolute() and not Path(name).is_dir():
        raise ModelError(f"model folder {name} not found")
    models_dir = load_settings(config).inference.models_dir
    folder = model_folder(name, models_dir) or model_folder(name)
    if folder is not None:
        return folder
    places: dict[Path, list[str]] = {}
    places.setdefault(models_dir / name, []).append("inference.models_dir")
    places.setdefault(default_models_dir() / name, []).append("the models uronode ships with")
    looked = ", nor ".join(f"{folder} ({', '.join(what)})" for folder, what in places.items())
    raise ModelError(f"model {name!r} not found: neither a folder {name} here, nor {looked}")


def resolve_model_dir(name_or_path: str | os.PathLike[str] | None = None, models_dir: Path | None = None) -> Path:
    """A model folder: an existing path as given, else ``<models_dir>/<name>``
    (:func:`uronode.settings.model_folder`, which raises nothing).

    ``models_dir`` is the node's ``inference.models_dir``; None: the models the node ships with.
    """
    folder = model_folder(name_or_path, models_dir)
    if folder is None:
        name = str(name_or_path or DEFAULT_MODEL)
        candidate = (default_models_dir() if models_dir is None else models_dir) / name
        raise ModelError(f"model {name!r} not found (neither a folder nor {candidate})")
    return folder


def model_available(name_or_path: str | os.PathLike[str] | None = None, models_dir: Path | None = None) -> bool:
    """Whether :func:`resolve_model_dir` finds the model's folder and its card there (nothing is loaded)."""
    try:
        return (resolve_model_dir(name_or_path, models_dir) / CARD_NAME).is_file()
    except ModelError:
        return False


def configure_threads(cores: int | None = None) -> int:
    """Set TensorFlow's thread pools: intra-op = cores, inter-op = 1 (fastest measured here).

    Must run before TensorFlow executes anything; later calls are ignored by TF.
    """
    import tensorflow as tf

    cores = cores or len(os.sched_getaffinity(0))
    try:
        tf.config.threading.set_intra_op_parallelism_threads(cores)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        logger.debug("TensorFlow already initialised; thread settings kept")
    return cores


def _load_legacy(folder: Path, json_name: str, weights_name: str) -> KerasModel:
    """Keras 2 ``model.json`` + ``weights.h5``: through tf-keras when installed, else Keras 3."""
    if weights_name.endswith(".weights.h5"):
        raise ModelError(f"legacy weights must not be named *.weights.h5 (Keras 3 reads that as its own format): {weights_name}")
    config = (folder / json_name).read_text()
    try:
        import tf_keras
    except ImportError:
        tf_keras = None
    if tf_keras is not None:
        model = tf_keras.models.model_from_json(config)
        model.load_weights(str(folder / weights_name))
        return model
    import keras

    model = keras.models.model_from_json(config, custom_objects={"Model": keras.Model, "Functional": keras.Model})
    model.load_weights(str(folder / weights_name))
    return model


def _load_keras(folder: Path, file: str, what: str) -> KerasModel:
    """A ``.keras`` file of the model folder (``what`` names it in the error when it is missing)."""
    import keras

    path = folder / file
    if not path.exists():
        raise ModelError(f"{folder.name}: {what} is missing")
    if not zipfile.is_zipfile(path):  # Keras would say "File not found" of a file that is there, cut short
        raise ModelError(f"{folder.name}: {file} is not a Keras file (truncated or damaged); copy the model again")
    return keras.saving.load_model(str(path), compile=False)


def load_model(name_or_path: str | os.PathLike[str] | None = None, *, cores: int | None = None) -> LoadedModel:
    """Read a model folder's card and its Keras model (``.keras`` or legacy JSON + H5)."""
    folder = resolve_model_dir(name_or_path)
    card = ModelCard.read(folder)
    configure_threads(cores)
    start = time.perf_counter()
    files = card.files or {}
    keras_file = files.get("model") or ("model.keras" if (folder / "model.keras").exists() else None)
    try:
        if keras_file:
            model = _load_keras(folder, keras_file, keras_file)
            fmt = "keras"
        else:
            json_name = files.get("model_json", "model.json")
            weights_name = files.get("weights", "weights.h5")
            for needed in (json_name, weights_name):
                if not (folder / needed).exists():
                    raise ModelError(f"{folder.name}: neither model.keras nor {needed} is there")
            model = _load_legacy(folder, json_name, weights_name)
            fmt = "legacy-json-h5"
        lone_file = files.get("lone_model")
        lone = _load_keras(folder, lone_file, f"{lone_file} (the card's files.lone_model)") if lone_file else None
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise ModelError(f"{folder.name}: the model cannot be loaded: {exc}") from exc
    seconds = time.perf_counter() - start
    expected = (card.input.get("patch"), card.input.get("patch"), card.input.get("channels"))
    for label, network in (("model", model), ("lone-image model", lone)):
        if network is None:
            continue
        shape = tuple(network.input_shape[1:])
        if None not in expected and shape != expected:
            raise ModelError(f"{folder.name}: the {label} takes {shape}, the card says {expected}")
    if lone is not None and len(lone.outputs) != len(model.outputs):
        raise ModelError(f"{folder.name}: the lone-image model has {len(lone.outputs)} outputs, the model "
                         f"{len(model.outputs)}")
    logger.info("loaded model %s %s (%s%s) in %.2f s", card.name, card.version, fmt,
                ", a second network for lone images" if lone is not None else "", seconds)
    return LoadedModel(card=card, keras_model=model, folder=folder, load_seconds=seconds, format=fmt,
                       lone_keras_model=lone)
