"""The measurement report: a TID 1500 Comprehensive 3D SR (highdicom).

One volumetric measurement group (TID 1411) per stone, numbered as on the
overlay images ("Stone 1" is the first stone of ``Findings.stones``), with:
finding type *Calculus*, finding site *Urinary system* with the side as its
laterality (or the topographical modifier *Midline*), the SEG segment and the
source slices it spans as the referenced segment, and four measurements:
largest in-plane diameter (axial for an axial series; mm, derivation Maximum), volume (mm3), mean and maximum
attenuation (HU).

Each stone also has a planar group (TID 1410) with the same tracking
identifier and tracking UID, so that image viewers can draw, list and jump to
it: its image region is a closed POLYLINE, the stone's box on the CT slice
where the stone is widest (the green box of the overlay images), with the
finding, the site and a comment that states the stone's side and measurements
in words. OHIF's SR extension merges groups that share a tracking UID, draws the
region as a rectangle and uses the comment as its label; the measurements
themselves stay in the volumetric group.

When nothing is found there is no SEG, and the report holds one group (TID 1501)
whose qualitative evaluation says "Calculus: Absent" (highdicom's
``MeasurementReport`` refuses an empty list of groups).
"""

from __future__ import annotations

import logging

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

import inference.writers.coding as coding
from inference.postprocess import Findings, SliceBox, Stone
from inference.volume import Volume
from inference.writers.seg import SEGMENT_NUMBER
from inference.writers.sources import (
    DEVICE_SERIAL_NUMBER,
    MANUFACTURER,
    SR_SERIES_DESCRIPTION,
    SR_SERIES_NUMBER,
    Identity,
    Sources,
)

logger = logging.getLogger(__name__)

COMMENT = codes.DCM.Comment


def _tracking(index: int, sources: Sources) -> hd.sr.TrackingIdentifier:
    """The stone's tracking identifier and UID, one for its volumetric and its planar group (viewers
    merge groups that share it)."""
    return hd.sr.TrackingIdentifier(uid=sources.identity.uid("sr", "stone", index), identifier=f"Stone {index + 1}")


def _algorithm(sources: Sources) -> hd.sr.AlgorithmIdentification:
    return hd.sr.AlgorithmIdentification(
        name=sources.identity.model_name, version=sources.identity.model_version
    )


def _finding_site(side: str) -> hd.sr.FindingSite:
    if side in coding.LATERALITY:
        return hd.sr.FindingSite(coding.URINARY_SYSTEM, laterality=coding.LATERALITY[side])
    if side == "midline":
        return hd.sr.FindingSite(coding.URINARY_SYSTEM, topographical_modifier=coding.MIDLINE)
    return hd.sr.FindingSite(coding.URINARY_SYSTEM)


def _measurements(stone: Stone, sources: Sources) -> list[hd.sr.Measurement]:
    algorithm = _algorithm(sources)
    return [
        hd.sr.Measurement(name=coding.DIAMETER, value=round(stone.max_diameter_mm, 2),
                          unit=coding.MILLIMETER, derivation=coding.MAXIMUM, algorithm_id=algorithm),
        hd.sr.Measurement(name=coding.VOLUME, value=round(stone.volume_mm3, 2),
                          unit=coding.CUBIC_MILLIMETER, algorithm_id=algorithm),
        hd.sr.Measurement(name=coding.ATTENUATION_COEFFICIENT, value=round(stone.mean_hu, 1),
                          unit=coding.HOUNSFIELD_UNIT, derivation=coding.MEAN, algorithm_id=algorithm),
        hd.sr.Measurement(name=coding.ATTENUATION_COEFFICIENT, value=round(stone.max_hu, 1),
                          unit=coding.HOUNSFIELD_UNIT, derivation=coding.MAXIMUM, algorithm_id=algorithm),
    ]


def _stone_group(index: int, stone: Stone, volume: Volume, sources: Sources,
                 seg: Dataset) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
    source_images = []
    for k in stone.slice_indices:
        ds = sources.datasets[k]
        frames = [volume.frame_numbers[k]] if "NumberOfFrames" in ds else None
        source_images.append(hd.sr.SourceImageForSegmentation(
            referenced_sop_class_uid=ds.SOPClassUID,
            referenced_sop_instance_uid=volume.sop_instance_uids[k],
            referenced_frame_numbers=frames,
        ))
    segment = hd.sr.ReferencedSegment(
        sop_class_uid=seg.SOPClassUID,
        sop_instance_uid=seg.SOPInstanceUID,
        segment_number=SEGMENT_NUMBER,
        source_images=source_images,
    )
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=_tracking(index, sources),
        referenced_segment=segment,
        finding_type=coding.CALCULUS,
        algorithm_id=_algorithm(sources),
        finding_sites=[_finding_site(stone.side)],
        measurements=_measurements(stone, sources),
    )


def _widest_box(index: int, stone: Stone, volume: Volume, findings: Findings) -> SliceBox:
    """The stone's box on the slice where the stone has the most voxels (the first such slice).

    A stone that has no box (findings made by hand) gets one from the mask around its centroid.
    """
    boxes = [b for b in findings.boxes if b.stone_index == index]
    if not boxes:
        boxes = [_box_around_centroid(index, stone, volume, findings, k) for k in stone.slice_indices]

    def voxels(b: SliceBox) -> int:
        return int(np.count_nonzero(
            findings.mask[b.slice_index, b.row_min:b.row_max + 1, b.column_min:b.column_max + 1]
        ))

    return max(boxes, key=lambda b: (voxels(b), -b.slice_index))


def _box_around_centroid(index: int, stone: Stone, volume: Volume, findings: Findings, k: int) -> SliceBox:
    """The mask's pixels on slice ``k`` within the stone's diameter of its centroid, boxed."""
    offset = np.asarray(stone.centroid_mm) - volume.positions[k]
    column = float(offset @ np.asarray(volume.row_direction)) / volume.pixel_spacing[1]
    row = float(offset @ np.asarray(volume.column_direction)) / volume.pixel_spacing[0]
    reach = stone.max_diameter_mm / min(volume.pixel_spacing) + 1.0
    rows, columns = volume.shape[1], volume.shape[2]
    r0, r1 = max(0, int(row - reach)), min(rows - 1, int(np.ceil(row + reach)))
    c0, c1 = max(0, int(column - reach)), min(columns - 1, int(np.ceil(column + reach)))
    on = np.argwhere(findings.mask[k, r0:r1 + 1, c0:c1 + 1])
    if on.size:
        r0, r1 = r0 + int(on[:, 0].min()), r0 + int(on[:, 0].max())
        c0, c1 = c0 + int(on[:, 1].min()), c0 + int(on[:, 1].max())
    return SliceBox(slice_index=k, sop_instance_uid=volume.sop_instance_uids[k], frame_number=volume.frame_numbers[k],
                    stone_index=index, row_min=r0, column_min=c0, row_max=r1, column_max=c1)


def stone_label(index: int, stone: Stone) -> str:
    """The stone in words, as viewers show it: 'Stone 1, left: 6.2 mm, 85 mm3, mean 850 HU'."""
    return (f"Stone {index + 1}, {stone.side}: {stone.max_diameter_mm:.1f} mm, {stone.volume_mm3:.0f} mm3, "
            f"mean {stone.mean_hu:.0f} HU")


def _region_group(index: int, stone: Stone, box: SliceBox, sources: Sources,
                  ) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    """Where a viewer finds the stone: its box on its widest slice, as a closed POLYLINE (column, row)."""
    ds = sources.datasets[box.slice_index]
    c0, r0 = float(box.column_min), float(box.row_min)
    c1, r1 = float(box.column_max + 1), float(box.row_max + 1)  # the outer edge of the last pixel
    region = hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
        graphic_data=np.array([[c0, r0], [c1, r0], [c1, r1], [c0, r1], [c0, r0]]),
        source_image=hd.sr.SourceImageForRegion(
            referenced_sop_class_uid=ds.SOPClassUID,
            referenced_sop_instance_uid=box.sop_instance_uid,
            referenced_frame_numbers=[box.frame_number] if "NumberOfFrames" in ds else None,
        ),
    )
    group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=_tracking(index, sources),
        referenced_region=region,
        finding_type=coding.CALCULUS,
        algorithm_id=_algorithm(sources),
        finding_sites=[_finding_site(stone.side)],
    )
    group[0].ContentSequence.append(hd.sr.TextContentItem(
        name=COMMENT, value=stone_label(index, stone), relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    ))
    return group


def _absent_group(sources: Sources) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=sources.identity.uid("sr", "absent"), identifier="Urinary calculus"
        ),
        finding_type=coding.CALCULUS,
        algorithm_id=_algorithm(sources),
        finding_sites=[hd.sr.FindingSite(coding.URINARY_SYSTEM)],
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(coding.CALCULUS, coding.ABSENT)],
    )


def device_observer(identity: Identity) -> hd.sr.ObserverContext:
    """The model as the observing device (TID 1004), the same in the SR and the key objects."""
    return hd.sr.ObserverContext(
        observer_type=hd.sr.CodedConcept("121007", "DCM", "Device"),
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=identity.uid("device"),
            name=identity.model_name,
            manufacturer_name=MANUFACTURER,
            model_name=identity.model_name,
        ),
    )


def sr_uids(sources: Sources) -> tuple[str, str]:
    """(SeriesInstanceUID, SOPInstanceUID) of the SR."""
    return sources.identity.uid("sr", "series"), sources.identity.uid("sr", "instance")


def build_report(volume: Volume, findings: Findings, sources: Sources, seg: Dataset | None) -> Dataset:
    """The TID 1500 report of the findings; ``seg`` is None exactly when there is no stone."""
    identity = sources.identity
    if findings.stones and seg is None:
        raise ValueError("seg is required when there are stones")
    groups: list[
        hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations
        | hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
        | hd.sr.MeasurementsAndQualitativeEvaluations
    ]
    if seg is None:
        groups = [_absent_group(sources)]
    else:
        groups = [_stone_group(i, stone, volume, sources, seg) for i, stone in enumerate(findings.stones)]
        groups += [_region_group(i, stone, _widest_box(i, stone, volume, findings), sources)
                   for i, stone in enumerate(findings.stones)]
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device_observer(identity)),
        procedure_reported=coding.IMAGING_PROCEDURE,
        imaging_measurements=groups,
    )
    evidence = list(sources.unique) + ([seg] if seg is not None else [])
    series_uid, sop_uid = sr_uids(sources)
    first = sources.unique[0]
    sr = hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=report,
        series_instance_uid=series_uid,
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=sop_uid,
        instance_number=1,
        is_complete=True,
        series_description=SR_SERIES_DESCRIPTION,
        specific_character_set=first.get("SpecificCharacterSet"),
        manufacturer=MANUFACTURER,
        manufacturer_model_name=identity.model_name,
        software_versions=identity.model_version,
        device_serial_number=DEVICE_SERIAL_NUMBER,
    )
    logger.info("SR of series %s: %d group(s)", volume.series_instance_uid, len(groups))
    return sr
