"""The measurement report: a TID 1500 Comprehensive 3D SR (highdicom).

One volumetric measurement group (TID 1411) per stone, numbered as on the
overlay images ("Stone 1" is the first stone of ``Findings.stones``), with:
finding type *Calculus*, finding site *Urinary system* with the side as its
laterality (or the topographical modifier *Midline*), the SEG segment and the
source slices it spans as the referenced segment, and four measurements:
largest axial diameter (mm, derivation Maximum), volume (mm3), mean and maximum
attenuation (HU).

When nothing is found there is no SEG, and the report holds one group (TID 1501)
whose qualitative evaluation says "Calculus: Absent" (highdicom's
``MeasurementReport`` refuses an empty list of groups).
"""

from __future__ import annotations

import logging

import highdicom as hd
from pydicom.dataset import Dataset

import inference.writers.coding as coding
from inference.postprocess import Findings, Stone
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
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=sources.identity.uid("sr", "stone", index), identifier=f"Stone {index + 1}"
        ),
        referenced_segment=segment,
        finding_type=coding.CALCULUS,
        algorithm_id=_algorithm(sources),
        finding_sites=[_finding_site(stone.side)],
        measurements=_measurements(stone, sources),
    )


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
    groups: list = [
        _stone_group(i, stone, volume, sources, seg) for i, stone in enumerate(findings.stones)
    ] if seg is not None else [_absent_group(sources)]
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
