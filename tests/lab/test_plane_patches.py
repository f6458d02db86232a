"""Training patches from a generated phantom's coronal and sagittal planes (lab.dataset.patches_from_planes)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from inference.network import InputSpec
from inference.runtime import ModelCard, resolve_model_dir
from lab.dataset import patches_from_planes, stone_planes
from lab.synth import PLANES, generate_phantom
from uronode.app.cli import build_parser


@pytest.fixture(scope="module")
def phantom():  # type: ignore[no-untyped-def]
    return generate_phantom(70_003, n_stones=3, small_stone_fraction=0.0)  # every stone 3 mm or more


def test_every_stone_gets_its_centre_plane_of_each_kind_and_the_free_ones_hold_no_stone(phantom) -> None:  # type: ignore[no-untyped-def]
    labels = phantom.stone_labels
    chosen = stone_planes(phantom, 2, np.random.default_rng(0))
    assert len(chosen) == len(set(chosen))
    for stone in (int(v) for v in np.unique(labels) if v):
        for plane, axis in PLANES.items():
            centre = int(round(float(np.nonzero(labels == stone)[axis].mean())))
            assert (plane, centre) in chosen
            assert (labels == stone).take(centre, axis=axis).any()
    centres = {(p, int(round(float(np.nonzero(labels == v)[a].mean())))) for v in np.unique(labels) if v
               for p, a in PLANES.items()}
    free = [c for c in chosen if c not in centres]
    assert sorted(p for p, _ in free) == ["coronal", "coronal", "sagittal", "sagittal"]
    for plane, index in free:
        near = np.take(labels, range(max(0, index - 3), index + 4), axis=PLANES[plane], mode="clip")
        assert not near.any()


def test_plane_patches_are_lone_images_with_each_stone_at_a_centre(phantom) -> None:  # type: ignore[no-untyped-def]
    card = ModelCard.read(resolve_model_dir("default"))
    spec = InputSpec.from_card(card.preprocessing, card.input.get("patch"))
    data = patches_from_planes(phantom, spec=spec, free=1)
    assert data.centre_stone is not None and data.contrast is not None
    assert len(data) == len(data.targets) == len(data.has_stone)
    # each stone is a candidate centre in at least one of its two planes, and nothing but stones is
    # a stone there: every patch whose centre is a stone has stone pixels
    assert int(data.centre_stone.sum()) >= len(phantom.stones)  # 2 planes a stone, but neighbours can share one
    assert data.has_stone[data.centre_stone].all()
    assert not data.has_stone.all()  # the planes hold bone, vessels and the stone-free planes
    # a lone image: the neighbour slices are the centre slice repeated
    slices = data.patches[..., : 2 * spec.context + 1]
    assert (slices == slices[..., spec.context: spec.context + 1]).all()


@pytest.mark.parametrize(("argv", "says"), [(["--planes", "--phantoms", "0"], "give --phantoms too"),
                                           (["--planes", "-1", "--phantoms", "2"], "0 or more (got -1)")])
def test_planes_that_cannot_be_cut_are_refused_before_anything_is_read(
        argv: list[str], says: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = build_parser().parse_args(["train", "--images", str(tmp_path / "nowhere"), "--out", str(tmp_path / "m"),
                                      *argv])
    assert args.func(args) == 2
    assert says in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_planes_without_images_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = build_parser().parse_args(["train", "--planes", "--phantoms", "2", "--out", str(tmp_path / "m")])
    assert args.func(args) == 2
    assert "--planes goes with --images" in capsys.readouterr().err
