"""Training the patch U-Net on generated phantoms, and writing a model folder with its card.

``build_training_patches`` runs the generator and the same candidate stage as
inference, so the network learns exactly the patches it will be shown; training
phantoms carry more stones (2-6) and mimics (5-13) than a typical series.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from inference.candidates import DEFAULT_RULE, CandidateRule
from inference.dataset import PatchSet, patches_from_phantom
from inference.network import (
    CHANNELS,
    PATCH,
    PREPROCESSING,
    build_unet,
    flops_per_patch,
    preprocess,
)
from inference.synth import generate_phantom

logger = logging.getLogger(__name__)

MODEL_NAME = "uronode-stone-cascade"
LABELS = [
    {
        "value": 1,
        "name": "urinary stone",
        "segmented_property_category": {"scheme": "SCT", "value": "49755003", "meaning": "Morphologically Abnormal Structure"},
        "segmented_property_type": {"scheme": "SCT", "value": "56381008", "meaning": "Calculus"},
        "anatomic_region": {"scheme": "SCT", "value": "431938005", "meaning": "Urinary tract"},
        "recommended_display_rgb": [255, 0, 0],
    }
]


def build_training_patches(seeds: range | list[int], rule: CandidateRule = DEFAULT_RULE) -> PatchSet:
    from tqdm import tqdm

    parts = []
    for seed in tqdm(list(seeds), desc="phantoms", unit="phantom"):
        r = np.random.default_rng(seed + 99991)
        phantom = generate_phantom(seed, n_stones=int(r.integers(2, 7)), n_mimics=int(r.integers(5, 14)))
        parts.append(patches_from_phantom(phantom, rule))
    return PatchSet.concatenate(parts)


def _augment(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    k = int(rng.integers(0, 4))
    x, y = np.rot90(x, k, axes=(1, 2)), np.rot90(y, k, axes=(1, 2))
    if rng.random() < 0.5:
        x, y = x[:, :, ::-1], y[:, :, ::-1]
    return np.ascontiguousarray(x), np.ascontiguousarray(y)


def _loss():
    import keras
    from keras import ops

    def bce_dice(y_true, y_pred):
        bce = keras.losses.binary_crossentropy(y_true, y_pred)
        inter = ops.sum(y_true * y_pred)
        dice = 1.0 - (2.0 * inter + 1.0) / (ops.sum(y_true) + ops.sum(y_pred) + 1.0)
        return ops.mean(bce) + dice

    return bce_dice


def train_model(
    data: PatchSet,
    out_dir: Path,
    *,
    epochs: int = 12,
    base: int = 16,
    batch: int = 32,
    validation_fraction: float = 0.1,
    seed: int = 0,
    negative_ratio: int = 4,
    initial_model: Path | None = None,
    learning_rate: float = 1e-3,
    small_pixels: int = 12,
    small_repeat: int = 0,
    training_description: str = "",
) -> dict[str, Any]:
    """Fit the U-Net on ``data`` and write ``model.keras`` and ``card.json`` into ``out_dir``."""
    import keras

    rng = np.random.default_rng(seed)
    seeds = np.unique(data.seeds)
    val_seeds = set(seeds[-max(1, int(len(seeds) * validation_fraction)):].tolist())
    is_val = np.array([s in val_seeds for s in data.seeds])
    x_all = preprocess(data.patches.astype(np.float32))
    y_all = data.targets.astype(np.float32)[..., None]
    train_idx = np.nonzero(~is_val)[0]
    pos = train_idx[data.has_stone[train_idx]]
    neg = train_idx[~data.has_stone[train_idx]]

    # tiny stones (few stone pixels in the patch) are the hard ones: optionally show them more
    small = pos[data.targets[pos].reshape(len(pos), -1).sum(axis=1) < small_pixels] if small_repeat else pos[:0]

    def epoch_order() -> np.ndarray:
        # every positive twice, and a fresh draw of at most negative_ratio x as many negatives
        take = rng.permutation(neg)[: negative_ratio * len(pos)]
        return rng.permutation(np.concatenate([pos, pos, *([small] * small_repeat), take]))

    x_val, y_val = x_all[is_val], y_all[is_val]
    logger.info("training patches %d (%d with stone), validation %d", len(train_idx), len(pos), int(is_val.sum()))
    steps = ((2 + negative_ratio) * len(pos) + small_repeat * len(small)) // batch

    class Batches(keras.utils.PyDataset):
        def __init__(self) -> None:
            super().__init__()
            self.order = epoch_order()

        def __len__(self) -> int:
            return len(self.order) // batch

        def __getitem__(self, i: int):
            idx = self.order[i * batch:(i + 1) * batch]
            return _augment(x_all[idx], y_all[idx], rng)

        def on_epoch_end(self) -> None:
            self.order = epoch_order()

    keras.utils.set_random_seed(seed)
    if initial_model is not None:
        # fine-tuning: continue from a trained model's weights
        model = keras.saving.load_model(initial_model, compile=False)
    else:
        model = build_unet(base=base)
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=epochs * steps)
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss=_loss(),
                  metrics=[keras.metrics.BinaryIoU(target_class_ids=[1], name="iou")])
    history = model.fit(Batches(), validation_data=(x_val, y_val), epochs=epochs, verbose=2)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save(out_dir / "model.keras")
    card = make_card(model, base=base, epochs=epochs, training_description=training_description,
                     history={k: [float(v) for v in vals] for k, vals in history.history.items()})
    write_card(out_dir, card)
    return card


def make_card(model: Any, *, base: int, epochs: int, training_description: str,
              history: dict[str, list[float]], threshold: float = 0.5) -> dict[str, Any]:
    rule = CandidateRule()
    return {
        "name": MODEL_NAME,
        "version": "1.0.0",
        "family": "cascade: HU candidates + 2.5D patch U-Net (TensorFlow/Keras)",
        "files": {"model": "model.keras"},
        "input": {"patch": PATCH, "channels": CHANNELS, "dtype": "float32"},
        "preprocessing": PREPROCESSING,
        "candidates": {"threshold_hu": rule.threshold_hu, "max_volume_mm3": rule.max_volume_mm3,
                       "max_extent_mm": rule.max_extent_mm},
        "threshold": threshold,
        "postprocessing": {"min_voxels": 1, "box_margin_mm": 5.0, "connectivity": 26},
        "labels": LABELS,
        "architecture": {"unet_levels": 3, "base_filters": base, "parameters": int(model.count_params()),
                         "gflop_per_patch": round(flops_per_patch(model) / 1e9, 4)},
        "training": {"data": training_description, "epochs": epochs, "history": history},
        "metrics": {},
        "intended_use": "research and demonstration; not a medical device; not for primary diagnosis",
    }


def write_card(out_dir: Path, card: dict[str, Any]) -> None:
    (out_dir / "card.json").write_text(json.dumps(card, indent=2) + "\n")
