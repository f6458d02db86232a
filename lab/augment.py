"""Training-time changes to HU patches that the node's inputs make for real.

The node sees two kinds of input: DICOM series in true Hounsfield units, and
8-bit images in a display window nobody recorded, read back as HU through the
assumed window (``lab.realimages``: stones and bone clipped alike near
+240 HU). One model takes both, so it is trained on each as the other:

- ``rewindow_patches``: a HU patch as it would look once shown in another
  plausible window (level 0..80, width 250..600 HU) and read back through the
  assumed one (clipped, quantised to 256 grey levels);
- ``regrey_patches``: an already windowed patch as if its unknown window had
  been another one (grey levels stretched and shifted, clipped again);
- ``drop_neighbours``: the neighbouring slices replaced by the centre slice, as a
  lone slice (an uploaded single file) gives them (``cut_patches`` repeats the
  edge slice);
- ``add_noise``: white noise of 0-20 HU SD, as low-dose series carry;
- ``blur_patches`` (off unless ``Augmentation.blur`` > 0): the slices blurred
  in-plane by a Gaussian of 0.4-1.2 pixels, as a softer reconstruction kernel,
  thicker slices or an image resized on export give them (other hospitals'
  images are rarely as sharp as the training ones);
- ``coarsen_patches`` (off unless ``Augmentation.coarse`` > 0): the slices as a
  coarser acquisition gives them once resampled to the model's pixels: averaged
  over blocks of 2-4 pixels (1.5-3 mm at 0.75 mm), given noise of 0-15 HU at
  that coarse grain, and interpolated back (linear). A coarse series' noise
  grains are then a few millimetres wide, stone-sized; the network sees them
  with their labels unchanged (a stone stays a stone, fainter when small).

- ``rescale_patches`` (off unless ``Augmentation.rescale`` > 0): the patch and its
  stone mask zoomed about their centre by 0.8-1.25, as a series of other pixels
  (0.6-0.94 mm where the model reads 0.75) shows its anatomy and its stones:
  every channel alike, the wide views too, edges repeated where the patch
  shrinks. It runs on the network's inputs and targets, after ``preprocess``.

The others work on ``cut_inputs``' raw channels (the 2 x context + 1 slices, then the
wide views) before ``preprocess``.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from inference.network import InputSpec
from lab.realimages import ASSUMED_WINDOW

LEVELS = (0.0, 80.0)
WIDTHS = (250.0, 600.0)


@dataclass(frozen=True)
class Augmentation:
    """Probabilities of each change (per patch)."""

    rewindow: float = 0.4
    """HU patches shown in another window and read back as the assumed one."""
    regrey: float = 0.7
    """Windowed patches: another unknown window."""
    lone: float = 0.3
    """HU patches: neighbours dropped (a lone slice)."""
    noise: float = 0.2
    noise_max_hu: float = 20.0
    blur: float = 0.0
    """Any patch: its slices blurred in-plane (0: never, the default)."""
    blur_sigma_px: tuple[float, float] = (0.4, 1.2)
    coarse: float = 0.0
    """Any patch: its slices as a coarser acquisition resampled (0: never, the default)."""
    coarse_block_px: tuple[int, int] = (2, 4)
    coarse_noise_hu: float = 15.0
    rescale: float = 0.0
    """Any patch, with its mask: zoomed about its centre (0: never, the default)."""
    rescale_range: tuple[float, float] = (0.8, 1.25)


def _grey(hu: np.ndarray) -> np.ndarray:
    level, width = ASSUMED_WINDOW
    return (hu - (level - width / 2)) * (255.0 / width)


def _hu(grey: np.ndarray) -> np.ndarray:
    level, width = ASSUMED_WINDOW
    return grey * (width / 255.0) + (level - width / 2)


def rewindow_patches(hu: np.ndarray, levels: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """(n, ...) HU patches shown in window (levels[i], widths[i]) and read back through the assumed one."""
    shape = (-1,) + (1,) * (hu.ndim - 1)
    lo = (levels - widths / 2).reshape(shape)
    grey = np.clip(np.round((hu - lo) * (255.0 / widths.reshape(shape))), 0, 255)
    return _hu(grey).astype(np.float32)


def regrey_patches(hu: np.ndarray, gains: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Windowed patches as if seen in another window: grey' = clip(gain * grey + offset)."""
    shape = (-1,) + (1,) * (hu.ndim - 1)
    grey = np.clip(np.round(gains.reshape(shape) * _grey(hu) + offsets.reshape(shape)), 0, 255)
    return _hu(grey).astype(np.float32)


def drop_neighbours(hu: np.ndarray, spec: InputSpec) -> np.ndarray:
    """Every slice channel replaced by the centre one (a lone slice); wide views kept."""
    out = hu.copy()
    depth = 2 * spec.context + 1
    out[..., :depth] = hu[..., spec.context:spec.context + 1]
    return out


def blur_patches(hu: np.ndarray, sigmas: np.ndarray, spec: InputSpec) -> np.ndarray:
    """Each patch's slices (not the wide views, already block means) blurred in-plane by its own SD (pixels)."""
    from scipy import ndimage

    out = hu.copy()
    depth = 2 * spec.context + 1
    for i, sigma in enumerate(sigmas):
        out[i, ..., :depth] = ndimage.gaussian_filter(hu[i, ..., :depth], sigma=(float(sigma), float(sigma), 0.0))
    return out


def coarsen_patches(hu: np.ndarray, blocks: np.ndarray, noise_sd: np.ndarray, spec: InputSpec,
                    rng: np.random.Generator) -> np.ndarray:
    """Each patch's slices averaged over blocks[i] x blocks[i] pixels, given white noise of noise_sd[i] HU at
    that grain (each slice its own, a lone slice's copies the same), and interpolated back (linear); the wide views are kept."""

    out = hu.copy()
    depth = 2 * spec.context + 1
    rows, cols = hu.shape[1:3]
    for i, (block, sd) in enumerate(zip(blocks, noise_sd, strict=True)):
        size = (max(1, round(cols / block)), max(1, round(rows / block)))
        lone = all(np.array_equal(hu[i, ..., 0], hu[i, ..., c]) for c in range(1, depth))
        grain = rng.standard_normal((size[1], size[0], 1 if lone else depth)).astype(np.float32) * np.float32(sd)
        for c in range(depth):  # a lone slice's repeated neighbours get the same grain: they stay one slice
            small = cv2.resize(np.ascontiguousarray(hu[i, ..., c]), size, interpolation=cv2.INTER_AREA)
            out[i, ..., c] = cv2.resize(small + grain[..., 0 if lone else c], (cols, rows),
                                        interpolation=cv2.INTER_LINEAR)
    return out


def augment_patches(hu: np.ndarray, windowed: np.ndarray, spec: InputSpec, rng: np.random.Generator,
                    aug: Augmentation = Augmentation()) -> np.ndarray:
    """float32 raw HU patches (n, patch, patch, raw channels), each changed at random (see the module)."""
    out = hu.astype(np.float32, copy=True)
    n = out.shape[0]
    windowed = np.asarray(windowed, dtype=bool)
    native = ~windowed
    if aug.coarse > 0:  # first, as the acquisition comes before everything else; no draw when off
        coarse = np.asarray(rng.random(n) < aug.coarse)
        if coarse.any():
            k = int(coarse.sum())
            out[coarse] = coarsen_patches(out[coarse], rng.integers(aug.coarse_block_px[0], aug.coarse_block_px[1] + 1, k),
                                          rng.uniform(0, aug.coarse_noise_hu, k).astype(np.float32), spec, rng)
    noisy = native & (rng.random(n) < aug.noise)
    if noisy.any():
        sd = rng.uniform(0, aug.noise_max_hu, int(noisy.sum())).astype(np.float32)
        out[noisy] += rng.standard_normal(out[noisy].shape).astype(np.float32) * sd[:, None, None, None]
    lone = native & (rng.random(n) < aug.lone)
    if lone.any():
        out[lone] = drop_neighbours(out[lone], spec)
    rew = native & (rng.random(n) < aug.rewindow)
    if rew.any():
        k = int(rew.sum())
        out[rew] = rewindow_patches(out[rew], rng.uniform(*LEVELS, k), rng.uniform(*WIDTHS, k))
    reg = windowed & (rng.random(n) < aug.regrey)
    if reg.any():
        k = int(reg.sum())
        out[reg] = regrey_patches(out[reg], np.exp(rng.uniform(np.log(0.75), np.log(1.35), k)),
                                  rng.uniform(-25, 25, k))
    # no draw when off: the rotations drawn after this from the same generator stay as they were
    blurred = np.zeros(n, bool)
    if aug.blur > 0:
        blurred = np.asarray(rng.random(n) < aug.blur)
    if blurred.any():
        out[blurred] = blur_patches(out[blurred], rng.uniform(*aug.blur_sigma_px, int(blurred.sum())), spec)
    return out


def rescale_patches(x: np.ndarray, y: np.ndarray, rng: np.random.Generator,
                    aug: Augmentation = Augmentation()) -> tuple[np.ndarray, np.ndarray]:
    """Network inputs (n, patch, patch, channels) and masks (n, patch, patch, 1), a share ``aug.rescale``
    of them zoomed about the centre by a factor drawn log-uniformly in ``aug.rescale_range`` (inputs
    linear, masks linear and then >= 0.5). No draw when off."""
    if aug.rescale <= 0:
        return x, y
    chosen = np.nonzero(np.asarray(rng.random(x.shape[0]) < aug.rescale))[0]
    if not chosen.size:
        return x, y
    factors = np.exp(rng.uniform(np.log(aug.rescale_range[0]), np.log(aug.rescale_range[1]), chosen.size))
    x, y = x.copy(), y.copy()
    size = x.shape[1]
    centre = (size - 1) / 2.0
    for i, f in zip(chosen, factors, strict=True):
        m = np.array([[f, 0.0, centre * (1 - f)], [0.0, f, centre * (1 - f)]], np.float32)
        for c in range(x.shape[3]):
            x[i, :, :, c] = cv2.warpAffine(x[i, :, :, c], m, (size, size), flags=cv2.INTER_LINEAR,
                                           borderMode=cv2.BORDER_REPLICATE)
        zoomed = cv2.warpAffine(y[i, :, :, 0].astype(np.float32), m, (size, size), flags=cv2.INTER_LINEAR,
                                borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
        y[i, :, :, 0] = (zoomed >= 0.5).astype(y.dtype)
    return x, y
