"""A tiny model in the seed paper's Keras 2.2 format (model.json + weights.h5), written by hand.

One 1x1 convolution on the candidate slice's stone-window channel: a pixel is
stone when its HU exceeds ``THRESHOLD_HU``. It makes the pipeline testable
without the trained model, and proves the legacy loader reads Keras 2 files.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

from inference.network import CHANNELS, CONTEXT, PATCH, PREPROCESSING, STONE_WINDOW

THRESHOLD_HU = 300.0
GAIN = 40.0


def _weights() -> tuple[np.ndarray, np.ndarray]:
    lo, hi = STONE_WINDOW
    x_at_threshold = (THRESHOLD_HU - (lo + hi) / 2) / ((hi - lo) / 2)
    kernel = np.zeros((1, 1, CHANNELS, 1), np.float32)
    kernel[0, 0, CONTEXT, 0] = GAIN
    bias = np.array([-GAIN * x_at_threshold], np.float32)
    return kernel, bias


def model_json() -> str:
    config = {
        "class_name": "Model",
        "config": {
            "name": "model_1",
            "layers": [
                {"name": "input_1", "class_name": "InputLayer",
                 "config": {"batch_input_shape": [None, PATCH, PATCH, CHANNELS], "dtype": "float32",
                            "sparse": False, "name": "input_1"},
                 "inbound_nodes": []},
                {"name": "conv2d_1", "class_name": "Conv2D",
                 "config": {"name": "conv2d_1", "trainable": True, "filters": 1, "kernel_size": [1, 1],
                            "strides": [1, 1], "padding": "same", "data_format": "channels_last",
                            "dilation_rate": [1, 1], "activation": "sigmoid", "use_bias": True,
                            "kernel_initializer": {"class_name": "VarianceScaling",
                                                   "config": {"scale": 1.0, "mode": "fan_avg",
                                                              "distribution": "uniform", "seed": None}},
                            "bias_initializer": {"class_name": "Zeros", "config": {}},
                            "kernel_regularizer": None, "bias_regularizer": None,
                            "activity_regularizer": None, "kernel_constraint": None, "bias_constraint": None},
                 "inbound_nodes": [[["input_1", 0, 0, {}]]]},
            ],
            "input_layers": [["input_1", 0, 0]],
            "output_layers": [["conv2d_1", 0, 0]],
        },
        "keras_version": "2.2.4",
        "backend": "tensorflow",
    }
    return json.dumps(config)


def write_legacy_model(folder: Path, *, weights_name: str = "weights.h5") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.json").write_text(model_json())
    kernel, bias = _weights()
    with h5py.File(folder / weights_name, "w") as f:
        f.attrs["layer_names"] = [b"input_1", b"conv2d_1"]
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = b"2.2.4"
        f.create_group("input_1").attrs["weight_names"] = []
        g = f.create_group("conv2d_1")
        g.attrs["weight_names"] = [b"conv2d_1/kernel:0", b"conv2d_1/bias:0"]
        g.create_dataset("conv2d_1/kernel:0", data=kernel)
        g.create_dataset("conv2d_1/bias:0", data=bias)
    card = {
        "name": "test-threshold-legacy",
        "version": "0.0.1",
        "files": {"model_json": "model.json", "weights": weights_name},
        "input": {"patch": PATCH, "channels": CHANNELS},
        "preprocessing": PREPROCESSING,
        "candidates": {"threshold_hu": 130.0, "max_volume_mm3": 8000.0, "max_extent_mm": 30.0},
        "threshold": 0.5,
        "postprocessing": {"min_voxels": 1, "box_margin_mm": 5.0},
        "labels": [{"value": 1, "name": "urinary stone"}],
    }
    (folder / "card.json").write_text(json.dumps(card))
    return folder
