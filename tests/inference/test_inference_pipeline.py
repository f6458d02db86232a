"""The whole pipeline and the predict command, driven by the hand-written legacy threshold model."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from inference.pipeline import Pipeline
from lab.synth import Phantom
from tests.factory import pydicom_test_file
from tests.inference.legacy_model import write_legacy_model
from uronode.app.cli import main as uronode_main


@pytest.fixture(scope="module")
def legacy_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_legacy_model(tmp_path_factory.mktemp("model") / "legacy")


def test_pipeline_finds_the_inserted_stones(small_phantom: Phantom, legacy_folder: Path) -> None:
    pipeline = Pipeline(legacy_folder, cores=2)
    volume = small_phantom.to_volume()
    findings = pipeline.run(volume)
    assert findings.series_instance_uid == small_phantom.series_instance_uid
    assert findings.model_name == "test-threshold-legacy"
    assert findings.mask.shape == volume.shape
    # every stone dense enough for the 300 HU test model is found, at its own place
    for i, stone in enumerate(small_phantom.stones, start=1):
        assert (small_phantom.stone_labels == i).any()
        if small_phantom.hu[small_phantom.stone_labels == i].max() < 400:
            continue
        near = [s for s in findings.stones if np.linalg.norm(np.subtract(s.centroid_mm, stone.center_mm)) < 3.0]
        assert near, f"stone {i} ({stone.site}, {stone.diameter_mm:.1f} mm) not found"
        assert near[0].side == stone.side or stone.side == "midline"
    assert set(pipeline.last_timings) >= {"candidates_s", "network_s", "postprocess_s"}


def test_predict_on_a_folder_and_a_single_file(small_phantom: Phantom, small_series: list[Path],
                                               legacy_folder: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert uronode_main(["predict", str(small_series[0].parent), "--out", str(out), "--model", str(legacy_folder)]) == 0
    report = json.loads((out / "findings.json").read_text())
    assert report["model"]["name"] == "test-threshold-legacy"
    [series] = report["series"]
    assert series["series_instance_uid"] == small_phantom.series_instance_uid
    assert series["stones"], "the phantom's stones were not found"
    for stone in series["stones"]:
        assert {"sop_instance_uids", "centroid_mm", "max_diameter_mm", "volume_mm3", "mean_hu", "max_hu",
                "side"} <= stone.keys()
    previews = [out / p for p in series["previews"]]
    assert previews and all(p.exists() for p in previews)
    # named by the CT images' numbers, as the table and findings.json's image_numbers name them (probe 37 #3)
    numbers = sorted({n for stone in series["stones"] for n in stone["image_numbers"]})
    assert sorted(p.name for p in previews) == [f"image{n:04d}.png" for n in numbers]
    read = cv2.imread(str(previews[0]))
    assert read is not None, "the preview does not read as an image"
    image = read[..., ::-1]
    assert ((image[..., 1] == 255) & (image[..., 0] == 0)).any(), "no green box"
    assert ((image[..., 0] > 150) & (image[..., 1] < 100)).any(), "no red stone"
    assert "length mm" in capsys.readouterr().out

    single = tmp_path / "single"
    assert uronode_main(["predict", str(pydicom_test_file("CT_small.dcm")), "--out", str(single),
                     "--model", str(legacy_folder)]) == 0
    assert len(json.loads((single / "findings.json").read_text())["series"]) == 1


def test_predict_reports_rejected_series(legacy_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert uronode_main(["predict", str(pydicom_test_file("MR_small.dcm")), "--out", str(out),
                     "--model", str(legacy_folder)]) == 1
    report = json.loads((out / "findings.json").read_text())
    assert report["series"] == []
    assert "not CT" in report["rejected"][0]["reason"]
