"""Stage 2 of the cascade: a small 2.5D U-Net that segments stones in candidate patches.

Input: ``PATCH`` x ``PATCH`` pixels at the series' own in-plane spacing (no
resampling), channels from ``preprocess``: the candidate's slice and its two
neighbours in a stone window, plus the candidate's slice in a soft-tissue window
(the context that tells a ureter from a vein). Output: the probability that each
pixel of the centre slice is stone.
"""

from __future__ import annotations

import numpy as np

PATCH = 64
CONTEXT = 1
"""Neighbouring slices on each side of the candidate's slice."""
STONE_WINDOW = (-200.0, 1800.0)
SOFT_WINDOW = (-160.0, 240.0)
CHANNELS = 2 * CONTEXT + 2

PREPROCESSING = {
    "patch": PATCH,
    "context_slices": CONTEXT,
    "resampling": "none: the series' own pixel spacing (trained on 0.6-0.85 mm)",
    "channels": [
        "slices k-1, k, k+1: clip(HU, -200, 1800), scaled linearly to [-1, 1]",
        "slice k: clip(HU, -160, 240), scaled linearly to [-1, 1]",
    ],
}


def _scale(hu: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    lo, hi = window
    return (np.clip(hu, lo, hi) - (lo + hi) / 2) / ((hi - lo) / 2)


def preprocess(patches: np.ndarray) -> np.ndarray:
    """(n, PATCH, PATCH, 2 * CONTEXT + 1) HU -> (n, PATCH, PATCH, CHANNELS) float32 network input."""
    stone = _scale(patches, STONE_WINDOW)
    soft = _scale(patches[..., CONTEXT:CONTEXT + 1], SOFT_WINDOW)
    return np.concatenate([stone, soft], axis=-1).astype(np.float32)


def build_unet(base: int = 16, levels: int = 3, channels: int = CHANNELS, patch: int = PATCH):
    """A U-Net with ``levels`` poolings and ``base`` filters at full resolution (Keras functional)."""
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
    x = layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
    for skip in reversed(skips):
        filters //= 2
        x = layers.UpSampling2D()(x)
        x = layers.Concatenate()([x, skip])
        x = layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
    outputs = layers.Conv2D(1, 1, activation="sigmoid", name="stone")(x)
    return keras.Model(inputs, outputs, name="stone_patch_unet")


def flops_per_patch(model) -> float:
    """Multiply-adds x 2 of the convolutions of ``model`` for one patch."""
    total = 0.0
    for layer in model.layers:
        if layer.__class__.__name__ == "Conv2D":
            kh, kw = layer.kernel_size
            cin = layer.input.shape[-1]
            _, h, w, cout = layer.output.shape
            total += 2.0 * kh * kw * cin * cout * h * w
    return total
