"""A small synthetic CT series (64 x 64, 10 slices) and findings from known masks."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest

from inference.postprocess import Findings, measure_stones
from inference.volume import Volume, load_volume
from inference.writers import Results, save_results, write_results
from lab.synth import generate_phantom, write_series

MODEL_NAME = "uronode-unet-test"
MODEL_VERSION = "1.0.0"


@dataclass(frozen=True)
class Case:
    volume: Volume
    findings: Findings
    results: Results
    paths: tuple[Path, ...]


def report_of(sr: hd.sr.EnhancedSR | hd.sr.ComprehensiveSR | hd.sr.Comprehensive3DSR) -> hd.sr.MeasurementReport:
    """A TID 1500 document's content, which highdicom reads as a MeasurementReport (typed as its base)."""
    content = sr.content
    assert isinstance(content, hd.sr.MeasurementReport)
    return content


@pytest.fixture(scope="session")
def volume(tmp_path_factory: pytest.TempPathFactory) -> Volume:
    phantom = generate_phantom(3, rows=64, slice_spacing=2.5, slices=10, coverage=(0.7, 0.9),
                               n_stones=0, n_mimics=0)
    return load_volume(write_series(phantom, tmp_path_factory.mktemp("ct")))


def stone_mask(shape: tuple[int, int, int]) -> np.ndarray:
    """Two stones on slice 4 (one spans slices 4-5) and a one-voxel stone on slice 8."""
    mask = np.zeros(shape, np.uint8)
    mask[4:6, 20:24, 14:18] = 1
    mask[4, 40:43, 44:47] = 1
    mask[8, 30, 30] = 1
    return mask


def make_findings(volume: Volume, mask: np.ndarray, version: str = MODEL_VERSION) -> Findings:
    return measure_stones(volume, mask, model_name=MODEL_NAME, model_version=version)


@pytest.fixture(scope="session")
def stones(volume: Volume, tmp_path_factory: pytest.TempPathFactory) -> Case:
    findings = make_findings(volume, stone_mask(volume.shape))
    results = write_results(volume, findings)
    paths = save_results(results, tmp_path_factory.mktemp("stones"))
    return Case(volume, findings, results, tuple(paths))


@pytest.fixture(scope="session")
def no_stones(volume: Volume, tmp_path_factory: pytest.TempPathFactory) -> Case:
    findings = make_findings(volume, np.zeros(volume.shape, np.uint8))
    results = write_results(volume, findings)
    paths = save_results(results, tmp_path_factory.mktemp("none"))
    return Case(volume, findings, results, tuple(paths))


def dciodvfy(path: Path) -> tuple[list[str], list[str]]:
    """(errors, warnings) that dciodvfy reports for one file; fails when the tool is missing."""
    tool = shutil.which("dciodvfy")
    if tool is None:
        pytest.fail("dciodvfy (Debian package dicom3tools) is not installed")
    done = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=60, check=False)
    lines = (done.stdout + done.stderr).splitlines()
    errors = [line for line in lines if line.startswith("Error")]
    warnings = [line for line in lines if line.startswith("Warning")]
    if done.returncode != 0 and not errors:
        errors.append(f"dciodvfy exited {done.returncode}")
    return errors, warnings
