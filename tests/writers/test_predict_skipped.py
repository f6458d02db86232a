"""`uronode predict` says what it skipped (probe 11, finding 12): image files that are not DICOM were left out
without a word, and a lone JPEG gave only "no DICOM files found". Predict takes DICOM; it now counts the files
it skipped and points image files to `uronode evaluate --images`. Nothing here loads TensorFlow."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from inference.volume import group_series
from tests.factory import pydicom_test_file, write_series
from uronode.app.cli import main
from uronode.app.predict import skipped_files


class _Model:
    """The model's stand-in: never run here (the only DICOM series is an MR, rejected before it)."""

    def __init__(self, model: str | None = None, threshold: float | None = None, **_: object) -> None:
        self.name, self.version = "stand-in", "0"

    def run(self, volume: object) -> None:
        raise AssertionError("no series here is CT")


def _picture(path: Path) -> Path:
    Image.fromarray(np.full((32, 32), 90, np.uint8)).save(path)
    return path


def test_a_lone_jpeg_is_refused_with_where_image_files_go(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("inference.pipeline.Pipeline", _Model)
    jpeg = _picture(tmp_path / "ct00.jpg")
    assert main(["predict", str(jpeg), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert ("no DICOM files found: 1 file skipped, not DICOM (1 of them image files: .jpg). uronode predict takes "
            "DICOM; image files are evaluated with `uronode evaluate --images DIR`") in err
    assert not (tmp_path / "out").exists()


def test_a_folder_of_other_files_only_says_so_without_pointing_to_evaluate(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "notes.txt").write_text("not an image")
    assert main(["predict", str(tmp_path / "in"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "no DICOM files found: 1 file skipped, not DICOM" in err and "evaluate" not in err


def test_image_files_beside_dicom_are_counted_and_pointed_to_evaluate(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("inference.pipeline.Pipeline", _Model)
    folder = tmp_path / "mixed"
    folder.mkdir()
    shutil.copy(pydicom_test_file("MR_small.dcm"), folder / "IM000001")  # DICOM without a suffix: read
    _picture(folder / "ct00.jpg")
    _picture(folder / "ct01.png")
    _picture(folder / "ct02.JPEG")
    (folder / "ct00.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    assert main(["predict", str(folder), "--out", str(tmp_path / "out"), "--no-previews", "--no-dicom"]) == 1
    out = capsys.readouterr().out
    assert ("4 files skipped, not DICOM (3 of them image files: .jpeg, .jpg, .png). uronode predict takes DICOM; "
            "image files are evaluated with `uronode evaluate --images DIR`") in out
    report = json.loads((tmp_path / "out" / "findings.json").read_text())
    assert report["skipped_not_dicom"] == {"files": 4, "image_files": 3,
                                           "image_files_go_to": "uronode evaluate --images DIR"}
    assert len(report["rejected"]) == 1  # the MR series, read as DICOM and refused as not CT


def test_a_cds_dicomdir_is_not_counted_as_a_skipped_file(tmp_path: Path) -> None:
    # a CD as a PACS or a scanner burns it: the images, and a DICOMDIR indexing them (an index, not an image)
    import pydicom
    from pydicom.fileset import FileSet

    _, _, paths = write_series(tmp_path / "ct", 2, size=16)
    fs = FileSet()
    for path in paths:
        fs.add(pydicom.dcmread(path))
    fs.write(tmp_path / "cd")
    assert (tmp_path / "cd" / "DICOMDIR").is_file()
    found = group_series([tmp_path / "cd"])
    assert sum(len(v) for v in found.values()) == 2
    assert skipped_files([tmp_path / "cd"], found) == ([], [])
    (tmp_path / "cd" / "notes.txt").write_text("not DICOM")
    assert skipped_files([tmp_path / "cd"], found) == ([tmp_path / "cd" / "notes.txt"], [])
