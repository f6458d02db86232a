"""``uronode train --data DIR``: the user's own cases (DICOM CT + DICOM SEG) -> a model with its card."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest

from inference.pipeline import Pipeline
from inference.postprocess import measure_stones
from inference.runtime import load_model
from inference.writers import write_results
from lab.labelled import LabelledDataError, find_case_folders, load_case
from lab.synth import Phantom, generate_phantom, write_series
from uronode.app.cli import main


def _write_case(folder: Path, phantom: Phantom) -> None:
    """A labelled case as a user would bring it: the CT series and a SEG of its stones."""
    paths = write_series(phantom, folder)
    from inference.volume import load_volume

    volume = load_volume(paths)
    truth = measure_stones(volume, phantom.stone_labels > 0, model_name="annotator", model_version="1")
    seg = write_results(volume, truth).seg
    assert seg is not None
    seg.save_as(folder / "stones-seg.dcm", enforce_file_format=True)


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Phantom]]:
    root = tmp_path_factory.mktemp("labelled")
    phantoms = [generate_phantom(300 + i, rows=128, slice_spacing=2.0, coverage=(0.66, 0.96), n_stones=2,
                                 stone_sites=("kidney",)) for i in range(2)]
    for i, phantom in enumerate(phantoms):
        _write_case(root / f"case-{i + 1}", phantom)
    return root, phantoms


def test_a_case_reads_as_its_volume_and_the_seg_mask(cases: tuple[Path, list[Phantom]]) -> None:
    root, phantoms = cases
    folders = find_case_folders(root)
    assert [f.name for f in folders] == ["case-1", "case-2"]
    case = load_case(folders[0])
    assert case.volume.series_instance_uid == phantoms[0].series_instance_uid
    assert case.mask.shape == case.volume.shape
    assert np.array_equal(case.mask, phantoms[0].stone_labels > 0)
    assert case.stone_voxels > 0


def test_a_case_without_seg_is_rejected_with_the_reason(tmp_path: Path) -> None:
    write_series(generate_phantom(5, rows=64, slices=4, n_stones=0), tmp_path / "case")
    with pytest.raises(LabelledDataError, match="0 DICOM SEG files"):
        load_case(tmp_path / "case")


def test_a_seg_of_another_series_is_rejected(cases: tuple[Path, list[Phantom]], tmp_path: Path) -> None:
    root, _ = cases
    folder = tmp_path / "mixed"
    write_series(generate_phantom(6, rows=64, slices=4, n_stones=0), folder)
    seg = pydicom.dcmread(root / "case-1" / "stones-seg.dcm")
    seg.save_as(folder / "seg.dcm")
    with pytest.raises(LabelledDataError, match="references series"):
        load_case(folder)


def test_train_on_labelled_cases_writes_a_model_that_loads_and_names_its_data(
        cases: tuple[Path, list[Phantom]], tmp_path: Path) -> None:
    root, phantoms = cases
    out = tmp_path / "my-model"
    assert main(["train", "--data", str(root), "--out", str(out), "--epochs", "1", "--name", "my-stones"]) == 0
    card = json.loads((out / "card.json").read_text())
    assert card["name"] == "my-stones"
    assert [c["folder"] for c in card["training"]["cases"]] == ["case-1", "case-2"]
    assert [c["series_instance_uid"] for c in card["training"]["cases"]] == [p.series_instance_uid for p in phantoms]
    assert all(c["stone_voxels"] > 0 and c["seg_file"] == "stones-seg.dcm" for c in card["training"]["cases"])
    assert str(root.resolve()) in card["training"]["data"]
    assert card["training"]["base_model"]["name"] == "uronode-stone-cascade"
    assert card["training"]["epochs"] == 1
    loaded = load_model(out)
    findings = Pipeline(loaded).run(phantoms[0].to_volume())
    assert findings.mask.shape == phantoms[0].hu.shape
