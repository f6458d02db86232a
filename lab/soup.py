"""A model soup: the uniform average of the weights of runs fine-tuned from one model (``uronode soup``).

Runs fine-tuned from the same starting model with the same recipe and different sampling seeds land in
one basin of the loss; the average of their weights is one network that costs what each run costs to
predict and, in the field's measurements (Wortsman et al., "Model soups", ICML 2022), is as good as
the best run on its own data and better under a change of distribution. Every variable is averaged,
the batch-norm statistics included; the runs must share the architecture (checked, variable by
variable) and read their patches alike (the cards' input and preprocessing). The new card is the first run's, with a new version, the runs' trainings listed and its
thresholds to be chosen again (``uronode choose``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from inference.errors import ModelError
from inference.runtime import find_model, load_model
from lab.train import write_card


def average_weights(weight_sets: Sequence[Sequence[np.ndarray]]) -> list[np.ndarray]:
    """The element-wise mean of several lists of weight arrays of the same shapes (in each array's dtype)."""
    if not weight_sets:
        raise ModelError("a soup needs at least one model")
    first = weight_sets[0]
    for n, weights in enumerate(weight_sets[1:], start=2):
        if len(weights) != len(first):
            raise ModelError(f"model {n} has {len(weights)} weight arrays, model 1 has {len(first)}")
        for i, (a, b) in enumerate(zip(first, weights, strict=True)):
            if a.shape != b.shape:
                raise ModelError(f"weight array {i}: model {n} has shape {b.shape}, model 1 {a.shape}")
    return [np.mean([np.asarray(w[i], np.float64) for w in weight_sets], axis=0).astype(first[i].dtype)
            for i in range(len(first))]


def make_soup(models: Sequence[str | Path], out: Path, *, version: str) -> dict[str, Any]:
    """Write the soup of ``models`` (folders, or names ``inference.runtime.find_model`` finds) into ``out``; returns its card."""
    if len(models) < 2:
        raise ModelError("a soup needs at least two models")
    if out.exists() and not out.is_dir():
        raise ModelError(f"{out} is a file, not a folder")
    sources = [find_model(m) for m in models]
    if (out / "card.json").exists() or any(out.resolve() == folder.resolve() for folder in sources):
        raise ModelError(f"{out} already holds a model; a soup is written into a new folder")
    loaded = [load_model(m) for m in models]
    base = loaded[0]
    for m in loaded[1:]:
        for part in ("input", "preprocessing"):
            if getattr(m.card, part) != getattr(base.card, part):
                raise ModelError(f"{m.folder.name} and {base.folder.name} read their patches differently "
                                 f"(the cards' {part}); a soup averages one network")
    soup = average_weights([m.keras_model.get_weights() for m in loaded])
    base.keras_model.set_weights(soup)
    out.mkdir(parents=True, exist_ok=True)
    model_file = base.card.files.get("model", "model.keras")
    base.keras_model.save(out / model_file)
    card = dict(base.card.raw)
    card["version"] = version
    card["files"] = {"model": model_file}
    trainings = [m.card.raw.get("training") for m in loaded]
    attribution = next((t["attribution"] for t in trainings if isinstance(t, dict) and "attribution" in t), None)
    card["training"] = {
        "soup": (f"uniform average of the weights of {len(models)} runs (every variable, batch-norm statistics "
                 "included; uronode soup)"),
        "ingredients": [{"folder": m.folder.name, "version": m.card.version, "training": training}
                        for m, training in zip(loaded, trainings, strict=True)],
        **({"attribution": attribution} if attribution is not None else {}),
    }
    card["metrics"] = {"note": "not evaluated: choose its thresholds, then run uronode evaluate"}
    components = dict(card.get("components", {}))
    components["chosen_on"] = (f"inherited from {base.folder.name}; choose them again on the validation side "
                               "(uronode choose --write-card)")
    card["components"] = components
    write_card(out, card)
    return card
