"""Header values that highdicom refuses but real headers carry (found by probing, probe 12): a PatientSex
other than M, F or O ("U" is common, and anonymisers write it), a person name of several values, and a
SliceThickness written with a decimal comma. The writers take them from the source, so such a header lost all
its results after the model had run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from inference.postprocess import measure_stones
from inference.volume import load_volume
from inference.writers import save_results, write_results
from inference.writers.sources import Identity, complete_header
from lab.synth import generate_phantom, write_series
from tests.factory import pydicom_test_file
from tests.writers.conftest import MODEL_NAME, MODEL_VERSION, dciodvfy


def _raw(ds: Dataset, keyword: str, text: str) -> None:
    """``text`` as the stored bytes of ``keyword``, as a sender's file holds it (pydicom would warn or refuse
    to make such a value itself)."""
    tag = Tag(keyword)
    value = text.encode() + b" " * (len(text.encode()) % 2)
    ds[tag] = RawDataElement(tag, dictionary_VR(keyword), len(value), value, 0, False, True)


def _written(folder: Path, values: dict[str, str]) -> tuple[list[bytes], list[Path], list[Path]]:
    """A small series whose files carry ``values``, its results written with a stone on slices 2 and 3:
    (the stored files' bytes before, the source files, the results)."""
    phantom = generate_phantom(21, rows=64, slice_spacing=2.5, slices=3, coverage=(0.7, 0.8),
                               n_stones=0, n_mimics=0)
    paths = write_series(phantom, folder / "ct")
    for path in paths:
        ds = pydicom.dcmread(path)
        for keyword, text in values.items():
            _raw(ds, keyword, text)
        ds.save_as(path, enforce_file_format=True)
    stored = [path.read_bytes() for path in paths]
    volume = load_volume(paths)
    mask = np.zeros(volume.shape, np.uint8)
    mask[1:3, 30:33, 30:33] = 1
    findings = measure_stones(volume, mask, model_name=MODEL_NAME, model_version=MODEL_VERSION)
    return stored, paths, save_results(write_results(volume, findings), folder / "out")


@pytest.mark.parametrize(("stored", "written"), [
    ("U", ""), ("X", ""), ("UNKNOWN", ""), ("W", ""),  # unknown, or no plain meaning: empty (Type 2)
    ("Male", "M"), ("male", "M"), ("MALE", "M"), ("m", "M"),
    ("female", "F"), ("FEMALE", "F"), ("f", "F"), ("OTHER", "O"), ("other", "O"),
    ("M", "M"), ("F", "F"), ("O", "O"),  # valid: as they are
])
def test_every_result_is_written_whatever_the_patient_sex(stored: str, written: str, tmp_path: Path) -> None:
    """Found by probing: PatientSex "U" or "Male" made the SEG writer raise ValueError ('U' is not a valid
    PatientSexValues) after the model had run: no findings.json, and a node job delivered nothing."""
    before, paths, results = _written(tmp_path, {"PatientSex": stored})
    assert pydicom.dcmread(paths[0]).PatientSex == stored
    kinds = set()
    for path in results:
        ds = pydicom.dcmread(path)
        kinds.add(ds.Modality)
        assert "PatientSex" in ds and ds.PatientSex == written, (path.name, ds.get("PatientSex"))
    assert kinds == {"SEG", "OT", "SR", "KO"}, kinds
    assert [path.read_bytes() for path in paths] == before  # only the header read for the writers changes


def test_results_with_a_mended_patient_sex_are_valid_dicom(tmp_path: Path) -> None:
    _, _, results = _written(tmp_path, {"PatientSex": "U"})
    for path in results:
        errors, _ = dciodvfy(path)
        assert not errors, (path.name, errors)


@pytest.mark.parametrize("keyword", ["PatientName", "ReferringPhysicianName"])
def test_a_person_name_of_several_values_keeps_its_first(keyword: str, tmp_path: Path) -> None:
    """A backslash in a name (VM 1 in the patient and study modules) made highdicom raise TypeError
    (Invalid type for a person name) in every writer."""
    _, _, results = _written(tmp_path, {keyword: "Doe^Jane\\Roe^Richard"})
    assert {pydicom.dcmread(path).Modality for path in results} == {"SEG", "OT", "SR", "KO"}
    for path in results:
        assert str(pydicom.dcmread(path)[keyword].value) == "Doe^Jane", path.name


@pytest.mark.parametrize(("stored", "said"), [
    ("U", "PatientSex 'U' is not M, F or O: written empty"),
    ("Male", "PatientSex 'Male' written as 'M'"),
    ("M", None), ("F", None), ("O", None), ("", None),
])
def test_complete_header_says_what_it_did_to_the_patient_sex(stored: str, said: str | None) -> None:
    ds = Dataset()
    ds.PatientSex = stored
    ds.FrameOfReferenceUID = "1.2.3"
    ds.SliceThickness = "2.5"
    mended = complete_header(ds, Identity("1.2.3.4", MODEL_NAME, MODEL_VERSION), 2.5)
    sex_lines = [line for line in mended if line.startswith("PatientSex")]
    assert sex_lines == ([said] if said else [])
    if said is None:
        assert ds.PatientSex == stored


@pytest.mark.parametrize("values", [{"SliceThickness": "2,5"}, {"SpacingBetweenSlices": "2,5"},
                                    {"SpacingBetweenSlices": "n/a"}])
def test_a_spacing_with_a_decimal_comma_gives_a_seg_that_says_it_with_a_point(values: dict[str, str],
                                                                              tmp_path: Path) -> None:
    """Found by probing: SliceThickness "2,5" (the loader reads it) made highdicom raise ValueError in the
    SEG's pixel measures after the model had run. A SpacingBetweenSlices that is no number is left out."""
    _, _, results = _written(tmp_path, values)
    assert {pydicom.dcmread(path).Modality for path in results} == {"SEG", "OT", "SR", "KO"}
    seg = pydicom.dcmread(next(path for path in results if path.name.startswith("SEG")))
    measures = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    assert float(measures.SliceThickness) == pytest.approx(2.5)  # the series' own, with a point
    errors, _ = dciodvfy(next(path for path in results if path.name.startswith("SEG")))
    assert not errors, errors


def test_an_enhanced_ct_with_a_decimal_comma_in_its_pixel_measures_gets_its_seg(tmp_path: Path) -> None:
    ds = pydicom.dcmread(pydicom_test_file("eCT_Supplemental.dcm"))
    _raw(ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0], "SliceThickness", "10,0")
    path = tmp_path / "ect.dcm"
    ds.save_as(path, enforce_file_format=True)
    volume = load_volume([path])
    mask = np.zeros(volume.shape, np.uint8)
    mask[0, 300:303, 100:103] = 1
    findings = measure_stones(volume, mask, model_name=MODEL_NAME, model_version=MODEL_VERSION)
    written = save_results(write_results(volume, findings), tmp_path / "out")
    seg = pydicom.dcmread(written[0])
    assert seg.Modality == "SEG"
    assert float(seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].SliceThickness) == 10.0


def test_a_study_reference_without_its_uids_is_left_out_of_valid_results(tmp_path: Path) -> None:
    """Probe 33 #8: a source whose General Study module holds a ReferencedStudySequence item without its SOP
    Class UID had the fault copied into every result (dciodvfy: an error in each). Good items stay."""
    phantom = generate_phantom(21, rows=64, slice_spacing=2.5, slices=3, coverage=(0.7, 0.8), n_stones=0, n_mimics=0)
    paths = write_series(phantom, tmp_path / "ct")
    good, broken = Dataset(), Dataset()
    good.ReferencedSOPClassUID, good.ReferencedSOPInstanceUID = "1.2.840.10008.3.1.2.3.1", "1.2.3.4.5"
    broken.ReferencedSOPInstanceUID = "1.2.3.4.6"
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.ReferencedStudySequence = [broken, good]
        ds.ReferencedPatientSequence = [broken]
        ds.save_as(path, enforce_file_format=True)
    volume = load_volume(paths)
    mask = np.zeros(volume.shape, np.uint8)
    mask[1:3, 30:33, 30:33] = 1
    findings = measure_stones(volume, mask, model_name=MODEL_NAME, model_version=MODEL_VERSION)
    results = save_results(write_results(volume, findings), tmp_path / "out")
    assert {pydicom.dcmread(path).Modality for path in results} == {"SEG", "OT", "SR", "KO"}
    for path in results:
        ds = pydicom.dcmread(path)
        assert [item.ReferencedSOPInstanceUID for item in ds.ReferencedStudySequence] == ["1.2.3.4.5"], path.name
        assert "ReferencedPatientSequence" not in ds, path.name
        errors, _ = dciodvfy(path)
        assert not errors, (path.name, errors)
    assert len(pydicom.dcmread(paths[0]).ReferencedStudySequence) == 2  # the stored file is as it was sent
