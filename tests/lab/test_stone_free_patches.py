"""Real stone-free CT as training negatives (``lab.dataset.patches_from_stone_free``, ``train --stone-free``):
every candidate of each series, cut as the series and from each slice alone, and nothing else."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from inference.candidates import CandidateRule
from inference.network import InputSpec
from inference.runtime import ModelCard, resolve_model_dir
from inference.volume import find_dicom_files, group_series, load_volume
from lab.dataset import STONE_FREE_FIRST_SEED, patches_from_labelled, patches_from_stone_free
from lab.synth import generate_phantom, shared_data_dir, write_series
from uronode.app.cli import main


@pytest.fixture(scope="module")
def shipped() -> tuple[CandidateRule, InputSpec]:
    card = ModelCard.read(resolve_model_dir("default"))
    return CandidateRule.from_card(card.candidates), InputSpec.from_card(card.preprocessing, card.input.get("patch"))


@pytest.fixture(scope="module")
def stone_free(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small generated abdomen without stones (its bone and mimics make dense candidates), as DICOM."""
    folder = tmp_path_factory.mktemp("stone-free")
    write_series(generate_phantom(424_242, rows=256, slices=6, n_stones=0), folder / "ct")
    (folder / "ct" / "README.txt").write_text("not DICOM: skipped")
    return folder


def test_every_candidate_of_the_series_and_of_each_slice_alone_is_a_negative(
        stone_free: Path, shipped: tuple[CandidateRule, InputSpec]) -> None:
    rule, spec = shipped
    data = patches_from_stone_free([stone_free], rule, spec, max_contrast_negatives=None)
    paths = next(iter(group_series(find_dicom_files([stone_free])).values()))
    volume = load_volume(paths)
    whole = patches_from_labelled(volume, np.zeros(volume.shape, bool), 0, rule, spec)
    alone = [patches_from_labelled(load_volume([p]), np.zeros((1, *volume.shape[1:]), bool), 0, rule, spec)
             for p in dict.fromkeys(volume.source_paths)]
    assert len(whole) > 0 and sum(len(a) for a in alone) > 0
    assert len(data) == len(whole) + sum(len(a) for a in alone)
    # the series' own patches first, then each slice's alone, in the series' order
    assert np.array_equal(data.patches[:len(whole)], whole.patches)
    assert np.array_equal(data.patches[len(whole):], np.concatenate([a.patches for a in alone]))
    assert not data.has_stone.any() and not data.targets.any()
    assert data.centre_stone is not None and not data.centre_stone.any()
    assert data.windowed is not None and not data.windowed.any()  # HU: training re-windows them as it does series
    assert set(data.seeds.tolist()) == {STONE_FREE_FIRST_SEED}


def test_local_contrast_negatives_are_capped_per_cut(stone_free: Path, shipped: tuple[CandidateRule, InputSpec]) -> None:
    rule, spec = shipped
    every = patches_from_stone_free([stone_free], rule, spec, max_contrast_negatives=None)
    capped = patches_from_stone_free([stone_free], rule, spec, max_contrast_negatives=0)
    assert every.contrast is not None and capped.contrast is not None
    assert not capped.contrast.any()
    assert len(capped) == len(every) - int(every.contrast.sum())


def test_a_folder_without_a_series_is_an_error(tmp_path: Path, shipped: tuple[CandidateRule, InputSpec]) -> None:
    (tmp_path / "notes.txt").write_text("no DICOM here")
    with pytest.raises(ValueError, match="no DICOM series"):
        patches_from_stone_free([tmp_path], *shipped)


def test_train_refuses_stone_free_without_images_or_without_a_series_before_the_images_patches(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def reached(*args: object, **kwargs: object) -> None:
        raise AssertionError("the images were read before the stone-free folder was checked")

    monkeypatch.setattr("lab.dataset.patches_from_images", reached)
    assert main(["train", "--stone-free", str(tmp_path), "--out", str(tmp_path / "m")]) == 2
    assert "--stone-free goes with --images" in capsys.readouterr().err
    images = shared_data_dir() / "real-stones"
    assert main(["train", "--images", str(images), "--stone-free", str(tmp_path), "--phantoms", "0",
                 "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert "--stone-free: no DICOM series in" in err and str(tmp_path) in err
    assert not (tmp_path / "m").exists()
