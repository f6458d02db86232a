"""The SEG read back by highdicom: the mask, the references, the coding, the geometry."""

from __future__ import annotations

import highdicom as hd
import numpy as np
import pydicom
import pytest

from inference.writers import MANUFACTURER, SEG_SERIES_NUMBER
from tests.writers.conftest import MODEL_NAME, MODEL_VERSION, Case


@pytest.fixture(scope="module")
def seg(stones: Case) -> hd.seg.Segmentation:
    path = next(p for p in stones.paths if p.name.startswith("SEG_"))
    return hd.seg.segread(path)


def test_seg_mask_equals_findings_mask_frame_by_frame(seg: hd.seg.Segmentation, stones: Case) -> None:
    volume = stones.volume
    assert int(seg.NumberOfFrames) == volume.shape[0]
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=list(volume.sop_instance_uids), segment_numbers=[1]
    )
    np.testing.assert_array_equal(pixels[..., 0], stones.findings.mask)


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
    assert seen == set(sources)


def test_seg_references_the_source_series_and_frame_of_reference(
    seg: hd.seg.Segmentation, stones: Case
) -> None:
    volume = stones.volume
    assert seg.StudyInstanceUID == volume.study_instance_uid
    assert seg.FrameOfReferenceUID == volume.frame_of_reference_uid
    assert [s.SeriesInstanceUID for s in seg.ReferencedSeriesSequence] == [volume.series_instance_uid]
    referenced = {i.ReferencedSOPInstanceUID for i in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced == set(volume.sop_instance_uids)


def test_seg_segment_is_a_coded_red_calculus_from_the_model(seg: hd.seg.Segmentation) -> None:
    assert seg.SegmentationType == "BINARY"
    assert seg.get_segment_numbers() == [1]
    segment = seg.get_segment_description(1)
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


def test_seg_carries_the_node_identity_and_source_attributes(seg: hd.seg.Segmentation, stones: Case) -> None:
    source = pydicom.dcmread(stones.volume.source_paths[0], stop_before_pixels=True)
    assert seg.Manufacturer == MANUFACTURER
    assert seg.ManufacturerModelName == MODEL_NAME
    assert seg.SoftwareVersions == MODEL_VERSION
    assert seg.SeriesNumber == SEG_SERIES_NUMBER
    assert seg.SeriesDescription
    assert seg.SpecificCharacterSet == source.SpecificCharacterSet
    assert seg.PatientID == source.PatientID
    assert seg.BodyPartExamined == source.BodyPartExamined
