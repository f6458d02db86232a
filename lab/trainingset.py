"""Which real images a model was trained on, recorded in its card, so that an evaluation never scores them as held out.

``uronode train --images`` records, in the new model's card under ``training.images``, a digest of every
image it trained on (``pixel_digest``: the first 16 hex digits of SHA-256 over the image's pixels as
``lab.realimages`` reads them, ``LabelledImage.grey``), with the set's folder name, the side of the split
and the count::

    "images": {"set": "real-stones", "side": "train", "count": 751,
               "digest": "<how the digests are made>", "digests": ["0a1b...", ...]}

The digest is of the decoded pixels, not of the file or its name: a copy renamed, or saved again without
loss (a PNG of a JPEG's pixels), is still recognised; a resized or recompressed copy is not. A model
fine-tuned from one that has such a record keeps it: under ``earlier`` beside its own images, or as its
record where it trained on none (``inherited_record``). A card without a record (a model trained on
generated series only) trained on no real image.

``uronode evaluate --images DIR`` (``--split auto``, the default: ``auto_side``) scores the test side of
the split by examination (``lab.realimages.split_groups``) only when DIR holds one of the model's training
images (its own set, or a copy of part of it), else every image of DIR: another site's set is scored whole.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from lab.realimages import LabelledImage, read_image_set, split_groups

DIGEST_HOW = ("the first 16 hex digits of SHA-256 over the image's grey pixels as lab.realimages reads them "
              "(LabelledImage.grey, uint8): its shape as 'ROWSxCOLUMNS' (ASCII), then its bytes row by row")
DIGEST_LENGTH = 16


def pixel_digest(grey: np.ndarray) -> str:
    """An image's digest (``DIGEST_HOW``): the same for any copy with the same pixels, whatever its name."""
    pixels = np.ascontiguousarray(grey, dtype=np.uint8)
    h = hashlib.sha256("x".join(str(n) for n in pixels.shape).encode("ascii"))
    h.update(pixels.tobytes())
    return h.hexdigest()[:DIGEST_LENGTH]


def images_record(images: Sequence[LabelledImage], set_name: str, side: str) -> dict[str, Any]:
    """A card's ``training.images``: the digests (sorted, each once) of ``images``, the set's folder
    name (never a path: cards are shipped), the side of the split and how many images there were."""
    return {"set": set_name, "side": side, "count": len(images), "digest": DIGEST_HOW,
            "digests": sorted({pixel_digest(im.grey) for im in images})}


def set_record(folder: Path, side: str, classes: Sequence[int] | None = None) -> dict[str, Any]:
    """``images_record`` of one side ('train', 'validation', 'test' or 'all') of the split by examination of
    the image set at ``folder``, read as ``uronode train --images`` reads it."""
    images = read_image_set(folder, classes=classes)
    chosen = images if side == "all" else split_groups(images)[side]
    return images_record(chosen, Path(folder).resolve().name, side)


@dataclass(frozen=True)
class TrainedOn:
    """One set of training images a card records: its folder name, side, count and digests."""

    set: str
    side: str
    count: int
    digests: frozenset[str]
    via: str = ""
    """Where it came through a base model: 'the base model NAME VERSION'; '' for the model's own."""

    def describe(self) -> str:
        return f"{self.count} images of {self.set} ({self.side} side{', through ' + self.via if self.via else ''})"


class RecordError(ValueError):
    """A card's ``training.images`` that cannot be read."""


def _one(entry: object, where: str) -> TrainedOn:
    if not isinstance(entry, Mapping):
        raise RecordError(f"{where} is not a JSON object")
    digests = entry.get("digests")
    count = entry.get("count")
    if (not isinstance(digests, list) or not all(isinstance(d, str) for d in digests)
            or not isinstance(count, int) or isinstance(count, bool)):
        raise RecordError(f"{where} needs 'digests' (a list of strings) and 'count' (a whole number)")
    return TrainedOn(str(entry.get("set", "?")), str(entry.get("side", "?")), count, frozenset(digests),
                     str(entry.get("via", "")))


def trained_on(card: Mapping[str, Any]) -> list[TrainedOn]:
    """Every set of real images a card (``ModelCard.raw``) records its model was trained on: its own, its
    base models' (``earlier``) and, for a soup (``lab/soup.py``), each run's (``training.ingredients``);
    [] for a card without the record (trained on generated data only)."""
    training = card.get("training")
    if not isinstance(training, Mapping):
        return []
    out = []
    record = training.get("images")
    if record is not None:
        where = "the card's training.images"
        out.append(_one(record, where))
        earlier = record.get("earlier", [])
        if not isinstance(earlier, list):
            raise RecordError(f"{where}.earlier is not a list")
        out += [_one(e, f"{where}.earlier[{i}]") for i, e in enumerate(earlier)]
    ingredients = training.get("ingredients")
    for i, run in enumerate(ingredients if isinstance(ingredients, list) else []):
        if isinstance(run, Mapping) and isinstance(run.get("training"), Mapping):
            via = f"the soup's run {run.get('folder', i)}"
            out += [replace(t, via=t.via or via) for t in trained_on({"training": run["training"]})]
    return out


def inherited_record(base_card: Mapping[str, Any], own: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The ``training.images`` of a model fine-tuned from ``base_card``'s: ``own`` (the images it was
    fine-tuned on, or None) with the base's sets under ``earlier``, or, without ``own``, the base's first
    set with the rest under ``earlier``, each marked as come ``via`` the base; None where neither has any."""
    base = trained_on(base_card)
    if not base:
        return own
    name = f"the base model {base_card.get('name', '?')} {base_card.get('version', '?')}".rstrip()
    entries = [{"set": t.set, "side": t.side, "count": t.count, "via": t.via or name, "digests": sorted(t.digests)}
               for t in base]
    if own is None:
        first, *rest = entries
        return {**first, "digest": DIGEST_HOW, **({"earlier": rest} if rest else {})}
    return {**own, "earlier": [*own.get("earlier", []), *entries]}


@dataclass(frozen=True)
class Side:
    """Which images of a set ``--split auto`` scores, and why."""

    side: str
    """'test' (the held-out side of the split by examination) or 'all'."""
    why: str
    training_images: int
    """How many of the set's images are the model's training images (by their pixels)."""


def training_images_in(images: Sequence[LabelledImage], sets: Sequence[TrainedOn]) -> int:
    """How many of ``images`` have the pixels of one of the training images ``sets`` record."""
    known = frozenset().union(*(t.digests for t in sets)) if sets else frozenset()
    return sum(pixel_digest(im.grey) in known for im in images) if known else 0


def auto_side(images: Sequence[LabelledImage], sets: Sequence[TrainedOn]) -> Side:
    """``--split auto``: the test side of the split by examination where ``images`` hold one of the model's
    training images (``sets``, from ``trained_on``), else every image."""
    if not sets:
        return Side("all", "the model's card records no training images (trained on generated data only), so "
                           "the whole folder is held out", 0)
    found = training_images_in(images, sets)
    recorded = "; ".join(t.describe() for t in sets)
    if not found:
        return Side("all", f"none of its images is one of the model's training images ({recorded}), so the "
                           "whole folder is held out", 0)
    return Side("test", f"{found} of its images are the model's training images ({recorded}), so only the "
                        "test side of the split by examination is held out", found)
