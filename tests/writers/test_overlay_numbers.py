"""An overlay's InstanceNumber is its CT image's number, so that "overlay 31" is CT image 31 (probe8 finding 9), and
the overlays carry no attribute beyond the SC IOD but the declared extension (finding 7)."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.datadict import keyword_for_tag
from pydicom.tag import Tag

from inference.postprocess import measure_stones
from inference.volume import Volume, images_words, load_volume
from inference.writers import findings_record, save_results, write_results
from inference.writers.sc import STANDARD_EXTENSION, image_numbers
from lab.synth import generate_phantom, write_series
from tests.factory import pydicom_test_file
from tests.writers.conftest import (
    MODEL_NAME,
    MODEL_VERSION,
    Case,
    dciodvfy,
    make_findings,
    stone_mask,
)

EXTRA_ATTRIBUTE = re.compile(r"Attribute is not present in standard DICOM IOD - \((0x[0-9a-f]{4}),(0x[0-9a-f]{4})\)")


def _renumbered(folder: Path, number: Callable[[int], int | None]) -> Volume:
    """The conftest's series (10 slices, feet to head) with InstanceNumber ``number(k)`` on slice k."""
    phantom = generate_phantom(3, rows=64, slice_spacing=2.5, slices=10, coverage=(0.7, 0.9),
                               n_stones=0, n_mimics=0)
    paths = write_series(phantom, folder)
    for k, path in enumerate(paths):
        ds = pydicom.dcmread(path)
        value = number(k)
        if value is None:
            del ds.InstanceNumber
        else:
            ds.InstanceNumber = value
        ds.save_as(path)
    return load_volume(paths)


def _source_number(volume: Volume, ds: pydicom.Dataset) -> int:
    k = volume.sop_instance_uids.index(ds.SourceImageSequence[0].ReferencedSOPInstanceUID)
    return int(pydicom.dcmread(volume.source_paths[k], stop_before_pixels=True).InstanceNumber)


def test_an_overlay_has_its_ct_images_number_in_a_series_numbered_head_first(tmp_path: Path) -> None:
    """Found by review: in a series numbered from the head, overlay 149 showed CT image 33."""
    volume = _renumbered(tmp_path / "ct", lambda k: 10 - k)
    results = write_results(volume, make_findings(volume, stone_mask(volume.shape)))
    overlays = results.secondary_captures
    assert [_source_number(volume, ds) for ds in overlays] == [int(ds.InstanceNumber) for ds in overlays]
    assert [int(ds.InstanceNumber) for ds in overlays] == [2, 5, 6]  # slices 8, 5, 4: the CT's order, head first
    paths = save_results(results, tmp_path / "out")
    assert sorted(p.name for p in paths if p.name.startswith("OT_")) == [
        "OT_1902_0002.dcm", "OT_1902_0005.dcm", "OT_1902_0006.dcm"]  # the CT is series 1: 1000 x 1 + 902


def test_every_slice_mode_numbers_the_overlays_as_the_ct(tmp_path: Path) -> None:
    volume = _renumbered(tmp_path / "ct", lambda k: 101 + 2 * (9 - k))
    results = write_results(volume, make_findings(volume, stone_mask(volume.shape)), sc_every_slice=True)
    numbers = [int(ds.InstanceNumber) for ds in results.secondary_captures]
    assert numbers == sorted(101 + 2 * (9 - k) for k in range(10))
    assert numbers == [_source_number(volume, ds) for ds in results.secondary_captures]
    # sorted by InstanceNumber, their positions run one way, as the CT's: a viewer scrolls them in order
    heights = [float(ds.ImagePositionPatient[2]) for ds in results.secondary_captures]
    assert heights == sorted(heights, reverse=True)


@pytest.mark.parametrize(("number", "why"), [(lambda k: 1, "repeated"), (lambda k: None if k == 3 else k + 1, "missing"),
                                              (lambda k: k, "zero")], ids=["repeated", "missing", "zero"])
def test_numbers_that_do_not_tell_the_images_apart_give_the_slice_index(tmp_path: Path,
                                                                       number: Callable[[int], int | None],
                                                                       why: str) -> None:
    volume = _renumbered(tmp_path / "ct", number)
    results = write_results(volume, make_findings(volume, stone_mask(volume.shape)))
    assert [int(ds.InstanceNumber) for ds in results.secondary_captures] == [5, 6, 9], why
    paths = save_results(results, tmp_path / "out")
    assert len({p.name for p in paths}) == len(paths)


def test_the_overlays_of_a_multiframe_ct_have_its_frame_numbers(tmp_path: Path) -> None:
    volume = load_volume([pydicom_test_file("eCT_Supplemental.dcm")])
    assert volume.frame_numbers == (2, 1)
    mask = np.zeros(volume.shape, np.uint8)
    mask[0, 300:303, 100:103] = 1
    mask[1, 200:205, 200:205] = 1
    results = write_results(volume, measure_stones(volume, mask, model_name=MODEL_NAME, model_version=MODEL_VERSION))
    overlays = results.secondary_captures
    assert [int(ds.InstanceNumber) for ds in overlays] == [1, 2]
    assert [int(ds.SourceImageSequence[0].ReferencedFrameNumber) for ds in overlays] == [1, 2]
    source = pydicom.dcmread(pydicom_test_file("eCT_Supplemental.dcm"), stop_before_pixels=True)
    assert image_numbers([source, source], volume.frame_numbers) == ((2, 1), "frame")


def test_the_findings_record_numbers_each_stones_images_as_its_report_does(tmp_path: Path) -> None:
    """The job's findings carry the numbers the overlays and the report give, so that the upload page shows
    those and does not work them out again from the stored series (review 19 #8)."""
    volume = _renumbered(tmp_path / "ct", lambda k: 10 - k)
    findings = make_findings(volume, stone_mask(volume.shape))
    results = write_results(volume, findings)
    record = findings_record(findings, results)
    assert record["image_numbering"] == "instance"
    stones = record["stones"]
    assert isinstance(stones, list) and len(stones) == len(findings.stones) > 0
    comments = " ".join(str(item.TextValue) for item in _text_items(results.sr))
    for entry, stone in zip(stones, findings.stones, strict=True):
        expected = [int(pydicom.dcmread(volume.source_paths[k], stop_before_pixels=True).InstanceNumber)
                    for k in stone.slice_indices]
        assert entry["image_numbers"] == expected
        assert entry["slice_indices"] == list(stone.slice_indices)  # the record keeps what it had
        assert images_words(expected, "instance", range(len(expected))) in comments
    overlay_numbers = {int(ds.InstanceNumber) for ds in results.secondary_captures}
    assert overlay_numbers == {n for entry in stones for n in entry["image_numbers"]}
    unnumbered = _renumbered(tmp_path / "ct2", lambda k: 1)
    findings = make_findings(unnumbered, stone_mask(unnumbered.shape))
    record = findings_record(findings, write_results(unnumbered, findings))
    assert record["image_numbering"] == "index"
    assert [entry["image_numbers"] for entry in record["stones"]] == [
        [k + 1 for k in stone.slice_indices] for stone in findings.stones]


def test_the_findings_record_of_a_multiframe_ct_gives_frame_numbers() -> None:
    volume = load_volume([pydicom_test_file("eCT_Supplemental.dcm")])
    mask = np.zeros(volume.shape, np.uint8)
    mask[0, 300:303, 100:103] = 1
    findings = measure_stones(volume, mask, model_name=MODEL_NAME, model_version=MODEL_VERSION)
    record = findings_record(findings, write_results(volume, findings))
    assert record["image_numbering"] == "frame"
    assert [entry["image_numbers"] for entry in record["stones"]] == [[2]]  # slice 0 is frame 2


def _text_items(item: pydicom.Dataset) -> list[pydicom.Dataset]:
    found = []
    for child in item.get("ContentSequence", []):
        if child.get("ValueType") == "TEXT":
            found.append(child)
        found.extend(_text_items(child))
    return found


def test_image_numbers_of_single_frame_sources() -> None:
    def header(number: object) -> pydicom.Dataset:
        ds = pydicom.Dataset()
        if number is not None:
            ds.InstanceNumber = number
        return ds

    assert image_numbers([header(33), header(32), header(31)], (1, 1, 1)) == ((33, 32, 31), "instance")
    assert image_numbers([header(33), header(33)], (1, 1)) == ((1, 2), "index")
    assert image_numbers([header(3), header(None)], (1, 1)) == ((1, 2), "index")
    assert image_numbers([header(-4), header(5)], (1, 1)) == ((1, 2), "index")
    # probe 37: a volume whose index 0 is the head end (feet first) is counted from the feet end all the same
    assert image_numbers([header(33), header(33), header(33)], (1, 1, 1), from_head=True) == ((3, 2, 1), "index")
    assert image_numbers([header(33), header(32)], (1, 1), from_head=True) == ((33, 32), "instance")


def test_the_overlays_go_beyond_the_sc_iod_only_by_the_declared_extension(stones: Case) -> None:
    """FrameOfReferenceUID, ImagePositionPatient and ImageOrientationPatient make the SC a Standard Extended SOP
    Class, declared in docs/conformance.md; dciodvfy names any other attribute that is not in the SC IOD."""
    assert STANDARD_EXTENSION == ("FrameOfReferenceUID", "ImageOrientationPatient", "ImagePositionPatient")
    overlays = [p for p in stones.paths if p.name.startswith("OT_")]
    assert overlays
    for path in overlays:
        errors, warnings = dciodvfy(path)
        assert not errors, (path.name, errors)
        extra = sorted(keyword_for_tag(Tag(int(group, 16), int(element, 16)))
                       for group, element in (EXTRA_ATTRIBUTE.findall(" ".join(warnings))))
        assert extra == sorted(STANDARD_EXTENSION), (path.name, warnings)
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        source = pydicom.dcmread(stones.volume.source_paths[
            stones.volume.sop_instance_uids.index(ds.SourceImageSequence[0].ReferencedSOPInstanceUID)],
            stop_before_pixels=True)
        for keyword in STANDARD_EXTENSION:
            assert ds[keyword].value == source[keyword].value
