"""The pixel-size augmentation (``uronode train --rescale``): a patch and its mask zoomed alike."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from inference.candidates import DEFAULT_RULE
from inference.network import InputSpec
from lab.augment import Augmentation, rescale_patches
from lab.train import train_mixed
from tests.lab.test_hard_examples import _tiny_set

SIZE = 32


def _patches(n: int) -> tuple[np.ndarray, np.ndarray]:
    x = np.zeros((n, SIZE, SIZE, 3), np.float32)
    y = np.zeros((n, SIZE, SIZE, 1), np.float32)
    x[:, 13:19, 13:19, :] = 1.0  # a 6-pixel stone in the middle, on every channel
    y[:, 13:19, 13:19, 0] = 1.0
    x[:, :, :2, :] = -1.0  # an edge at the left, to see the border repeated
    return x, y


def test_off_by_default_draws_nothing() -> None:
    x, y = _patches(4)
    rng = np.random.default_rng(0)
    out = rescale_patches(x, y, rng)
    assert out[0] is x and out[1] is y
    assert rng.random() == np.random.default_rng(0).random()  # the generator was not used


def test_the_stone_and_its_mask_grow_and_shrink_together_about_the_centre() -> None:
    x, y = _patches(200)
    aug = Augmentation(rescale=1.0)
    zx, zy = rescale_patches(x, y, np.random.default_rng(3), aug)
    assert zx.shape == x.shape and zy.shape == y.shape
    assert np.array_equal(x, _patches(200)[0])  # the input is not changed in place
    areas = zy[..., 0].sum(axis=(1, 2))
    stone = (zx[..., 0] >= 0.5).sum(axis=(1, 2))
    assert areas.min() >= 16 and areas.max() <= 64  # 36 pixels zoomed by 0.8-1.25 (area 0.64-1.56x)
    assert areas.min() < 30 and areas.max() > 42  # both ways occur in 200 draws
    assert np.abs(stone - areas).max() <= 8  # the mask follows the image
    rows, cols = np.nonzero(zy[..., 0].sum(axis=0))
    assert abs(rows.mean() - 15.5) < 0.5 and abs(cols.mean() - 15.5) < 0.5  # about the centre
    for c in range(1, 3):
        assert np.array_equal(zx[..., c], zx[..., 0])  # every channel alike
    shrunk = areas < 36
    assert shrunk.any()
    assert (zx[shrunk][:, :, 0, 0] == -1.0).all()  # where a patch shrinks, its edge repeats: never a zero border


def test_a_share_of_the_patches() -> None:
    x, y = _patches(400)
    zx, _ = rescale_patches(x, y, np.random.default_rng(4), Augmentation(rescale=0.25))
    changed = np.any(zx != x, axis=(1, 2, 3)).sum()
    assert 60 <= changed <= 140


def test_a_rescaled_epoch_trains_and_the_card_says_so(tmp_path: Path) -> None:
    spec = InputSpec(context=1, wide=(), patch=32)
    _, card = train_mixed(_tiny_set(spec), tmp_path / "m", spec=spec, rule=DEFAULT_RULE, base=4, epochs=1,
                          batch=16, progress=False, augmentation=Augmentation(rescale=0.5))
    assert (tmp_path / "m" / "model.keras").is_file()
    assert card["training"]["augmentation"]["rescale"] == 0.5
    assert card["training"]["augmentation"]["rescale_range"] == [0.8, 1.25]
