"""The overlay Secondary Captures: red stones, green boxes, burned-in text, source geometry."""

from __future__ import annotations

import numpy as np
import pydicom
from pydicom.uid import ExplicitVRLittleEndian

from inference.writers import MANUFACTURER, SC_SERIES_NUMBER, write_results
from inference.writers.sc import DISCLAIMER, summary_lines
from tests.writers.conftest import MODEL_NAME, Case


def _read(stones: Case) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(p) for p in stones.paths if p.name.startswith("OT_")]


def _slice_of(ds: pydicom.Dataset, stones: Case) -> int:
    uid = ds.SourceImageSequence[0].ReferencedSOPInstanceUID
    return stones.volume.sop_instance_uids.index(uid)


def test_one_capture_per_slice_with_a_stone(stones: Case) -> None:
    captures = _read(stones)
    assert sorted(_slice_of(ds, stones) for ds in captures) == [4, 5, 8]
    assert len({ds.SeriesInstanceUID for ds in captures}) == 1


def test_capture_pixels_are_red_on_stones_and_green_on_box_outlines(stones: Case) -> None:
    for ds in _read(stones):
        k = _slice_of(ds, stones)
        rgb = ds.pixel_array
        assert rgb.shape == (*stones.volume.shape[1:], 3)
        on_stone = stones.findings.mask[k] > 0
        assert on_stone.any()
        red = rgb[on_stone].astype(int)
        assert (red[:, 0] > 150).all() and (red[:, 1] < 100).all() and (red[:, 2] < 100).all()
        boxes = [b for b in stones.findings.boxes if b.slice_index == k]
        assert boxes
        for b in boxes:
            outline = np.concatenate([
                rgb[b.row_min, b.column_min:b.column_max + 1],
                rgb[b.row_max, b.column_min:b.column_max + 1],
                rgb[b.row_min:b.row_max + 1, b.column_min],
                rgb[b.row_min:b.row_max + 1, b.column_max],
            ])
            assert (outline == [0, 255, 0]).all()
            assert b.row_max - b.row_min >= 2  # the margin frames even a one-pixel stone


def test_capture_has_burned_in_text_outside_the_findings(stones: Case) -> None:
    for ds in _read(stones):
        rgb = ds.pixel_array
        yellow = (rgb[..., 0] == 255) & (rgb[..., 1] == 255) & (rgb[..., 2] == 0)
        assert yellow.any()


def test_burned_in_text_says_count_largest_and_disclaimer(stones: Case) -> None:
    lines = summary_lines(stones.findings, 4)
    largest = max(s.length_mm for s in stones.findings.stones)  # the longest extent, as the SR's maximum
    assert largest > max(s.max_diameter_mm for s in stones.findings.stones)  # one spans two slices
    assert lines[0] == "AI: 3 urinary stones, 2 on this slice"
    (index,) = [i for i, s in enumerate(stones.findings.stones) if s.length_mm == largest]
    side = {"left": "left", "right": "right", "midline": "near midline", "unknown": "side not determined"}[
        stones.findings.stones[index].side]
    assert lines[1] == f"Largest: {largest:.1f} mm (stone {index + 1}, {side})"  # which one, and where (probe 18)
    assert lines[-1] == DISCLAIMER == "AI result - not for primary diagnosis"


def test_capture_attributes_and_geometry_come_from_the_source_slice(stones: Case) -> None:
    for ds in _read(stones):
        source = pydicom.dcmread(stones.volume.source_paths[_slice_of(ds, stones)], stop_before_pixels=True)
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
        assert list(ds.ImageType) == ["DERIVED", "SECONDARY"]
        assert ds.BurnedInAnnotation == "YES"
        assert ds.PhotometricInterpretation == "RGB" and ds.SamplesPerPixel == 3
        assert ds.StudyInstanceUID == source.StudyInstanceUID
        assert ds.SeriesInstanceUID != source.SeriesInstanceUID
        assert ds.SeriesNumber == 1000 * source.SeriesNumber + SC_SERIES_NUMBER
        assert ds.SeriesDescription.startswith(f"AI urinary stones overlay: series {source.SeriesNumber} (")
        assert ds.Manufacturer == MANUFACTURER and ds.ManufacturerModelName == MODEL_NAME
        assert ds.BodyPartExamined == source.BodyPartExamined
        assert ds.ImagePositionPatient == source.ImagePositionPatient
        assert ds.ImageOrientationPatient == source.ImageOrientationPatient
        assert ds.PixelSpacing == source.PixelSpacing
        assert ds.FrameOfReferenceUID == source.FrameOfReferenceUID
        assert ds.PatientID == source.PatientID


def test_every_slice_mode_makes_one_capture_per_slice(stones: Case) -> None:
    results = write_results(stones.volume, stones.findings, sc_every_slice=True)
    assert len(results.secondary_captures) == stones.volume.shape[0]
    default_series = stones.results.secondary_captures[0].SeriesInstanceUID
    assert results.secondary_captures[0].SeriesInstanceUID != default_series


def test_the_no_stone_summary_image_says_none_was_detected_and_that_this_excludes_nothing(no_stones: Case) -> None:
    """Probe 42: with no stone the overlay series is one image that says so, burned in (a PACS that takes the
    overlays alone, results ["sc"], had nothing to show that the AI ran)."""
    from inference.writers.sc import NEGATIVE_LINE
    from tests.writers.conftest import dciodvfy

    images = no_stones.volume.shape[0]
    lines = summary_lines(no_stones.findings, images // 2, images)
    assert lines == [f"AI: no urinary stone detected in the {images} images of this series", NEGATIVE_LINE,
                     DISCLAIMER]
    assert summary_lines(no_stones.findings, 0, 1)[0] == "AI: no urinary stone detected on this one image"
    (path,) = [p for p in no_stones.paths if p.name.startswith("OT_")]
    rgb = pydicom.dcmread(path).pixel_array
    yellow = (rgb[..., 0] == 255) & (rgb[..., 1] == 255) & (rgb[..., 2] == 0)
    assert yellow[: rgb.shape[0] // 3].any() and yellow[-rgb.shape[0] // 6:].any()  # the verdict, the disclaimer
    red = (rgb[..., 0] > 150) & (rgb[..., 1] < 100) & (rgb[..., 2] < 100)
    assert not red.any()  # no stone painted
    errors, _ = dciodvfy(path)
    assert errors == []
