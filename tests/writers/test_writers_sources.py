"""Sources that differ from the plain synthetic series: one multi-frame Enhanced CT
(pydicom's eCT_Supplemental, frames stored head first, no BodyPartExamined) and a
patient name outside ASCII (ISO_IR 100)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from inference.postprocess import measure_stones
from inference.volume import Volume, load_volume
from inference.writers import save_results, write_results
from lab.synth import generate_phantom, write_series
from tests.factory import pydicom_test_file
from tests.writers.conftest import MODEL_NAME, MODEL_VERSION, dciodvfy, report_of


def test_multiframe_enhanced_ct_source(tmp_path: Path) -> None:
    volume = load_volume([pydicom_test_file("eCT_Supplemental.dcm")])
    assert volume.frame_numbers == (2, 1)  # sorted feet to head: the file's frames reversed
    mask = np.zeros(volume.shape, np.uint8)
    mask[0, 300:303, 100:103] = 1
    mask[1, 200:205, 200:205] = 1
    findings = measure_stones(volume, mask, model_name=MODEL_NAME, model_version=MODEL_VERSION)
    results = write_results(volume, findings)
    paths = save_results(results, tmp_path)
    for path in paths:
        errors, warnings = dciodvfy(path)
        for line in warnings:
            print(f"{path.name}: {line}")
        assert not errors, (path.name, errors)

    seg = hd.seg.segread(paths[0])
    assert int(seg.NumberOfFrames) == 2
    source_uid = volume.sop_instance_uids[0]
    for k, frame in enumerate(volume.frame_numbers):
        pixels = seg.get_pixels_by_source_frame(source_uid, source_frame_numbers=[frame], combine_segments=True,
                                                assert_missing_frames_are_empty=True)
        np.testing.assert_array_equal(pixels[0] > 0, findings.mask[k] > 0)

    source = pydicom.dcmread(pydicom_test_file("eCT_Supplemental.dcm"), stop_before_pixels=True)
    for ds in results.secondary_captures:
        reference = ds.SourceImageSequence[0]
        frame = int(reference.ReferencedFrameNumber)
        plane = source.PerFrameFunctionalGroupsSequence[frame - 1].PlanePositionSequence[0]
        assert ds.ImagePositionPatient == plane.ImagePositionPatient
        assert "Laterality" in ds and not ds.Laterality  # no body part stated: present, empty

    kos = pydicom.dcmread(next(p for p in paths if p.name.startswith("KO_")))
    (image,) = [item for item in kos.ContentSequence if item.ValueType == "IMAGE"]
    assert image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source_uid  # the one instance, once
    assert list(image.ReferencedSOPSequence[0].ReferencedFrameNumber) == [2, 1]  # its frames in slice order

    groups = report_of(hd.sr.srread(paths[-1])).get_volumetric_roi_measurement_groups()
    assert len(groups) == 2
    segments = [g.referenced_segment for g in groups]
    frames = {tuple(s.referenced_frame_numbers or ()) for segment in segments if segment is not None
              for s in segment.source_images_for_segmentation}
    assert frames == {(1,), (2,)}


@pytest.mark.parametrize("name", ["Müller^Jörg", "Ødegård^Åse"])
def test_non_ascii_patient_name_survives_in_every_result(name: str, tmp_path: Path) -> None:
    phantom = generate_phantom(11, rows=64, slice_spacing=2.5, slices=4, coverage=(0.7, 0.8),
                               n_stones=0, n_mimics=0)
    volume = load_volume(write_series(phantom, tmp_path / "ct", patient_name=name))
    mask = np.zeros(volume.shape, np.uint8)
    mask[1, 30:33, 30:33] = 1
    findings = measure_stones(volume, mask, model_name=MODEL_NAME, model_version=MODEL_VERSION)
    for path in save_results(write_results(volume, findings), tmp_path / "out"):
        ds = pydicom.dcmread(path)
        assert ds.SpecificCharacterSet == "ISO_IR 100"
        assert str(ds.PatientName) == name
        errors, _ = dciodvfy(path)
        assert not errors, (path.name, errors)


def _series(seed: int, folder: Path, change: Callable[[int, pydicom.Dataset], None], slices: int = 4) -> list[Path]:
    """A small generated CT series, each file changed by ``change(k, ds)`` and saved again as written."""
    phantom = generate_phantom(seed, rows=64, slice_spacing=2.5, slices=slices, coverage=(0.7, 0.8),
                               n_stones=0, n_mimics=0)
    paths = write_series(phantom, folder)
    for k, path in enumerate(paths):
        ds = pydicom.dcmread(path)
        change(k, ds)
        if ds.preamble is None:  # a bare data set, as some software writes it
            pydicom.dcmwrite(path, ds, implicit_vr=True, little_endian=True, enforce_file_format=False)
        else:
            ds.save_as(path, enforce_file_format=True)
    return paths


def _results(paths: Sequence[Path], out: Path) -> tuple[Volume, list[Path]]:
    """The series loaded and its results written, with a stone on slices 2 and 3 (one slice of a short
    series)."""
    volume = load_volume(paths)
    mask = np.zeros(volume.shape, np.uint8)
    mask[1:3, 30:33, 30:33] = 1
    findings = measure_stones(volume, mask, model_name=MODEL_NAME, model_version=MODEL_VERSION)
    return volume, save_results(write_results(volume, findings), out)


ANONYMISED_AWAY = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber",
                   "ReferringPhysicianName", "StudyID", "StudyDate", "StudyTime", "FrameOfReferenceUID",
                   "SliceThickness")


@pytest.mark.parametrize("damage", ["deleted", "bad dates"])
def test_sources_an_anonymiser_stripped_still_get_their_results(damage: str, tmp_path: Path) -> None:
    """Found by probing: a series whose anonymiser deleted the patient and study attributes (Type 2: they
    should be present and empty), or wrote a date as 19700000 or 2026-01-01, made highdicom raise
    AttributeError or ValueError, so the job failed with an internal error and nothing was delivered."""
    def anonymise(k: int, ds: pydicom.Dataset) -> None:
        if damage == "deleted":
            for keyword in ANONYMISED_AWAY:
                delattr(ds, keyword)
        else:
            ds.PatientBirthDate, ds.StudyDate, ds.StudyTime = "19700000", "2026-01-01", "12:00"

    paths = _series(12, tmp_path / "ct", anonymise)
    stored = [path.read_bytes() for path in paths]
    volume, written = _results(paths, tmp_path / "out")
    frames_of_reference, kinds = set(), set()
    for path in written:
        ds = pydicom.dcmread(path)
        kinds.add(ds.Modality)
        emptied = ("PatientID", "PatientBirthDate", "StudyDate") if damage == "deleted" else (
            "PatientBirthDate", "StudyDate", "StudyTime")
        for keyword in emptied:
            assert str(ds.get(keyword, "missing")) in ("", "None"), (path.name, keyword, ds.get(keyword))
        assert ds.StudyInstanceUID == volume.study_instance_uid
        if "FrameOfReferenceUID" in ds:
            frames_of_reference.add(ds.FrameOfReferenceUID)
        errors, _ = dciodvfy(path)
        assert not errors, (path.name, errors)
    assert kinds == {"SEG", "OT", "SR", "KO"}, kinds  # the SEG, the overlays, the report, the key images
    if damage == "deleted":
        assert len(frames_of_reference) == 1  # one derived for the series, the same in every result
    assert [path.read_bytes() for path in paths] == stored  # only the header read for the writers changes


def test_sources_written_as_bare_data_sets_get_their_results(tmp_path: Path) -> None:
    """Files without the preamble and File Meta group: the writers read their headers as the volume does."""
    def bare(k: int, ds: pydicom.Dataset) -> None:
        ds.preamble = None
        ds.file_meta = pydicom.dataset.FileMetaDataset()

    volume, written = _results(_series(13, tmp_path / "ct", bare), tmp_path / "out")
    seg = hd.seg.segread(next(p for p in written if p.name.startswith("SEG")))
    referenced = {item.ReferencedSOPInstanceUID for series in seg.ReferencedSeriesSequence
                  for item in series.ReferencedInstanceSequence}
    assert referenced == set(volume.sop_instance_uids)
    for path in written:
        errors, _ = dciodvfy(path)
        assert not errors, (path.name, errors)


@pytest.mark.parametrize(("charset", "name"), [
    (["", "ISO 2022 IR 87"], "Yamada^Tarou=山田^太郎=やまだ^たろう"),  # PS3.5's Japanese example
    (["", "ISO 2022 IR 149"], "Hong^Gildong=洪^吉洞=홍^길동"),  # and its Korean one
    ("ISO_IR 6", "Smith^John"),  # no defined term, but senders write it
])
def test_a_character_set_highdicom_does_not_write_gives_results_in_utf8(charset: str | list[str], name: str,
                                                                          tmp_path: Path) -> None:
    """Found by probing: every writer raised ValueError ('' is not a valid SpecificCharacterSetValues), so
    every Japanese or Korean site's job failed after its stones were found."""
    def declare(k: int, ds: pydicom.Dataset) -> None:
        ds.SpecificCharacterSet = charset
        ds.PatientName = name

    paths = _series(14, tmp_path / "ct", declare, slices=3)
    assert str(pydicom.dcmread(paths[0]).PatientName) == name
    _, written = _results(paths, tmp_path / "out")
    assert {pydicom.dcmread(p).Modality for p in written} == {"SEG", "OT", "SR", "KO"}
    for path in written:
        ds = pydicom.dcmread(path)
        assert ds.SpecificCharacterSet == "ISO_IR 192"
        assert str(ds.PatientName) == name
        errors, _ = dciodvfy(path)
        assert not errors, (path.name, errors)


def test_orientations_that_differ_by_float_noise_give_one_seg(tmp_path: Path) -> None:
    """Found by probing: ImageOrientationPatient 0.999999 on some slices and 1 on others (workstation
    reformats, some scanners) is one orientation to the loader, and made highdicom refuse the SEG."""
    def tilt_by_noise(k: int, ds: pydicom.Dataset) -> None:
        if k % 2:
            ds.ImageOrientationPatient = [0.999999, 0.0, -1e-9, 0.0, 1.0, 0.0]

    _, written = _results(_series(15, tmp_path / "ct", tilt_by_noise), tmp_path / "out")
    seg = hd.seg.segread(next(p for p in written if p.name.startswith("SEG")))
    assert int(seg.NumberOfFrames) == 2  # the slices its stone spans
    errors, _ = dciodvfy(next(p for p in written if p.name.startswith("SEG")))
    assert not errors


@pytest.mark.parametrize("group", ["PlaneOrientationSequence", "PixelMeasuresSequence"])
def test_enhanced_ct_with_its_geometry_per_frame_gets_its_seg(group: str, tmp_path: Path) -> None:
    """Found by probing: the same orientation or pixel measures in every frame's group (legal) made
    highdicom refuse the SEG or raise AttributeError."""
    ds = pydicom.dcmread(pydicom_test_file("eCT_Supplemental.dcm"))
    item = ds.SharedFunctionalGroupsSequence[0][group][0]
    del ds.SharedFunctionalGroupsSequence[0][group]
    for frame in ds.PerFrameFunctionalGroupsSequence:
        setattr(frame, group, [item])
    path = tmp_path / "ect.dcm"
    ds.save_as(path, enforce_file_format=True)
    volume = load_volume([path])
    mask = np.zeros(volume.shape, np.uint8)
    mask[0, 300:303, 100:103] = 1
    findings = measure_stones(volume, mask, model_name=MODEL_NAME, model_version=MODEL_VERSION)
    written = save_results(write_results(volume, findings), tmp_path / "out")
    seg = hd.seg.segread(written[0])
    assert int(seg.NumberOfFrames) == 1  # the one frame its stone is on
    errors, _ = dciodvfy(written[0])
    assert not errors, errors
    assert group in pydicom.dcmread(path).PerFrameFunctionalGroupsSequence[0]  # the stored file is unchanged
