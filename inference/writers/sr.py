"""The measurement report: a TID 1500 Comprehensive 3D SR (highdicom).

One volumetric measurement group (TID 1411) per stone, numbered as on the
overlay images ("Stone 1" is the first stone of ``Findings.stones``), with:
finding type *Calculus*, finding site *Urinary system* with the side as its
laterality where the stone lies clearly to one side (``Stone.side``; a stone
near the midline, which may lie in the bladder, and one whose side the image cannot tell, get no
laterality), the stone's
own SEG segment ("Stone N", segment N, the same tracking UID) and the source
slices it spans as the referenced segment, and five measurements: the stone's
length (its largest extent in any direction, mm, Diameter with derivation
Maximum: ``Stone.length_mm``), its largest axial diameter (Long Axis: ``Stone.max_diameter_mm``), volume
(mm3), mean and maximum attenuation (HU); on a lone image, which shows one plane of a stone, no volume and
no long axis, and the length is the in-plane one (the comments say so).
Lengths are given to 0.1 mm, volumes to 0.1 mm3 and HU to 1, rounded as a person rounds (``half_up``).

Each stone also has a planar group (TID 1410) with the same tracking
identifier and tracking UID, so that image viewers can draw, list and jump to
it: its image region is a closed POLYLINE, the stone's own box (no margin) on
the CT slice where its in-plane diameter is largest (the most voxels, then the
first slice, break ties), with the finding, the site and a comment that states
the stone's side and measurements in words, the in-plane diameter last and
qualified ('axial 4.4 mm'; 'in-plane' for a lone non-axial image). OHIF's SR
extension merges groups that share a tracking UID, draws the region as a
rectangle and uses the comment as its label; it loads nothing from a report
whose planar groups hold a NUM, so the measurements stay in the volumetric
group.

Every report ends with TID 1500's Qualitative Evaluations container holding
the verdict, coded ("Calculus: Present", SCT 52101004, or "Not detected"
below), and a TEXT comment that says what the algorithm did and that it is not for primary
diagnosis (a PACS that renders an SR as text shows it). When nothing is found
there is no SEG and no measurement group (no Imaging Measurements container:
``_without_groups``); the verdict says "Calculus: Not detected" (SCT 260415000),
with neither a finding nor a finding site, and the comment says that no stone
was detected by the AI model in the series' N images, that this does not
exclude stones and that it is not for primary diagnosis.

The observer is the model as a device (TID 1004), its Device Observer UID
derived from the model's name and version alone (``Identity.device_uid``).

SeriesDate/SeriesTime are the time the report was made (its ContentDate/Time).
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.valuerep import DA, TM, DSfloat

import inference.writers.coding as coding
from inference.postprocess import (
    SIDE_WORDS,
    Findings,
    SliceBox,
    Stone,
    half_up,
    max_axial_diameter_mm,
    shown,
)
from inference.volume import AXIAL_TOLERANCE_DEG, Volume, images_words
from inference.writers.sc import image_numbers
from inference.writers.seg import segment_number, stone_tracking_uid
from inference.writers.sources import (
    DEVICE_SERIAL_NUMBER,
    MANUFACTURER,
    SR_SERIES_DESCRIPTION,
    SR_SERIES_NUMBER,
    Identity,
    Sources,
    requested_procedures,
)
from uronode.types import DocumentReference

logger = logging.getLogger(__name__)

COMMENT = codes.DCM.Comment
"""The algorithm did not find one, which is not "Absent" (SCT 272519000): the model misses stones."""
QUALITATIVE_EVALUATIONS = hd.sr.CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")
"""TID 1500's container for the document's qualitative evaluations (CODE and TEXT items)."""
IMAGING_MEASUREMENTS = hd.sr.CodedConcept("126010", "DCM", "Imaging Measurements")
"""TID 1500's container of the measurement groups: left out of a report without stones."""
DISCLAIMER = "not for primary diagnosis"


def _tracking(index: int, sources: Sources) -> hd.sr.TrackingIdentifier:
    """The stone's tracking identifier and UID, one for its volumetric and its planar group (viewers
    merge groups that share it)."""
    return hd.sr.TrackingIdentifier(uid=stone_tracking_uid(sources, index), identifier=f"Stone {index + 1}")


def _algorithm(sources: Sources) -> hd.sr.AlgorithmIdentification:
    return hd.sr.AlgorithmIdentification(
        name=sources.identity.model_name, version=sources.identity.model_version
    )


def _finding_site(side: str) -> hd.sr.FindingSite:
    """The urinary system, with the side as its laterality where the stone lies clearly to one side; a stone
    near the midline (which may be in the bladder) gets none, rather than a wrong one or 'Midline'."""
    if side in coding.LATERALITY:
        return hd.sr.FindingSite(coding.URINARY_SYSTEM, laterality=coding.LATERALITY[side])
    return hd.sr.FindingSite(coding.URINARY_SYSTEM)


def _measurements(stone: Stone, sources: Sources, lone: bool = False) -> list[hd.sr.Measurement]:
    """Length, the largest axial diameter, volume, mean and maximum HU, each as precise as its voxels make it
    (lengths to 0.1 mm, volumes to 0.1 mm3, HU to 1: ``half_up``). The axial diameter is a Long Axis (SCT
    103339001), measured on the slice where it is largest, the planar group's (probe 42: it was in the planar
    group's comment alone, where OHIF 3.13 takes no NUM; the size most reports give). A lone image (``lone``)
    shows one plane of a stone: no volume (its area times the image's thickness is no stone's volume), and its
    length is the in-plane one, so no long axis beside it."""
    algorithm = _algorithm(sources)
    plane = [] if lone else [hd.sr.Measurement(name=coding.LONG_AXIS, value=half_up(stone.max_diameter_mm, 1),
                                               unit=coding.MILLIMETER, algorithm_id=algorithm)]
    volume = [] if lone else [hd.sr.Measurement(name=coding.VOLUME, value=half_up(stone.volume_mm3, 1),
                                                unit=coding.CUBIC_MILLIMETER, algorithm_id=algorithm)]
    return [
        hd.sr.Measurement(name=coding.DIAMETER, value=half_up(stone.length_mm, 1),
                          unit=coding.MILLIMETER, derivation=coding.MAXIMUM, algorithm_id=algorithm),
        *plane,
        *volume,
        # whole HU as integers: "1111", not "1111.0" (a decimal that suggests a precision HU do not have)
        hd.sr.Measurement(name=coding.ATTENUATION_COEFFICIENT, value=int(half_up(stone.mean_hu, 0)),
                          unit=coding.HOUNSFIELD_UNIT, derivation=coding.MEAN, algorithm_id=algorithm),
        hd.sr.Measurement(name=coding.ATTENUATION_COEFFICIENT, value=int(half_up(stone.max_hu, 0)),
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
        segment_number=segment_number(index),
        source_images=source_images,
    )
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=_tracking(index, sources),
        referenced_segment=segment,
        finding_type=coding.CALCULUS,
        algorithm_id=_algorithm(sources),
        finding_sites=[_finding_site(stone.side)],
        measurements=_measurements(stone, sources, lone=volume.shape[0] == 1),
    )


def _stone_pixels(stone: Stone, findings: Findings, box: SliceBox) -> np.ndarray:
    """(row, column) of the mask's pixels in the stone's own box on the box's slice."""
    r0, c0, r1, c1 = box.tight
    on = np.argwhere(findings.mask[box.slice_index, r0:r1 + 1, c0:c1 + 1])
    return on + np.array([r0, c0]) if on.size else on


def _in_plane_diameter(box: SliceBox, stone: Stone, volume: Volume, findings: Findings) -> float:
    """The stone's largest in-plane diameter on the box's slice (mm): the box's own, or measured on the mask."""
    if box.diameter_mm > 0:
        return box.diameter_mm
    on = _stone_pixels(stone, findings, box)
    if not on.size:
        return 0.0
    return max_axial_diameter_mm(on[:, 0], on[:, 1], volume.pixel_spacing)


def _widest_box(index: int, stone: Stone, volume: Volume, findings: Findings) -> SliceBox:
    """The stone's box on the slice where its in-plane diameter is largest (then the most voxels, then the
    first slice): the slice its ``max_diameter_mm`` was measured on.

    A stone that has no box (findings made by hand) gets one from the mask around its centroid.
    """
    boxes = [b for b in findings.boxes if b.stone_index == index]
    if not boxes:
        boxes = [_box_around_centroid(index, stone, volume, findings, k) for k in stone.slice_indices]

    def key(b: SliceBox) -> tuple[float, int, int]:
        diameter = round(_in_plane_diameter(b, stone, volume, findings), 6)
        return diameter, len(_stone_pixels(stone, findings, b)), -b.slice_index

    return max(boxes, key=key)


def _box_around_centroid(index: int, stone: Stone, volume: Volume, findings: Findings, k: int) -> SliceBox:
    """The mask's pixels on slice ``k`` within the stone's diameter of its centroid, boxed (no margin)."""
    offset = np.asarray(stone.centroid_mm) - volume.positions[k]
    column = float(offset @ np.asarray(volume.row_direction)) / volume.pixel_spacing[1]
    row = float(offset @ np.asarray(volume.column_direction)) / volume.pixel_spacing[0]
    reach = max(stone.max_diameter_mm, stone.length_mm) / min(volume.pixel_spacing) + 1.0
    rows, columns = volume.shape[1], volume.shape[2]
    r0, r1 = max(0, int(row - reach)), min(rows - 1, int(np.ceil(row + reach)))
    c0, c1 = max(0, int(column - reach)), min(columns - 1, int(np.ceil(column + reach)))
    on = np.argwhere(findings.mask[k, r0:r1 + 1, c0:c1 + 1])
    diameter = 0.0
    if on.size:
        diameter = max_axial_diameter_mm(on[:, 0], on[:, 1], volume.pixel_spacing)
        r0, r1 = r0 + int(on[:, 0].min()), r0 + int(on[:, 0].max())
        c0, c1 = c0 + int(on[:, 1].min()), c0 + int(on[:, 1].max())
    return SliceBox(slice_index=k, sop_instance_uid=volume.sop_instance_uids[k], frame_number=volume.frame_numbers[k],
                    stone_index=index, row_min=r0, column_min=c0, row_max=r1, column_max=c1,
                    diameter_mm=diameter, stone_box=(r0, c0, r1, c1))


def plane_word(volume: Volume) -> str:
    """What the in-plane diameter is: 'axial' for an axial stack (a tilted gantry's too), else 'in-plane'
    (a lone coronal or sagittal image)."""
    return "axial" if volume.tilt_deg <= AXIAL_TOLERANCE_DEG else "in-plane"


def stone_label(index: int, stone: Stone, plane: str = "axial", lone: bool = False, where: str = "") -> str:
    """The stone in words, as viewers show it: 'Stone 1, left: 12.0 mm, 105 mm3, mean 850 HU, axial 4.4 mm,
    images 31-33'.

    The first size is its length (largest extent in any direction), the last its largest axial diameter;
    the side is 'left', 'right', 'near midline' or 'side not determined' (no laterality: ``SIDE_WORDS``);
    ``where`` says which CT images it is on (``inference.volume.images_words``), as a reader reading the
    report in a PACS's text view goes to it (probe 18). A stone of ``TINY_VOXELS`` voxels or fewer says that
    the CT hardly resolves it. On a lone image (``lone``), one plane of the stone: 'Stone 1, right: in-plane
    7.1 mm, mean 850 HU' (no volume, no length beyond the plane's). Numbers rounded as ``half_up``."""
    side = SIDE_WORDS.get(stone.side, stone.side)
    tail = (f", {where}" if where else "") + (f"; {stone.resolution_note}" if stone.resolution_note else "")
    if lone:
        return (f"Stone {index + 1}, {side}: {plane} {shown(stone.max_diameter_mm, 1)} mm, "
                f"mean {shown(stone.mean_hu, 0)} HU{tail}")
    return (f"Stone {index + 1}, {side}: {shown(stone.length_mm, 1)} mm, {shown(stone.volume_mm3, 0)} mm3, "
            f"mean {shown(stone.mean_hu, 0)} HU, {plane} {shown(stone.max_diameter_mm, 1)} mm{tail}")


def _region_group(index: int, stone: Stone, box: SliceBox, volume: Volume, findings: Findings, sources: Sources,
                  ) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    """Where a viewer finds the stone: its own box (no margin) on its widest slice, as a closed POLYLINE
    (column, row), with the stone in words (its axial diameter, measured on that slice, qualified as such).

    No NUM here: OHIF 3.13 loads no stone at all from a report whose planar groups hold one (its SR
    hydration fails; tests/browser/test_ohif.py), so the in-plane diameter is in the comment only."""
    ds = sources.datasets[box.slice_index]
    row_min, column_min, row_max, column_max = box.tight
    c0, r0 = float(column_min), float(row_min)
    c1, r1 = float(column_max + 1), float(row_max + 1)  # the outer edge of the last pixel
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
    numbers, kind = image_numbers(sources.datasets, volume.frame_numbers, from_head=volume.index_from_head)
    group[0].ContentSequence.append(hd.sr.TextContentItem(
        name=COMMENT, value=stone_label(index, stone, plane_word(volume), lone=volume.shape[0] == 1,
                                        where=images_words(numbers, kind, stone.slice_indices)),
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    ))
    return group


def _not_detected_group(sources: Sources) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """A group for highdicom, which builds a report only with one; taken out again (:func:`_without_groups`)."""
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=sources.identity.uid("sr", "absent"), identifier="Urinary calculus detection"
        ),
    )


def _without_groups(report: hd.sr.MeasurementReport) -> None:
    """The report without its Imaging Measurements container: a report with no stone gives its verdict in the
    Qualitative Evaluations alone (TID 1500 asks for one of the two). OHIF 3.13 reads the image region of every
    measurement group, and a group without one (the verdict's, as it was) blanked the whole viewer when the
    report was opened (probe 26)."""
    root = report[0]
    root.ContentSequence = hd.sr.ContentSequence(
        [item for item in root.ContentSequence
         if item.ConceptNameCodeSequence[0].CodeValue != IMAGING_MEASUREMENTS.value], is_root=False)


def _scope(volume: Volume) -> str:
    """What the model read, in words: '181 images of this series, 226 mm along its axis'."""
    n = volume.shape[0]
    if n == 1:
        return "the one image of this series"
    offsets = np.asarray(volume.offsets_mm, dtype=np.float64)
    extent = np.asarray(volume.slice_extent_mm, dtype=np.float64)
    covered = float(offsets.max() - offsets.min() + (extent[0] + extent[-1]) / 2.0)
    return f"{n} images of this series, {covered:.0f} mm along its axis"


def report_statement(volume: Volume, findings: Findings, identity: Identity) -> str:
    """The report's comment: what the algorithm did, its scope, the input's cautions (``Findings.cautions``)
    and that it is not for primary diagnosis."""
    model = f"the AI model ({identity.model_name} {identity.model_version})"
    count = len(findings.stones)
    caution = "".join(f" Caution: {c}" for c in findings.cautions)
    if not count:
        return (f"No urinary stone detected by {model} in {_scope(volume)}; this does not exclude urinary "
                f"stones.{caution} AI result, {DISCLAIMER}.")
    stones = f"{count} urinary stone{'s' if count != 1 else ''}"
    sizes = ("Sizes: the largest diameter in this image's plane; one image shows one plane of a stone, so no "
             "volume is given." if volume.shape[0] == 1 else
             "Sizes: the first is the largest extent in any direction, the last the largest "
             f"{plane_word(volume)} diameter.")
    return (f"{stones} detected by {model} in {_scope(volume)}; the model can miss stones and mark other "
            f"dense structures as stones. {sizes}{caution} AI result, {DISCLAIMER}.")


def _qualitative_evaluations(statement: str, not_detected: bool) -> hd.sr.ContainerContentItem:
    """TID 1500's Qualitative Evaluations container (after the Imaging Measurements): first the verdict, coded,
    'Calculus: Present' or with no stone 'Calculus: Not detected' (what the algorithm did, without a finding or a
    finding site, not a claim about the patient's urinary system: the comment gives the scope), then the comment.
    A consumer that sorts worklists by AI results reads the verdict of either kind from the one item (probe 42:
    a report with stones had none, its verdict only implied by its measurement groups)."""
    container = hd.sr.ContainerContentItem(
        name=QUALITATIVE_EVALUATIONS, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )
    verdict = hd.sr.CodeContentItem(name=coding.CALCULUS, value=coding.NOT_DETECTED if not_detected else coding.PRESENT,
                                    relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
    container.ContentSequence = hd.sr.ContentSequence([verdict, hd.sr.TextContentItem(
        name=COMMENT, value=statement, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )])
    return container


def device_observer(identity: Identity) -> hd.sr.ObserverContext:
    """The model as the observing device (TID 1004), the same in the SR and the key objects."""
    return hd.sr.ObserverContext(
        observer_type=hd.sr.CodedConcept("121007", "DCM", "Device"),
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=identity.device_uid,
            name=identity.model_name,
            manufacturer_name=MANUFACTURER,
            model_name=identity.model_name,
        ),
    )


def sr_uids(sources: Sources) -> tuple[str, str]:
    """(SeriesInstanceUID, SOPInstanceUID) of the SR."""
    return sources.identity.series_uid("sr", "series"), sources.identity.uid("sr", "instance")


def build_report(volume: Volume, findings: Findings, sources: Sources, seg: Dataset | None, *,
                 created: datetime.datetime | None = None,
                 predecessors: Sequence[DocumentReference] = ()) -> Dataset:
    """The TID 1500 report of the findings; ``seg`` is None exactly when there is no stone.

    ``created`` (default: now) is its SeriesDate/SeriesTime and ContentDate/ContentTime. ``predecessors``: the
    earlier reports of the same model on the same series that this one replaces (:func:`predecessor_documents`)."""
    identity = sources.identity
    if findings.stones and seg is None:
        raise ValueError("seg is required when there are stones")
    created = created or datetime.datetime.now()
    groups: list[
        hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations
        | hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
        | hd.sr.MeasurementsAndQualitativeEvaluations
    ]
    if seg is None:
        groups = [_not_detected_group(sources)]
    else:
        groups = [_stone_group(i, stone, volume, sources, seg) for i, stone in enumerate(findings.stones)]
        groups += [_region_group(i, stone, _widest_box(i, stone, volume, findings), volume, findings, sources)
                   for i, stone in enumerate(findings.stones)]
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device_observer(identity)),
        procedure_reported=coding.IMAGING_PROCEDURE,
        imaging_measurements=groups,
    )
    report[0].ContentSequence.append(_qualitative_evaluations(report_statement(volume, findings, identity),
                                                              not_detected=seg is None))
    if seg is None:
        _without_groups(report)
    evidence = list(sources.unique) + ([seg] if seg is not None else [])
    series_uid, sop_uid = sr_uids(sources)
    first = sources.unique[0]
    sr = hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=report,
        series_instance_uid=series_uid,
        series_number=identity.series_number(SR_SERIES_NUMBER),
        sop_instance_uid=sop_uid,
        instance_number=1,
        is_complete=True,
        series_description=identity.description(SR_SERIES_DESCRIPTION),
        specific_character_set=first.get("SpecificCharacterSet"),
        manufacturer=MANUFACTURER,
        manufacturer_model_name=identity.model_name,
        software_versions=identity.software_versions,
        device_serial_number=DEVICE_SERIAL_NUMBER,
        series_date=created.date(),
        series_time=created.time(),
        content_date=created.date(),
        content_time=created.time(),
        requested_procedures=requested_procedures(first) or None,
    )
    sr.SeriesDate, sr.SeriesTime = DA(created.date()), TM(created.time())
    earlier = [p for p in predecessors if p.sop_instance_uid != sop_uid]  # the same run again is no predecessor
    if earlier:
        sr.PredecessorDocumentsSequence = predecessor_documents(earlier)
    separate_containers(sr)
    logger.info("SR of series %s: %d group(s)", volume.series_instance_uid, len(groups))
    return sr


def predecessor_documents(reports: Sequence[DocumentReference]) -> list[Dataset]:
    """Predecessor Documents Sequence (0040,A360) items naming ``reports``: one item per study, its series in
    Referenced Series Sequence, each with its instances (the Hierarchical SOP Instance Reference Macro, PS3.3
    C.17.2.3). A report system or PACS that follows it shows the new report as the one replacing the old; the
    rejection note (``uronode.supersede``) withdraws the old one where the archive acts on it."""
    studies: dict[str, dict[str, list[DocumentReference]]] = {}
    for report in reports:
        studies.setdefault(report.study_instance_uid, {}).setdefault(report.series_instance_uid, []).append(report)
    items = []
    for study, series in studies.items():
        item = Dataset()
        item.StudyInstanceUID = study
        item.ReferencedSeriesSequence = []
        for series_uid, members in series.items():
            series_item = Dataset()
            series_item.SeriesInstanceUID = series_uid
            series_item.ReferencedSOPSequence = []
            for member in members:
                ref = Dataset()
                ref.ReferencedSOPClassUID = member.sop_class_uid
                ref.ReferencedSOPInstanceUID = member.sop_instance_uid
                series_item.ReferencedSOPSequence.append(ref)
            item.ReferencedSeriesSequence.append(series_item)
        items.append(item)
    return items


def _in_hu(num: Dataset) -> bool:
    units = num.MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0]
    return str(units.CodeValue) == coding.HOUNSFIELD_UNIT.value


def separate_containers(item: Dataset) -> None:
    """Every CONTAINER of the report (the document's root too) marked SEPARATE: its items are distinct
    measurements, not one narrative text (PS3.3 C.17.3, Continuity of Content). Marked CONTINUOUS (highdicom's
    default), a PACS's SR text view (DCMTK's dsr2html) ran each stone's numbers together without their names:
    "0.8 mm 1.1 mm3 97.0 97.0" (probe 18). HU values are written whole ("97", as the comments give them)."""
    if item.get("ValueType") == "CONTAINER":
        item.ContinuityOfContent = "SEPARATE"
    for child in item.get("ContentSequence", []):
        separate_containers(child)
        if child.get("ValueType") == "NUM" and _in_hu(child):
            value = child.MeasuredValueSequence[0]
            value.NumericValue = DSfloat(str(int(float(value.NumericValue))))  # "1111", not "1111.0"
