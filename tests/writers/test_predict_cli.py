"""`uronode predict` writes the same DICOM results as the node, next to findings.json and the previews."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

from inference.errors import ModelError
from inference.pipeline import Pipeline
from lab.synth import generate_phantom, write_series
from uronode.app.cli import build_parser


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
