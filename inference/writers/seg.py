"""The stone mask as a binary DICOM SEG (highdicom), one segment per stone.

Segment N is "Stone N", the stone numbered N in the SR and on the overlay images
(``Findings.stones[N - 1]``), coded as in ``inference.writers.coding``, red,
with the model as algorithm identification, and with the tracking identifier
and tracking UID of that stone's groups in the SR: every TID 1411 group
references its own stone's segment, so a viewer or an SR consumer that shows or
re-measures a stone's ROI gets that stone, not all of them.

Frames are kept only where a segment has pixels (``omit_empty_frames``): one
frame per slice and stone, on the slices the stone spans (each stone's frames
are contiguous, one 26-connected component), so that ten stones on a
300-slice series stay a SEG of tens of frames, not 3000. Every frame's position
is its source slice's own (highdicom copies it from the source headers); the
shared pixel measures state SpacingBetweenSlices only where it is known: from
the source slices' positions, or a lone slice's own SpacingBetweenSlices
(highdicom would write 1.0 for one slice), written as a tidy decimal string
(``tidy_ds``: "1.5", not highdicom's "1.50000000000000" from the float noise of
the positions' differences). SeriesDate/SeriesTime are the time
the SEG was made (its ContentDate/ContentTime). No SEG is made when there is no
stone (the SR says so instead). Its SeriesNumber is 1000 x the source's
SeriesNumber + 901 (901 where the source has none), its SeriesDescription names
the source series and the model version (``inference.writers.sources``).
"""

from __future__ import annotations

import copy
import datetime
import logging

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.valuerep import DA, TM
from scipy import ndimage

import inference.writers.coding as coding
from inference.postprocess import SIDE_WORDS, Findings, Stone, shown
from inference.writers.errors import WriterError
from inference.writers.sources import (
    DEVICE_SERIAL_NUMBER,
    MANUFACTURER,
    SEG_SERIES_DESCRIPTION,
    SEG_SERIES_NUMBER,
    Sources,
    copy_request_attributes,
)

logger = logging.getLogger(__name__)

RED = hd.color.CIELabColor.from_string("red")


def segment_number(index: int) -> int:
    """The segment of stone ``index`` (0-based in ``Findings.stones``): stone N is segment N."""
    return index + 1


def segment_label(index: int) -> str:
    return f"Stone {index + 1}"


def stone_tracking_uid(sources: Sources, index: int) -> str:
    """One UID for the stone in the SEG (its segment) and in the SR (its volumetric and planar groups)."""
    return sources.identity.uid("sr", "stone", index)


def seg_uids(sources: Sources) -> tuple[str, str]:
    """(SeriesInstanceUID, SOPInstanceUID) of the SEG."""
    return sources.identity.series_uid("seg", "series"), sources.identity.uid("seg", "instance")


def segment_description(sources: Sources, index: int, stone: Stone | None = None) -> hd.seg.SegmentDescription:
    """Stone ``index``'s segment: "Stone N", a calculus in the urinary system, red. With ``stone``, its side as
    the region's laterality (as the SR's finding site has it) and a SegmentDescription in words ("right, 18.8 mm,
    mean 1740 HU"): a viewer's or a PACS's segment list tells the stones apart (probe 18: fifteen red "Stone N"
    with nothing else)."""
    identity = sources.identity
    segment = hd.seg.SegmentDescription(
        segment_number=segment_number(index),
        segment_label=segment_label(index),
        segmented_property_category=coding.MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
        segmented_property_type=coding.CALCULUS,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name=identity.model_name,
            family=coding.ARTIFICIAL_INTELLIGENCE,
            version=identity.model_version,
        ),
        tracking_uid=stone_tracking_uid(sources, index),
        tracking_id=segment_label(index),
        anatomic_regions=[coding.URINARY_SYSTEM],
        display_color=RED,
    )
    if stone is not None:
        side = SIDE_WORDS.get(stone.side, stone.side)
        segment.SegmentDescription = (f"{side}, {shown(stone.length_mm, 1)} mm, mean {shown(stone.mean_hu, 0)} HU")[:64]
        if stone.side in coding.LATERALITY:
            code = coding.LATERALITY[stone.side]
            region = copy.deepcopy(segment.AnatomicRegionSequence[0])  # not the shared constant's item
            region.AnatomicRegionModifierSequence = [hd.sr.CodedConcept(code.value, code.scheme_designator,
                                                                        code.meaning)]
            segment.AnatomicRegionSequence = [region]
    return segment


def stone_labels(findings: Findings) -> np.ndarray:
    """The mask with each voxel labelled by its stone's segment number (0 where no stone is), shaped like
    ``findings.mask``: uint8, or uint16 beyond 255 stones.

    The stones are the 26-connected components of the mask (``measure_stones``); each is found by its
    ``first_voxel``, or, for a stone made without one, by its slices and voxel count. Voxels of no stone
    (a component the findings do not list) are left out. ``WriterError`` when a stone is not in the mask.
    """
    mask = findings.mask > 0
    dtype = np.uint8 if len(findings.stones) < 256 else np.uint16
    out = np.zeros(mask.shape, dtype=dtype)
    spans = [np.flatnonzero(mask.any(axis=axes)) for axes in ((1, 2), (0, 2), (0, 1))]
    if any(span.size == 0 for span in spans):
        raise WriterError("the findings' mask is empty")
    origin = np.array([int(span[0]) for span in spans])
    crop = tuple(slice(int(span[0]), int(span[-1]) + 1) for span in spans)
    components, _ = ndimage.label(mask[crop], structure=np.ones((3, 3, 3), dtype=bool))
    objects = ndimage.find_objects(components)
    taken: dict[int, int] = {}
    for index, stone in enumerate(findings.stones):
        label = 0
        if stone.first_voxel is not None:
            local = np.asarray(stone.first_voxel) - origin
            if ((local >= 0) & (local < np.asarray(components.shape))).all():
                label = int(components[tuple(local)])
        else:
            for candidate, box in enumerate(objects, start=1):
                if box is None or candidate in taken:
                    continue
                voxels = components[box] == candidate
                slices = tuple(int(k) + box[0].start + int(origin[0]) for k in np.flatnonzero(voxels.any(axis=(1, 2))))
                if slices == stone.slice_indices and int(voxels.sum()) == stone.voxel_count:
                    label = candidate
                    break
        if label == 0 or label in taken:
            raise WriterError(f"stone {index + 1} is not a component of the findings' mask of its own")
        taken[label] = index
        box = objects[label - 1]
        assert box is not None
        region = out[crop][box]
        region[components[box] == label] = segment_number(index)
    return out


def _frames_in_source_order(labels: np.ndarray, sources: Sources, frame_numbers: tuple[int, ...]) -> np.ndarray:
    """The labelled mask as the frames of the source: slice order, or the multi-frame source's frame order."""
    if not sources.multiframe:
        return labels
    count = int(sources.unique[0].get("NumberOfFrames") or 1)
    frames = np.zeros((count, *labels.shape[1:]), dtype=labels.dtype)
    for k, number in enumerate(frame_numbers):
        if not 1 <= number <= count:
            raise WriterError(f"slice {k + 1} names frame {number} of a {count}-frame source")
        frames[number - 1] = labels[k]
    return frames


def tidy_ds(value: object) -> str:
    """A DS value with at most 6 decimals and no trailing zeros: 1.5000000000000002 -> "1.5", 2.0 -> "2"."""
    text = f"{float(str(value)):.6f}".rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


def _tidy_spacing(seg: Dataset) -> None:
    """The shared SpacingBetweenSlices as ``tidy_ds`` writes it (highdicom formats the float it computes from the
    frames' positions with 16 characters)."""
    measures = seg.SharedFunctionalGroupsSequence[0].get("PixelMeasuresSequence")
    if measures and measures[0].get("SpacingBetweenSlices") not in (None, ""):
        try:
            tidy = tidy_ds(measures[0].SpacingBetweenSlices)
        except ValueError:
            return  # not a number: the source's own, as it was
        if float(tidy) != 0:  # not rounded away
            measures[0].SpacingBetweenSlices = tidy


def _lone_slice_spacing(seg: Dataset, first: Dataset, slices: int) -> None:
    """One slice has no spacing between slices: highdicom's 1.0 goes, the source's own value (if it states
    one) takes its place."""
    if slices != 1:
        return
    measures = seg.SharedFunctionalGroupsSequence[0].get("PixelMeasuresSequence")
    if not measures:
        return
    own = first.get("SpacingBetweenSlices")
    if own is None and "SharedFunctionalGroupsSequence" in first:
        shared = first.SharedFunctionalGroupsSequence[0].get("PixelMeasuresSequence")
        own = shared[0].get("SpacingBetweenSlices") if shared else None
    if own not in (None, ""):
        measures[0].SpacingBetweenSlices = own
    elif "SpacingBetweenSlices" in measures[0]:
        del measures[0].SpacingBetweenSlices


def build_segmentation(findings: Findings, sources: Sources, frame_numbers: tuple[int, ...], *,
                       created: datetime.datetime | None = None) -> Dataset:
    """The binary SEG of ``findings.mask``, one segment per stone; ``WriterError`` when there is no stone.

    ``created`` (default: now) is its SeriesDate/SeriesTime and ContentDate/ContentTime."""
    if not findings.stones or not findings.mask.any():
        raise WriterError("no stone was found: no SEG is written for an empty mask")
    series_uid, sop_uid = seg_uids(sources)
    source_images = list(sources.unique if sources.multiframe else sources.datasets)
    first = source_images[0]
    created = created or datetime.datetime.now()
    labels = stone_labels(findings)
    seg = hd.seg.Segmentation(
        source_images=source_images,
        pixel_array=_frames_in_source_order(labels, sources, frame_numbers),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment_description(sources, i, stone) for i, stone in enumerate(findings.stones)],
        series_instance_uid=series_uid,
        series_number=sources.identity.series_number(SEG_SERIES_NUMBER),
        sop_instance_uid=sop_uid,
        instance_number=1,
        omit_empty_frames=True,
        series_description=sources.identity.description(SEG_SERIES_DESCRIPTION),
        content_label="STONES",
        content_description="Urinary stones found by the AI model",
        specific_character_set=first.get("SpecificCharacterSet"),
        manufacturer=MANUFACTURER,
        manufacturer_model_name=sources.identity.model_name,
        software_versions=sources.identity.software_versions,
        device_serial_number=DEVICE_SERIAL_NUMBER,
        series_date=created.date(),
        series_time=created.time(),
        content_date=created.date(),
        content_time=created.time(),
    )
    _lone_slice_spacing(seg, first, findings.mask.shape[0])
    _tidy_spacing(seg)
    seg.SeriesDate, seg.SeriesTime = DA(created.date()), TM(created.time())
    if "BodyPartExamined" in first:
        seg.BodyPartExamined = first.BodyPartExamined
    copy_request_attributes(seg, first)
    if findings.cautions:  # probe 33: the SEG said nothing of a contrast phase the SR and overlays warned of
        seg.ImageComments = "\n".join(f"Caution: {c}" for c in findings.cautions)[:10240]
    logger.info("SEG of series %s: %d frame(s), %d stone(s)", findings.series_instance_uid,
                int(seg.NumberOfFrames), len(findings.stones))
    return seg
