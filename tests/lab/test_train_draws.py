"""An epoch's draw (``uronode train --negative-ratio N --windowed-share S``): its size follows the
options, the card records them, and values that cannot make a draw are refused."""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path

import numpy as np
import pytest

from inference.candidates import DEFAULT_RULE
from inference.network import InputSpec
from lab.dataset import PatchSet
from lab.train import train_mixed
from tests.lab.test_hard_examples import _tiny_set
from uronode.app.cli import build_parser

SPEC = InputSpec(context=1, wide=(), patch=32)


def _mixed_set() -> PatchSet:
    """240 patches, a stone in every eighth, a third of them from windowed images: positives on both
    sides and more negatives on each than any draw below takes, so no side's draw is capped."""
    data = _tiny_set(SPEC, n=240)
    stone = np.arange(240) % 8 == 0
    targets = np.where(stone[:, None, None], data.targets.max(axis=0, keepdims=True), 0).astype(np.uint8)
    patches = data.patches.copy()
    patches[data.has_stone & ~stone] = data.patches[1]  # the tiny set's other stones become plain patches
    return dataclasses.replace(data, patches=patches, targets=targets, has_stone=stone.copy(),
                               centre_stone=stone.copy(), windowed=np.arange(240) % 3 == 0)


def _batches_an_epoch(caplog: pytest.LogCaptureFixture, tmp_path: Path, **draws: float) -> tuple[int, dict]:
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="lab.train"):
        _, card = train_mixed(_mixed_set(), tmp_path / "m", spec=SPEC, rule=DEFAULT_RULE, base=4,
                              epochs=1, batch=8, progress=False, **draws)  # type: ignore[arg-type]
    said = [m for m in caplog.messages if "batches an epoch" in m]
    assert said, caplog.messages
    found = re.search(r"(\d+) batches an epoch", said[-1])
    assert found is not None
    return int(found.group(1)), card


def test_more_negatives_make_a_longer_epoch_and_the_card_says_so(caplog: pytest.LogCaptureFixture,
                                                                  tmp_path: Path) -> None:
    usual, card = _batches_an_epoch(caplog, tmp_path)
    assert card["training"]["draws"] == {"negative_ratio": 3, "windowed_share": 0.7, "hard_share": 0.0}
    more, card = _batches_an_epoch(caplog, tmp_path, negative_ratio=5, windowed_share=0.5)
    assert card["training"]["draws"] == {"negative_ratio": 5, "windowed_share": 0.5, "hard_share": 0.0}
    # every positive twice and N negatives each: 30 positives, (2 + N) x 30 patches, batches of 8
    assert (usual, more) == ((2 + 3) * 30 // 8, (2 + 5) * 30 // 8)


@pytest.mark.parametrize("argv", [["--negative-ratio", "0"], ["--windowed-share", "0"],
                                  ["--windowed-share", "1.5"]])
def test_a_draw_that_cannot_be_made_is_refused_before_anything_is_read(
        argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    args = parser.parse_args(["train", "--images", str(tmp_path / "nowhere"), "--out", str(tmp_path / "m"), *argv])
    assert args.func(args) == 2
    err = capsys.readouterr().err
    assert "--negative-ratio must be 1 or more" in err
    assert not (tmp_path / "m").exists()
