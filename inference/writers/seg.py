"""The stone mask as a binary DICOM SEG (highdicom), one frame per source slice.

One segment, "Urinary stone" (coded as in ``inference.writers.coding``), red,
with the model as algorithm identification. ``omit_empty_frames=False`` keeps
one frame per source slice: viewers (OHIF) align such a SEG best, and every
frame's position is the source slice's own (highdicom copies it from the source
headers). No SEG is made when there is no stone (the SR says so instead).
"""

from __future__ import annotations

import logging

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset

import inference.writers.coding as coding
from inference.postprocess import Findings
from inference.writers.errors import WriterError
from inference.writers.sources import (
    DEVICE_SERIAL_NUMBER,
    MANUFACTURER,
    SEG_SERIES_DESCRIPTION,
    SEG_SERIES_NUMBER,
    Sources,
)

logger = logging.getLogger(__name__)

SEGMENT_NUMBER = 1
SEGMENT_LABEL = "Urinary stone"
RED = hd.color.CIELabColor.from_string("red")


def seg_uids(sources: Sources) -> tuple[str, str]:
    """(SeriesInstanceUID, SOPInstanceUID) of the SEG."""
    return sources.identity.uid("seg", "series"), sources.identity.uid("seg", "instance")


def segment_description(sources: Sources) -> hd.seg.SegmentDescription:
    identity = sources.identity
    return hd.seg.SegmentDescription(
        segment_number=SEGMENT_NUMBER,
        segment_label=SEGMENT_LABEL,
        segmented_property_category=coding.MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
        segmented_property_type=coding.CALCULUS,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name=identity.model_name,
            family=coding.ARTIFICIAL_INTELLIGENCE,
            version=identity.model_version,
        ),
        tracking_uid=identity.uid("seg", "segment", SEGMENT_NUMBER),
        tracking_id="urinary stones",
        anatomic_regions=[coding.URINARY_SYSTEM],
        display_color=RED,
    )


def _frames_in_source_order(findings: Findings, sources: Sources, frame_numbers: tuple[int, ...]) -> np.ndarray:
    """The mask as the frames of the source: slice order, or the multi-frame source's frame order."""
    mask = (findings.mask > 0).astype(np.uint8)
    if not sources.multiframe:
        return mask
    count = int(sources.unique[0].get("NumberOfFrames") or 1)
    frames = np.zeros((count, *mask.shape[1:]), dtype=np.uint8)
    for k, number in enumerate(frame_numbers):
        if not 1 <= number <= count:
            raise WriterError(f"slice {k + 1} names frame {number} of a {count}-frame source")
        frames[number - 1] = mask[k]
    return frames


def build_segmentation(findings: Findings, sources: Sources, frame_numbers: tuple[int, ...]) -> Dataset:
    """The binary SEG of ``findings.mask``; ``WriterError`` when there is no stone."""
    if not findings.stones or not findings.mask.any():
        raise WriterError("no stone was found: no SEG is written for an empty mask")
    series_uid, sop_uid = seg_uids(sources)
    source_images = list(sources.unique if sources.multiframe else sources.datasets)
    first = source_images[0]
    seg = hd.seg.Segmentation(
        source_images=source_images,
        pixel_array=_frames_in_source_order(findings, sources, frame_numbers),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment_description(sources)],
        series_instance_uid=series_uid,
        series_number=SEG_SERIES_NUMBER,
        sop_instance_uid=sop_uid,
        instance_number=1,
        omit_empty_frames=False,
        series_description=SEG_SERIES_DESCRIPTION,
        content_label="STONES",
        content_description="Urinary stones found by the AI model",
        specific_character_set=first.get("SpecificCharacterSet"),
        manufacturer=MANUFACTURER,
        manufacturer_model_name=sources.identity.model_name,
        software_versions=sources.identity.model_version,
        device_serial_number=DEVICE_SERIAL_NUMBER,
    )
    if "BodyPartExamined" in first:
        seg.BodyPartExamined = first.BodyPartExamined
    logger.info("SEG of series %s: %d frame(s), %d stone(s)", findings.series_instance_uid,
                int(seg.NumberOfFrames), len(findings.stones))
    return seg
