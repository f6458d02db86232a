"""The SEG read back by highdicom: one segment per stone, the references, the coding, the geometry."""

from __future__ import annotations

import highdicom as hd
import numpy as np
import pydicom
import pytest

from inference.postprocess import shown
from inference.writers import MANUFACTURER, SEG_SERIES_NUMBER
from tests.writers.conftest import MODEL_NAME, MODEL_VERSION, Case
from uronode import __version__


@pytest.fixture(scope="module")
def seg(stones: Case) -> hd.seg.Segmentation:
    path = next(p for p in stones.paths if p.name.startswith("SEG_"))
    return hd.seg.segread(path)


def test_seg_has_one_segment_per_stone_equal_to_its_voxels(seg: hd.seg.Segmentation, stones: Case) -> None:
    """Segment N holds stone N's voxels and nothing else; together they are the findings' mask."""
    volume = stones.volume
    uids = list(volume.sop_instance_uids)
    assert seg.get_segment_numbers() == [1, 2, 3] and len(stones.findings.stones) == 3
    labels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=uids, combine_segments=True, assert_missing_frames_are_empty=True)
    np.testing.assert_array_equal(labels > 0, stones.findings.mask > 0)
    for i, stone in enumerate(stones.findings.stones):
        own = labels == i + 1
        assert int(own.sum()) == stone.voxel_count
        assert tuple(np.flatnonzero(own.any(axis=(1, 2)))) == stone.slice_indices


def test_seg_keeps_frames_only_where_a_segment_has_pixels(seg: hd.seg.Segmentation, stones: Case) -> None:
    """One frame per slice a stone spans, per stone (ten stones on 300 slices: tens of frames, not 3000)."""
    expected = sum(len(stone.slice_indices) for stone in stones.findings.stones)
    assert int(seg.NumberOfFrames) == expected == 4


def test_seg_frames_sit_exactly_on_the_source_slices(seg: hd.seg.Segmentation, stones: Case) -> None:
    sources = {}
    for path in stones.volume.source_paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        sources[ds.SOPInstanceUID] = ds
    seen = set()
    for frame in seg.PerFrameFunctionalGroupsSequence:
        uid = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        position = frame.PlanePositionSequence[0].ImagePositionPatient
        assert list(position) == list(sources[uid].ImagePositionPatient)
        seen.add(uid)
    with_stones = {stones.volume.sop_instance_uids[k] for s in stones.findings.stones for k in s.slice_indices}
    assert seen == with_stones
    measures = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    assert float(measures.SpacingBetweenSlices) == pytest.approx(stones.volume.slice_spacing)  # the source's


def test_seg_references_the_source_series_and_frame_of_reference(
    seg: hd.seg.Segmentation, stones: Case
) -> None:
    volume = stones.volume
    assert seg.StudyInstanceUID == volume.study_instance_uid
    assert seg.FrameOfReferenceUID == volume.frame_of_reference_uid
    assert [s.SeriesInstanceUID for s in seg.ReferencedSeriesSequence] == [volume.series_instance_uid]
    referenced = {i.ReferencedSOPInstanceUID for i in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced == set(volume.sop_instance_uids)


def test_seg_segments_are_coded_red_calculi_from_the_model(seg: hd.seg.Segmentation, stones: Case) -> None:
    assert seg.SegmentationType == "BINARY"
    for number in seg.get_segment_numbers():
        segment = seg.get_segment_description(number)
        assert segment.segment_label == f"Stone {number}"
        assert segment.tracking_id == f"Stone {number}"
        assert segment.segmented_property_category.value == "49755003"
        assert segment.segmented_property_type.value == "56381008"
        assert segment.segmented_property_type.scheme_designator == "SCT"
        assert segment.anatomic_regions[0].value == "122489005"
        algorithm = segment.SegmentationAlgorithmIdentificationSequence[0]
        assert algorithm.AlgorithmName == MODEL_NAME
        assert algorithm.AlgorithmVersion == MODEL_VERSION
        assert algorithm.AlgorithmFamilyCodeSequence[0].CodeValue == "123110"
        red = hd.color.CIELabColor.from_dicom_value(segment.RecommendedDisplayCIELabValue).to_rgb()
        assert red[0] > 200 and red[1] < 60 and red[2] < 60
    assert len({seg.get_segment_description(n).tracking_uid for n in seg.get_segment_numbers()}) == 3


def test_each_segment_says_its_stone_s_side_and_size(seg: hd.seg.Segmentation, stones: Case) -> None:
    """Probe 18: fifteen red "Stone N" segments with nothing to tell them apart in a segment list; the side is
    the region's laterality where the SR's finding site has one."""
    words = {"left": "left", "right": "right", "midline": "near midline", "unknown": "side not determined"}
    laterality = {"left": "7771000", "right": "24028007"}
    for number, stone in zip(seg.get_segment_numbers(), stones.findings.stones, strict=True):
        segment = seg.get_segment_description(number)
        assert segment.SegmentDescription == (f"{words[stone.side]}, {shown(stone.length_mm, 1)} mm, "
                                              f"mean {shown(stone.mean_hu, 0)} HU")
        modifiers = segment.AnatomicRegionSequence[0].get("AnatomicRegionModifierSequence", [])
        assert [m.CodeValue for m in modifiers] == ([laterality[stone.side]] if stone.side in laterality else [])


def test_seg_carries_the_node_identity_and_source_attributes(seg: hd.seg.Segmentation, stones: Case) -> None:
    source = pydicom.dcmread(stones.volume.source_paths[0], stop_before_pixels=True)
    assert seg.Manufacturer == MANUFACTURER
    assert seg.ManufacturerModelName == MODEL_NAME
    assert seg.SoftwareVersions == [MODEL_VERSION, f"uronode {__version__}"]
    assert seg.SeriesDescription == f"AI urinary stones mask: series 1 (uronode synthetic a...) v{MODEL_VERSION}"
    assert source.SeriesNumber == 1 and seg.SeriesNumber == 1000 + SEG_SERIES_NUMBER
    assert seg.SeriesDescription
    assert seg.SpecificCharacterSet == source.SpecificCharacterSet
    assert seg.PatientID == source.PatientID
    assert seg.BodyPartExamined == source.BodyPartExamined
