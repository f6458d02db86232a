"""Stage 2 of the cascade: a small 2.5D U-Net that segments stones in candidate patches.

Input: ``PATCH`` x ``PATCH`` pixels at the series' own in-plane spacing (no
resampling), channels from ``preprocess``: the candidate's slice and ``context``
neighbours on each side in a stone window, the candidate's slice in a
soft-tissue window (the context that tells a ureter from a vein), and, for
models that have them, wider views of the candidate's slice (``wide`` factors:
a window ``factor`` times larger, block-averaged down to ``PATCH``) in a window
from air to soft tissue, where gas and faeces around a bowel pellet show.

Output: the probability that each pixel of the centre slice is stone and, for
models with a second head, the probability that the candidate component at
the patch centre is (or holds) a stone: the component-level second look.

``InputSpec`` says which inputs a model takes; it is read from and written to
the card's ``preprocessing``, so older models (one neighbour each side, no wide
views, no second head) keep working.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, TypeAlias

import numpy as np

from inference.candidates import cut_patches
from inference.errors import ModelError

KerasModel: TypeAlias = Any
"""A ``keras.Model``. Keras ships no type information, so to mypy it is ``Any``; the alias says what it holds."""

PATCH = 64
CONTEXT = 1
"""Neighbouring slices on each side of the candidate's slice (the first model's)."""
STONE_WINDOW = (-200.0, 1800.0)
SOFT_WINDOW = (-160.0, 240.0)
WIDE_WINDOW = (-1000.0, 400.0)
CHANNELS = 2 * CONTEXT + 2


@dataclass(frozen=True)
class InputSpec:
    """What the network is fed: patch size, slices of context, wide views."""

    patch: int = PATCH
    context: int = CONTEXT
    wide: tuple[int, ...] = ()
    mirror_below: int = 0
    """An image with fewer rows or columns than this (pixels) is a tight crop: beyond its edges it is
    mirrored, not read as air (0: always air). Read with air around, most of every wide view of such an
    image is air, which the network never met around a stone (every image it learned from is at least
    320 pixels a side): a stone 0.98 sure in a real image scores 0-0.05 in an 80 x 80 crop of it."""

    mirror_near: bool = True
    """With ``mirror_below``: the near patch (the slices) is mirrored too; False: only the wide views are,
    and the near patch reads air beyond the edges as a whole image's does."""

    context_step_mm: float = 0.0
    """The context slices' distance the network learned (0: every neighbouring slice, whatever the spacing).
    A series whose slices lie closer is read with every ``stride``-th slice as context (``context_stride``),
    so that a 0.625 mm series' context spans what a 1.25 mm series' does. Prediction only: training cuts
    neighbours (``lab.dataset``), and no shipped card names it (docs/model.md, "Thin series")."""

    def context_stride(self, slice_spacing_mm: float) -> int:
        """Slices between the context slices ``cut_inputs`` reads for a series of this spacing (1: neighbours)."""
        if self.context_step_mm <= 0 or slice_spacing_mm <= 0:
            return 1
        return max(1, int(self.context_step_mm / slice_spacing_mm + 0.5))

    def outside(self, rows: int, columns: int) -> str:
        """How ``cut_inputs`` reads beyond the edges of an image of ``rows`` x ``columns`` (its wide views)."""
        return "mirror" if min(rows, columns) < self.mirror_below else "air"

    @property
    def raw_channels(self) -> int:
        """Channels of ``cut_inputs``' HU array: the slices, then one per wide view."""
        return 2 * self.context + 1 + len(self.wide)

    @property
    def channels(self) -> int:
        """Channels of the network's input."""
        return 2 * self.context + 2 + len(self.wide)

    @classmethod
    def from_card(cls, preprocessing: dict[str, Any], patch: int | None = None) -> InputSpec:
        step = preprocessing.get("context_step_mm", 0.0)
        try:
            step = float(step)
        except (TypeError, ValueError):
            step = float("nan")
        if not (math.isfinite(step) and step >= 0):
            raise ModelError(f"model card preprocessing.context_step_mm {preprocessing.get('context_step_mm')!r}"
                             " is not a distance in mm (0 or more)")
        return cls(patch=int(patch or preprocessing.get("patch", PATCH)),
                   context=int(preprocessing.get("context_slices", CONTEXT)),
                   wide=tuple(int(f) for f in preprocessing.get("wide_factors", ())),
                   mirror_below=int(preprocessing.get("mirror_below_px", 0)),
                   mirror_near=bool(preprocessing.get("mirror_near", True)),
                   context_step_mm=step)

    def card(self) -> dict[str, Any]:
        c = self.context
        channels = [
            f"slices k-{c}..k+{c}: clip(HU, -200, 1800), scaled linearly to [-1, 1]",
            "slice k: clip(HU, -160, 240), scaled linearly to [-1, 1]",
        ]
        channels += [f"slice k, a {f * self.patch} x {f * self.patch} window averaged over {f} x {f} blocks: "
                     "clip(HU, -1000, 400), scaled linearly to [-1, 1]" for f in self.wide]
        return {
            "patch": self.patch,
            "context_slices": self.context,
            "wide_factors": list(self.wide),
            "resampling": "none: the series' own pixel spacing (trained on 0.6-0.85 mm)",
            "channels": channels,
            "mirror_below_px": self.mirror_below,
            "mirror_near": self.mirror_near,
        }


LEGACY_SPEC = InputSpec()
"""The first models' input (1.x): one slice of context each side, no wide view."""
CASCADE_SPEC = InputSpec(context=2, wide=(2, 4))
"""The cascade's input (models 2.1.0 and later): two slices each side and two wide views. What a
new network is trained with when no card says otherwise."""

PREPROCESSING = LEGACY_SPEC.card()


def _scale(hu: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    lo, hi = window
    return (np.clip(hu, lo, hi) - (lo + hi) / 2) / ((hi - lo) / 2)


def cut_inputs(hu: np.ndarray, centres: np.ndarray, spec: InputSpec = LEGACY_SPEC, stride: int = 1) -> np.ndarray:
    """float32 (n, patch, patch, spec.raw_channels) HU around each (slice, row, column) centre; the context
    slices ``stride`` slices apart (``InputSpec.context_stride``)."""
    outside = spec.outside(hu.shape[1], hu.shape[2])
    near = cut_patches(hu, centres, spec.patch, spec.context, outside if spec.mirror_near else "air", stride)
    if not spec.wide:
        return near
    parts = [near]
    n = centres.shape[0]
    for f in spec.wide:
        big = cut_patches(hu, centres, spec.patch * f, 0, outside)[..., 0]
        parts.append(big.reshape(n, spec.patch, f, spec.patch, f).mean(axis=(2, 4))[..., None])
    return np.concatenate(parts, axis=-1)


def preprocess(patches: np.ndarray, spec: InputSpec = LEGACY_SPEC) -> np.ndarray:
    """``cut_inputs``' HU (n, patch, patch, raw_channels) -> (n, patch, patch, channels) float32 network input."""
    depth = 2 * spec.context + 1
    stone = _scale(patches[..., :depth], STONE_WINDOW)
    soft = _scale(patches[..., spec.context:spec.context + 1], SOFT_WINDOW)
    parts = [stone, soft]
    if spec.wide:
        parts.append(_scale(patches[..., depth:], WIDE_WINDOW))
    return np.concatenate(parts, axis=-1).astype(np.float32)


def build_unet(base: int = 16, levels: int = 3, channels: int = CHANNELS, patch: int = PATCH,
               classifier: bool = False) -> KerasModel:
    """A U-Net with ``levels`` poolings and ``base`` filters at full resolution (Keras functional).

    With ``classifier``, a second output ``component``: from the bottleneck's
    centre (the candidate) and its global average and maximum (the surroundings),
    the probability that the centre candidate is a stone.
    """
    import keras
    from keras import layers

    inputs = keras.Input((patch, patch, channels), name="patch")
    x = inputs
    skips = []
    filters = base
    for _ in range(levels):
        x = layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        skips.append(x)
        x = layers.MaxPooling2D()(x)
        filters *= 2
    x = layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
    bottom = layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
    x = bottom
    for skip in reversed(skips):
        filters //= 2
        x = layers.UpSampling2D()(x)
        x = layers.Concatenate()([x, skip])
        x = layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
    outputs = layers.Conv2D(1, 1, activation="sigmoid", name="stone")(x)
    if not classifier:
        return keras.Model(inputs, outputs, name="stone_patch_unet")
    side = patch // 2**levels
    crop = max(0, side // 2 - 1)
    centre = layers.Flatten()(layers.Cropping2D(crop)(bottom))
    # the full-resolution decoder features at the centre pixel: where a 1-2 pixel stone shows
    fine = layers.Flatten()(layers.Cropping2D(patch // 2 - 2)(x))
    around = layers.Concatenate()([layers.GlobalAveragePooling2D()(bottom), layers.GlobalMaxPooling2D()(bottom),
                                   centre, fine])
    h = layers.Dense(64, activation="relu")(around)
    h = layers.Dropout(0.2)(h)
    component = layers.Dense(1, activation="sigmoid", name="component")(h)
    return keras.Model(inputs, [outputs, component], name="stone_patch_unet_cls")


def flops_per_patch(model: KerasModel) -> float:
    """Multiply-adds x 2 of the convolutions and dense layers of ``model`` for one patch."""
    total = 0.0
    for layer in model.layers:
        name = layer.__class__.__name__
        if name == "Conv2D":
            kh, kw = layer.kernel_size
            cin = layer.input.shape[-1]
            _, h, w, cout = layer.output.shape
            total += 2.0 * kh * kw * cin * cout * h * w
        elif name == "Dense":
            total += 2.0 * layer.input.shape[-1] * layer.units
    return total
