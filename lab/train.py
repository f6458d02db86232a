"""Training the patch U-Net on generated phantoms, and writing a model folder with its card.

``build_training_patches`` runs the generator and the same candidate stage as
inference, so the network learns exactly the patches it will be shown; training
phantoms carry more stones (2-6) and mimics (5-13) than a typical series.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np

from inference.candidates import DEFAULT_RULE, CandidateRule
from inference.components import ComponentThresholds
from inference.network import (
    LEGACY_SPEC,
    InputSpec,
    KerasModel,
    build_unet,
    flops_per_patch,
    preprocess,
)
from inference.runtime import CARD_NAME, ModelCard
from lab.augment import Augmentation
from lab.dataset import PatchSet, patches_from_phantom
from lab.synth import Phantom, generate_phantom
from lab.trainingset import inherited_record

KerasCallback: TypeAlias = Any
"""A ``keras.callbacks.Callback`` (Keras ships no type information: to mypy it is ``Any``)."""
KerasTensor: TypeAlias = Any
"""A tensor of Keras's backend, as a loss function gets and returns them."""
Logs: TypeAlias = dict[str, float] | None
"""What Keras passes its callbacks: the metrics so far."""

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


TRAINING_SMALL_STONE_FRACTION = 0.6
"""Share of stones under 3 mm in the training phantoms (the generator's 0.4 stays for held-out sets):
the network sees more of the hard ones."""


def training_phantom(seed: int, small_stone_fraction: float = 0.4) -> Phantom:
    """A training phantom: more stones (2-6) and mimics (5-13) than a typical series."""
    r = np.random.default_rng(seed + 99991)
    return generate_phantom(seed, n_stones=int(r.integers(2, 7)), n_mimics=int(r.integers(5, 14)),
                            small_stone_fraction=small_stone_fraction)


def build_training_patches(seeds: range | list[int], rule: CandidateRule = DEFAULT_RULE,
                           spec: InputSpec = LEGACY_SPEC, max_contrast_negatives: int | None = 40,
                           small_stone_fraction: float = 0.4) -> PatchSet:
    from tqdm import tqdm

    parts = []
    for seed in tqdm(list(seeds), desc="phantoms", unit="phantom"):
        parts.append(patches_from_phantom(training_phantom(seed, small_stone_fraction), rule, spec,
                                          max_contrast_negatives))
    return PatchSet.concatenate(parts)


def _augment(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    k = int(rng.integers(0, 4))
    x, y = np.rot90(x, k, axes=(1, 2)), np.rot90(y, k, axes=(1, 2))
    if rng.random() < 0.5:
        x, y = x[:, :, ::-1], y[:, :, ::-1]
    return np.ascontiguousarray(x), np.ascontiguousarray(y)


def _loss() -> Callable[[KerasTensor, KerasTensor], KerasTensor]:
    import keras
    from keras import ops

    def bce_dice(y_true: KerasTensor, y_pred: KerasTensor) -> KerasTensor:
        bce = keras.losses.binary_crossentropy(y_true, y_pred)
        inter = ops.sum(y_true * y_pred)
        dice = 1.0 - (2.0 * inter + 1.0) / (ops.sum(y_true) + ops.sum(y_pred) + 1.0)
        return ops.mean(bce) + dice

    return bce_dice


def select_channels(patches: np.ndarray, have: InputSpec, want: InputSpec) -> np.ndarray:
    """The raw channels of ``want`` from patches cut for ``have`` (more context, more wide views)."""
    if want.context > have.context or any(f not in have.wide for f in want.wide) or want.patch != have.patch:
        raise ValueError(f"patches cut for {have} do not hold {want}")
    first = have.context - want.context
    idx = list(range(first, first + 2 * want.context + 1))
    idx += [2 * have.context + 1 + have.wide.index(f) for f in want.wide]
    return patches[..., idx]


def train_model(
    data: PatchSet,
    out_dir: Path | None,
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
    spec: InputSpec = LEGACY_SPEC,
    data_spec: InputSpec | None = None,
    classifier: bool = False,
    rule: CandidateRule = DEFAULT_RULE,
    verbose: int = 2,
    progress: bool = False,
    time_budget_s: float | None = None,
    loader_workers: int = 1,
) -> tuple[KerasModel, dict[str, Any]]:
    """Fit the U-Net on ``data``; write ``model.keras`` and ``card.json`` into ``out_dir`` (if given).

    ``data_spec``: what ``data``'s patches were cut for, when it holds more than ``spec``
    needs. ``classifier`` adds the component head (trained on ``data.centre_stone``).
    Uses ``keras.ops`` only, so that it runs on the TensorFlow and the JAX backends.
    ``time_budget_s``: train for about this long instead of ``epochs`` (at most that many),
    the learning rate annealed by the time spent. Returns the model and its card.
    """
    import keras

    rng = np.random.default_rng(seed)
    seeds = np.unique(data.seeds)
    n_val = int(len(seeds) * validation_fraction) if len(seeds) > 1 else 0
    val_seeds = set(seeds[len(seeds) - n_val:].tolist()) if n_val else set()
    is_val = np.array([s in val_seeds for s in data.seeds], dtype=bool)
    raw = data.patches if data_spec is None else select_channels(data.patches, data_spec, spec)
    x_all = np.empty((*raw.shape[:3], spec.channels), dtype=np.float16)
    for i in range(0, len(raw), 4096):
        x_all[i:i + 4096] = preprocess(raw[i:i + 4096].astype(np.float32), spec)
    y_all = data.targets.astype(np.float32)[..., None]
    centre = data.centre_stone if data.centre_stone is not None else data.has_stone
    c_all = centre.astype(np.float32)[:, None]
    train_idx = np.nonzero(~is_val)[0]
    positive = data.has_stone | centre
    pos = train_idx[positive[train_idx]]
    neg = train_idx[~positive[train_idx]]

    # tiny stones (few stone pixels in the patch) are the hard ones: optionally show them more
    small = pos[data.targets[pos].reshape(len(pos), -1).sum(axis=1) < small_pixels] if small_repeat else pos[:0]

    def epoch_order() -> np.ndarray:
        # every positive twice, and a fresh draw of at most negative_ratio x as many negatives
        take = rng.permutation(neg)[: negative_ratio * max(1, len(pos))]
        return rng.permutation(np.concatenate([pos, pos, *([small] * small_repeat), take]))

    logger.info("training patches %d (%d with stone), validation %d", len(train_idx), len(pos), int(is_val.sum()))
    steps = max(1, ((2 + negative_ratio) * len(pos) + small_repeat * len(small)) // batch)

    def targets(idx: np.ndarray, y: np.ndarray) -> Any:
        return {"stone": y, "component": c_all[idx]} if classifier else y

    class Batches(keras.utils.PyDataset):
        def __init__(self) -> None:
            super().__init__(workers=loader_workers)
            self.order = epoch_order()

        def __len__(self) -> int:
            return max(1, len(self.order) // batch)

        def __getitem__(self, i: int) -> tuple[np.ndarray, Any]:
            idx = self.order[i * batch:(i + 1) * batch]
            x, y = _augment(x_all[idx], y_all[idx], np.random.default_rng(rng.integers(1 << 31)))
            return x.astype(np.float32), targets(idx, y)

        def on_epoch_end(self) -> None:
            self.order = epoch_order()

    keras.utils.set_random_seed(seed)
    if initial_model is not None:
        # fine-tuning: continue from a trained model's weights
        model = keras.saving.load_model(initial_model, compile=False)
        classifier = len(model.outputs) > 1
    else:
        model = build_unet(base=base, channels=spec.channels, patch=spec.patch, classifier=classifier)
    schedule: Any = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=epochs * steps)
    if time_budget_s is not None:
        schedule = learning_rate
    if classifier:
        loss: Any = {"stone": _loss(), "component": keras.losses.BinaryCrossentropy()}
        metrics: Any = {"stone": [keras.metrics.BinaryIoU(target_class_ids=[1], name="iou")],
                        "component": [keras.metrics.AUC(name="auc")]}
    else:
        loss, metrics = _loss(), [keras.metrics.BinaryIoU(target_class_ids=[1], name="iou")]
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss=loss, metrics=metrics)
    callbacks: list[KerasCallback] = [_progress_bar(epochs, steps)] if progress else []
    if time_budget_s is not None:
        callbacks.append(_time_budget(time_budget_s, learning_rate))
    val_x = x_all[is_val].astype(np.float32)
    val = (val_x, targets(np.nonzero(is_val)[0], y_all[is_val])) if is_val.any() else None
    history = model.fit(Batches(), validation_data=val, epochs=epochs, verbose=0 if progress else verbose,
                        callbacks=callbacks)
    card = make_card(model, base=base, epochs=len(history.history.get("loss", [])), training_description=training_description,
                     history={k: [float(v) for v in vals] for k, vals in history.history.items()},
                     spec=spec, rule=rule)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        model.save(out_dir / "model.keras")
        write_card(out_dir, card)
    return model, card


def _draw(rng: np.random.Generator, idx: np.ndarray, weight: np.ndarray, count: int) -> np.ndarray:
    """``count`` of ``idx`` drawn with replacement, each with a probability proportional to its weight."""
    if count <= 0 or idx.size == 0:
        return idx[:0]
    w = np.clip(weight.astype(np.float64), 1e-6, None)
    return rng.choice(idx, size=count, replace=True, p=w / w.sum())


def component_scores(model: KerasModel, patches: np.ndarray, spec: InputSpec, chunk: int = 1024) -> np.ndarray:
    """The component head's output for every HU patch, one view, as prediction computes it."""
    out = []
    for i in range(0, len(patches), chunk):
        y = model.predict(preprocess(patches[i:i + chunk].astype(np.float32), spec), verbose=0, batch_size=256)
        out.append(np.asarray(y["component"] if isinstance(y, dict) else y[1], dtype=np.float64)[:, 0])
    return np.concatenate(out) if out else np.zeros(0)


def _time_budget(budget_s: float, learning_rate: float) -> KerasCallback:
    """Cosine-anneal the learning rate over a time budget, and stop when the next epoch would overrun it."""
    import math
    import time

    import keras

    class Budget(keras.callbacks.Callback):
        def on_train_begin(self, logs: Logs = None) -> None:
            self.start = time.monotonic()
            self.epoch_s = 0.0

        def on_epoch_begin(self, epoch: int, logs: Logs = None) -> None:
            self.t0 = time.monotonic()
            done = min(1.0, (self.t0 - self.start) / budget_s)
            self.model.optimizer.learning_rate = learning_rate * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * done)))

        def on_epoch_end(self, epoch: int, logs: Logs = None) -> None:
            now = time.monotonic()
            self.epoch_s = now - self.t0
            if now - self.start + self.epoch_s > budget_s:
                self.model.stop_training = True

    return Budget()


def _progress_bar(epochs: int, steps: int) -> KerasCallback:
    """A tqdm bar over all epochs' batches, as a Keras callback (made lazily: Keras imports late)."""
    import keras
    from tqdm import tqdm

    class Bar(keras.callbacks.Callback):
        def on_train_begin(self, logs: Logs = None) -> None:
            self.bar = tqdm(total=epochs * steps, unit="batch", desc="training")

        def on_train_batch_end(self, batch: int, logs: Logs = None) -> None:
            self.bar.update(1)
            if logs and "loss" in logs:
                self.bar.set_postfix(loss=f"{float(logs['loss']):.3f}")

        def on_epoch_end(self, epoch: int, logs: Logs = None) -> None:
            self.bar.set_description(f"training (epoch {epoch + 1}/{epochs})")

        def on_train_end(self, logs: Logs = None) -> None:
            self.bar.close()

    return Bar()


def make_card(model: KerasModel, *, base: int, epochs: int, training_description: str,
              history: dict[str, list[float]], threshold: float = 0.5, spec: InputSpec = LEGACY_SPEC,
              rule: CandidateRule = DEFAULT_RULE, version: str = "1.0.0") -> dict[str, Any]:
    classifier = len(model.outputs) > 1
    family = "cascade: HU candidates + 2.5D patch U-Net (TensorFlow/Keras)"
    if classifier:
        family = ("cascade: HU and local-contrast candidates + 2.5D patch U-Net with a component head "
                  "(TensorFlow/Keras)")
    card: dict[str, Any] = {
        "name": MODEL_NAME,
        "version": version,
        "family": family,
        "files": {"model": "model.keras"},
        "input": {"patch": spec.patch, "channels": spec.channels, "dtype": "float32"},
        "preprocessing": spec.card(),
        "candidates": rule.card(),
        "threshold": threshold,
        "postprocessing": {"min_voxels": 1, "box_margin_mm": 5.0, "connectivity": 26},
        "labels": LABELS,
        "architecture": {"unet_levels": 3, "base_filters": base, "parameters": int(model.count_params()),
                         "gflop_per_patch": round(flops_per_patch(model) / 1e9, 4)},
        "training": {"data": training_description, "epochs": epochs, "history": history},
        "metrics": {},
        "intended_use": "research and demonstration; not a medical device; not for primary diagnosis",
    }
    if classifier:
        card["components"] = ComponentThresholds(pixel=threshold, dense_small=threshold, dense_large=threshold,
                                                 contrast=threshold).card()
    return card


def write_card(out_dir: Path, card: dict[str, Any]) -> None:
    (out_dir / "card.json").write_text(json.dumps(card, indent=2) + "\n")


def train_mixed(
    data: PatchSet,
    out_dir: Path | None,
    *,
    spec: InputSpec,
    rule: CandidateRule,
    initial_model: Path | None = None,
    base: int = 12,
    epochs: int = 8,
    batch: int = 64,
    learning_rate: float = 5e-4,
    negative_ratio: int = 3,
    windowed_share: float = 0.7,
    seed: int = 0,
    time_budget_s: float | None = None,
    training_description: str = "",
    version: str = "3.0.0",
    progress: bool = True,
    hard_share: float = 0.0,
    augmentation: Augmentation | None = None,
    training_images: dict[str, Any] | None = None,
) -> tuple[KerasModel, dict[str, Any]]:
    """Fit the U-Net with its component head on HU patches and windowed-image patches together.

    Every epoch draws the positives (patches whose centre candidate holds stone, or with
    stone pixels) twice and ``negative_ratio`` times as many negatives, with about
    ``windowed_share`` of the draw from windowed images; each batch is changed by
    ``lab.augment`` (other windows, lone slices, noise) and rotated/flipped, then
    preprocessed. ``initial_model``: continue from its weights (its inputs must be ``spec``'s).

    ``hard_share`` > 0 mines hard examples: before each epoch the component head scores every
    patch as prediction sees it (one view), and that share of the negatives is drawn with a
    probability proportional to its score (the false stones of the moment), and that share of
    one of the positives' two draws by how wrong the head is on them (one minus the score where
    the centre candidate is the stone: the stones it misses); the rest are drawn uniformly.

    ``training_images``: the card's ``training.images``, the real images trained on by their pixels
    (``lab.trainingset.images_record``); the starting model's are kept beside them.
    """
    import keras

    from lab.augment import augment_patches, rescale_patches

    aug = augmentation or Augmentation()
    rng = np.random.default_rng(seed)
    n = len(data)
    windowed = data.windowed if data.windowed is not None else np.zeros(n, bool)
    centre = data.centre_stone if data.centre_stone is not None else data.has_stone
    positive = data.has_stone | centre
    groups = {w: np.nonzero(windowed == w)[0] for w in (True, False)}
    scores: np.ndarray | None = None

    def epoch_order() -> np.ndarray:
        picks = []
        for w, idx in groups.items():
            if idx.size == 0:
                continue
            pos, neg = idx[positive[idx]], idx[~positive[idx]]
            count = negative_ratio * max(1, len(pos))
            if scores is None or hard_share <= 0:
                take = rng.permutation(neg)[:count]
                again = pos
            else:
                hard = int(round(hard_share * count))
                take = np.concatenate([_draw(rng, neg, scores[neg], hard), rng.permutation(neg)[: count - hard]])
                # a positive patch whose centre candidate is not the stone is a negative for the head
                missed = np.where(centre[pos], 1.0 - scores[pos], scores[pos])
                again = np.concatenate([_draw(rng, pos, missed, int(round(hard_share * len(pos)))),
                                        rng.permutation(pos)[: len(pos) - int(round(hard_share * len(pos)))]])
            part = np.concatenate([pos, again, take])
            share = windowed_share if w else 1.0 - windowed_share
            size = int(share * (2 + negative_ratio) * max(1, int(positive.sum())))
            picks.append(rng.choice(part, size=min(size, 4 * len(part)), replace=size > len(part)))
        return rng.permutation(np.concatenate(picks))

    steps = max(1, len(epoch_order()) // batch)
    logger.info("patches %d (%d with stone; %d windowed), %d batches an epoch", n, int(positive.sum()),
                int(windowed.sum()), steps)

    class Batches(keras.utils.PyDataset):
        def __init__(self) -> None:
            super().__init__()
            self.order = epoch_order()

        def __len__(self) -> int:
            return max(1, len(self.order) // batch)

        def __getitem__(self, i: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
            idx = np.sort(self.order[i * batch:(i + 1) * batch])
            r = np.random.default_rng(rng.integers(1 << 31))
            raw = augment_patches(data.patches[idx], windowed[idx], spec, r, aug)
            x, y = rescale_patches(preprocess(raw, spec), data.targets[idx].astype(np.float32)[..., None], r, aug)
            x, y = _augment(x, y, r)
            return x.astype(np.float32), {"stone": y, "component": centre[idx].astype(np.float32)[:, None]}

        def on_epoch_end(self) -> None:
            nonlocal scores
            if hard_share > 0:
                scores = component_scores(model, data.patches, spec)
            self.order = epoch_order()

    keras.utils.set_random_seed(seed)
    if initial_model is not None:
        model = keras.saving.load_model(initial_model, compile=False)
    else:
        model = build_unet(base=base, channels=spec.channels, patch=spec.patch, classifier=True)
    if hard_share > 0:
        scores = component_scores(model, data.patches, spec)
        logger.info("hard examples: %d negatives score >= 0.5, %d stones < 0.5",
                    int((scores[~positive] >= 0.5).sum()), int((scores[centre] < 0.5).sum()))
    schedule: Any = learning_rate if time_budget_s is not None else \
        keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=epochs * steps)
    model.compile(optimizer=keras.optimizers.Adam(schedule),
                  loss={"stone": _loss(), "component": keras.losses.BinaryCrossentropy()},
                  metrics={"component": [keras.metrics.AUC(name="auc")]})
    callbacks: list[KerasCallback] = [_progress_bar(epochs, steps)] if progress else []
    if time_budget_s is not None:
        callbacks.append(_time_budget(time_budget_s, learning_rate))
    history = model.fit(Batches(), epochs=epochs, verbose=0 if progress else 2, callbacks=callbacks)
    card = make_card(model, base=base, epochs=len(history.history.get("loss", [])),
                     training_description=training_description,
                     history={k: [float(v) for v in vals] for k, vals in history.history.items()},
                     spec=spec, rule=rule, version=version)
    card["training"]["augmentation"] = json.loads(json.dumps(dataclasses.asdict(aug)))  # as card.json holds it
    card["training"]["draws"] = {"negative_ratio": negative_ratio, "windowed_share": windowed_share,
                                 "hard_share": hard_share}
    if training_images is not None:
        card["training"]["images"] = training_images
    if initial_model is not None:
        inherit_prediction_settings(card, initial_model)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        model.save(out_dir / "model.keras")
        write_card(out_dir, card)
    return model, card


# What a fine-tuned model keeps from the card of the model it started from: how it is predicted
# (test-time views and their gate; the preprocessing, with the resampling and mirroring its network
# inputs are read through, and why each was chosen), what its inputs are assumed to be, the family,
# the data's attribution and the component thresholds (to be chosen again on the validation side,
# which chosen_on says).
INHERITED_CARD_KEYS = ("test_time_views", "test_time_views_gate", "input_assumptions", "preprocessing_chosen_on",
                       "family")


def inherit_prediction_settings(card: dict[str, Any], initial_model: Path) -> None:
    """Carry the starting model's prediction settings into a fine-tuned model's ``card``.

    Without them the fine-tuned model would be predicted differently from the model it is compared
    with (one view instead of four, thresholds of 0.5), and any comparison of the two would measure
    the settings, not the training. ``initial_model``: the ``.keras`` file; its folder's card is read
    when there is one. The real images the starting model was trained on stay the fine-tuned model's
    (``lab.trainingset.inherited_record``)."""
    if not (initial_model.parent / CARD_NAME).is_file():
        return
    start = ModelCard.read(initial_model.parent).raw
    for key in INHERITED_CARD_KEYS:
        if key in start:
            card[key] = start[key]
    # The network's inputs are the starting model's (fine-tuning keeps them), so its preprocessing is too:
    # without it a fine-tuned 3.8.0 lost the resampling to 0.75 mm and the mirrored wide views of a crop.
    def inputs(c: dict[str, Any]) -> tuple[int, int, tuple[int, ...]]:
        spec = InputSpec.from_card(c.get("preprocessing", {}), c.get("input", {}).get("patch"))
        return spec.patch, spec.context, spec.wide

    if "preprocessing" in start and inputs(start) == inputs(card):
        card["preprocessing"] = start["preprocessing"]
    images = inherited_record(start, card["training"].get("images"))
    if images is not None:
        card["training"]["images"] = images
    attribution = start.get("training", {}).get("attribution")
    if attribution:
        card["training"]["attribution"] = attribution
    if "components" in start and "components" in card:
        where = f"{start.get('name', 'the starting model')} {start.get('version', '')}".strip()
        card["components"] = dict(start["components"],
                                  chosen_on=f"inherited from {where}; choose them again on the validation side")
