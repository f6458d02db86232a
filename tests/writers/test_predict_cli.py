"""`uronode predict` writes the same DICOM results as the node, next to findings.json and the previews."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

from inference.errors import ModelError
from inference.pipeline import Pipeline
from inference.volume import load_volume
from lab.synth import generate_phantom, write_series
from tests.factory import pydicom_test_file
from uronode.app.cli import build_parser
from uronode.app.predict import NUMBERS_HEADER, _images_cell, image_numbers


def test_predict_writes_seg_sc_and_sr(tmp_path: Path) -> None:
    phantom = generate_phantom(11, rows=512, slice_spacing=2.5, slices=24, coverage=(0.72, 0.88), n_stones=3,
                               stone_sites=("kidney",))
    write_series(phantom, tmp_path / "ct")
    done = subprocess.run([sys.executable, "-m", "uronode", "predict", str(tmp_path / "ct"), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "out" / "findings.json").read_text())
    (series,) = report["series"]
    files = [tmp_path / "out" / p for p in series["dicom"]]
    modalities = sorted(pydicom.dcmread(f, stop_before_pixels=True).Modality for f in files)
    assert modalities.count("SEG") == 1 and modalities.count("SR") == 1 and modalities.count("KO") == 1
    assert "OT" in modalities
    for f in files:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        assert ds.StudyInstanceUID == phantom.study_instance_uid and ds.Manufacturer == "uronode"
        assert subprocess.run(["dciodvfy", str(f)], capture_output=True).returncode == 0


def test_a_threshold_outside_0_to_1_is_refused_before_anything_loads(capsys: pytest.CaptureFixture[str]) -> None:
    """Found by probing: --threshold 5 (a percentage, or HU) reported "none" for every series, -1 every
    candidate as a stone. The command refuses it; the pipeline too, for any other caller."""
    parser = build_parser()
    for given in ("50", "130", "-1", "0", "1", "half"):
        with pytest.raises(SystemExit) as info:
            parser.parse_args(["predict", "ct", "--out", "out", "--threshold", given])
        assert info.value.code == 2
        assert "--threshold" in capsys.readouterr().err
    assert parser.parse_args(["predict", "ct", "--out", "out", "--threshold", "0.6"]).threshold == 0.6
    with pytest.raises(ModelError, match="not between 0 and 1"):
        Pipeline("a model folder that is never read", threshold=5.0)


def test_an_out_that_is_a_file_is_refused_before_the_model_loads(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """Found by probing: --out naming a file said only "File exists", after TensorFlow and the model had loaded."""
    (tmp_path / "afile").write_text("")
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["predict", "ct", "--out", str(tmp_path / "afile")])
    assert info.value.code == 2
    assert f"argument --out: {tmp_path / 'afile'} is a file, not a folder" in capsys.readouterr().err
    assert build_parser().parse_args(["predict", "ct", "--out", str(tmp_path / "new")]).out == tmp_path / "new"


def test_predict_names_the_ct_images_by_their_numbers_in_a_series_numbered_head_first(tmp_path: Path) -> None:
    """Found by review: the table's "slices 149-151" were volume indices (from the feet) while the series numbered
    those images 31-33 (from the head). The table and findings.json give the CT's InstanceNumbers, and every
    overlay has its CT image's number."""
    phantom = generate_phantom(11, rows=512, slice_spacing=2.5, slices=24, coverage=(0.72, 0.88), n_stones=3,
                               stone_sites=("kidney",))
    paths = write_series(phantom, tmp_path / "ct")
    number_of = {}
    for k, path in enumerate(paths):
        ds = pydicom.dcmread(path)
        ds.InstanceNumber = 200 - k  # head first, and no number is a slice index
        ds.save_as(path)
        number_of[str(ds.SOPInstanceUID)] = 200 - k
    done = subprocess.run([sys.executable, "-m", "uronode", "predict", str(tmp_path / "ct"), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].rstrip().endswith(NUMBERS_HEADER) and NUMBERS_HEADER == "CT images (InstanceNumber)"
    cells = [re.split(r"\s{2,}", line.strip())[-1] for line in lines[1:] if line.startswith("#1 ")]
    (series,) = json.loads((tmp_path / "out" / "findings.json").read_text())["series"]
    assert series["stones"] and series["image_numbering"] == "instance"
    assert len(cells) == len(series["stones"])
    for cell, stone in zip(cells, series["stones"], strict=True):
        numbers = sorted({number_of[uid] for uid in stone["sop_instance_uids"]})
        assert stone["image_numbers"] == [200 - k for k in stone["slice_indices"]]
        assert sorted(stone["image_numbers"]) == numbers
        assert cell == (f"{numbers[0]}-{numbers[-1]}" if len(numbers) > 1 else str(numbers[0]))
        assert numbers == list(range(numbers[0], numbers[-1] + 1))
    overlays = [pydicom.dcmread(tmp_path / "out" / p, stop_before_pixels=True) for p in series["dicom"]
                if Path(p).name.startswith("OT_")]
    assert overlays
    for ds in overlays:
        assert int(ds.InstanceNumber) == number_of[ds.SourceImageSequence[0].ReferencedSOPInstanceUID]


def test_predict_numbers_the_frames_of_a_multiframe_ct() -> None:
    volume = load_volume([pydicom_test_file("eCT_Supplemental.dcm")])
    assert image_numbers(volume) == ((2, 1), "frame")
    assert _images_cell((2, 1), "frame", (0, 1)) == "frames 1-2"
    assert _images_cell((33, 32, 31, 30), "instance", (1, 2)) == "31-32"
    assert _images_cell((1, 2, 3, 4, 5, 6), "index", (0, 1, 2, 5)) == "slices 1-3, 6"
