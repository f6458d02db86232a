"""The overlays carry the source's whole Patient, General Study and Patient Study modules, as the SEG, SR and KO do,
and the series' date and time (probe8 findings 6 and 14)."""

from __future__ import annotations

import datetime
import shutil
import subprocess
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

from inference.volume import load_volume
from inference.writers import save_results, write_results
from inference.writers.sc import build_secondary_captures
from inference.writers.sources import check_inputs, read_sources
from lab.synth import generate_phantom, write_series
from tests.writers.conftest import Case, make_findings, stone_mask

PATIENT_AND_STUDY = ("PatientName", "PatientID", "IssuerOfPatientID", "IssuerOfPatientIDQualifiersSequence",
                     "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate", "StudyTime",
                     "AccessionNumber", "ReferringPhysicianName", "StudyID", "StudyDescription", "PatientAge",
                     "PatientWeight", "PatientSize")


def dcentvfy(paths: list[Path]) -> tuple[list[str], list[str]]:
    """(errors, warnings) that dcentvfy (dicom3tools) reports over a set of files of one study."""
    tool = shutil.which("dcentvfy")
    if tool is None:
        pytest.fail("dcentvfy (Debian package dicom3tools) is not installed")
    done = subprocess.run([tool, *map(str, paths)], capture_output=True, text=True, timeout=120, check=False)
    lines = (done.stdout + done.stderr).splitlines()
    errors = [line for line in lines if line.startswith("Error")]
    if done.returncode != 0 and not errors:
        errors.append(f"dcentvfy exited {done.returncode}")
    return errors, [line for line in lines if line.startswith("Warning")]


@pytest.fixture(scope="module")
def identified(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], list[Path]]:
    """A series whose patient has an issuer of the ID (a multi-domain PACS's patient identity), with the study's
    description, the patient's age, weight and size; its source files and its results."""
    phantom = generate_phantom(3, rows=64, slice_spacing=2.5, slices=10, coverage=(0.7, 0.9),
                               n_stones=0, n_mimics=0)
    paths = write_series(phantom, tmp_path_factory.mktemp("ct"))
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.IssuerOfPatientID = "HOSP_A"
        qualifiers = Dataset()
        qualifiers.UniversalEntityID = "1.2.3.4.5"
        qualifiers.UniversalEntityIDType = "ISO"
        ds.IssuerOfPatientIDQualifiersSequence = [qualifiers]
        ds.PatientAge = "054Y"
        ds.PatientWeight = "81.5"
        ds.PatientSize = "1.78"
        ds.save_as(path)
    volume = load_volume(paths)
    results = write_results(volume, make_findings(volume, stone_mask(volume.shape)))
    return paths, save_results(results, tmp_path_factory.mktemp("results"))


def test_overlays_carry_the_patient_and_study_of_the_source_as_the_other_results(
        identified: tuple[list[Path], list[Path]]) -> None:
    sources, results = identified
    source = pydicom.dcmread(sources[0], stop_before_pixels=True)
    overlays = [p for p in results if p.name.startswith("OT_")]
    assert overlays
    for path in results:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        for keyword in PATIENT_AND_STUDY:
            assert keyword in ds, (path.name, keyword)
            assert ds[keyword].value == source[keyword].value, (path.name, keyword)


def test_dcentvfy_finds_the_study_and_patient_the_same_in_source_and_every_result(
        identified: tuple[list[Path], list[Path]]) -> None:
    """dcentvfy compares the patient and study attributes of every file: an overlay without StudyDescription or
    PatientAge is 'present in one instance but not the other', the reconciliation a PACS would start."""
    sources, results = identified
    errors, warnings = dcentvfy([*sources, *results])
    assert not errors
    differing = [line for line in warnings
                 if "present in one instance but not the other" in line or "Different values" in line]
    assert not differing, differing


def test_overlays_have_the_series_date_and_time_they_were_made(stones: Case) -> None:
    overlays = stones.results.secondary_captures
    dates = {(str(ds.SeriesDate), str(ds.SeriesTime)) for ds in overlays}
    assert len(dates) == 1  # one for the whole series
    for ds in overlays:
        assert (ds.SeriesDate, ds.SeriesTime) == (ds.ContentDate, ds.ContentTime)
        assert (ds.SeriesDate, ds.SeriesTime) == (ds.DateOfSecondaryCapture, ds.TimeOfSecondaryCapture)
    (date, time), = dates
    made = datetime.datetime.strptime(date + time.split(".")[0], "%Y%m%d%H%M%S")
    assert abs(datetime.datetime.now() - made) < datetime.timedelta(hours=1)


def test_the_time_the_results_were_made_can_be_given(stones: Case) -> None:
    """``created``: one time for every result of a job, when the caller passes one."""
    sources = read_sources(stones.volume, check_inputs(stones.volume, stones.findings))
    created = datetime.datetime(2026, 3, 4, 5, 6, 7)
    for ds in build_secondary_captures(stones.volume, stones.findings, sources, created=created):
        assert (str(ds.SeriesDate), str(ds.SeriesTime)) == ("20260304", "050607")
        assert (str(ds.ContentDate), str(ds.ContentTime)) == ("20260304", "050607")
