"""The overlay series: RGB Secondary Captures of the slices with stones; with no stone, one summary image.

**With no stone** the series holds one image, the series' middle slice (a lone
image itself), with "AI: no urinary stone detected in the N images of this
series", "A negative result does not exclude stones", the input's cautions and
the disclaimer burned in (probe 42: a PACS that takes the overlays alone, as
``results: ["sc"]`` sends them, got nothing for a series without stones, and
"the AI found none" looked as "the AI never ran").

Each image is the CT slice in the preview window (``inference.preview.WINDOW``:
centre 150, width 900 HU, so -300 to 600 HU). Why this window: the kidney,
ureter and bladder stay readable against fat (a bone window of W 1500 / L 300
greys the soft tissue out, and a stone has to be found *in* its organ), while
stones (200 HU and more) stand out bright; and it is the window of the PNG
previews, so the CLI's pictures and the PACS images agree. Stones are painted
red (semi-transparent, the CT shows through), each stone on the slice is framed
by its green ``SliceBox`` (margin included, so stones under 3 mm are findable)
and numbered as in the SR ("Stone 2"). Burned-in text: the stone count, the
largest stone and the input's cautions ("Caution: Pixels of 3.00 mm are coarser
...", ``Findings.cautions``, as in the SR's comment: many readers see the
overlays and no SR) at the top left, and "AI result - not for primary diagnosis"
at the bottom. Every line is wrapped at word breaks to the image's width; where
the cautions do not fit between the top lines and the bottom line, or would reach
below the top third of the image (a small matrix: ``TOP_TEXT_SHARE``), the last
line that fits says "Caution: see the SR". Text never covers a stone or a
box: they are drawn over it.

Every image keeps its source slice's geometry (ImagePositionPatient,
ImageOrientationPatient, PixelSpacing, FrameOfReferenceUID), is uncompressed,
``DERIVED\\SECONDARY``, ``BurnedInAnnotation`` YES, and carries
BodyPartExamined over (without it dciodvfy asks for Laterality; a source that
states no body part gets an empty Laterality, which dciodvfy accepts with a warning).

**A Standard Extended SOP Class.** The SC Image IOD has no Frame of Reference
or Image Plane module; the overlays carry FrameOfReferenceUID (Frame of
Reference module), ImagePositionPatient and ImageOrientationPatient (Image
Plane module) as Type 3 extensions (``STANDARD_EXTENSION``), each the source
slice's value. With them a viewer draws the overlay's position as a reference
line on the CT and other planes, and scrolls overlay and CT together; without
them an overlay is a picture a reader has to match to the CT by eye. They are
declared in docs/conformance.md; dciodvfy warns of them ("not present in
standard DICOM IOD") and of nothing else but an empty Laterality.

**Patient and study** are the source's whole Patient, General Study and Patient
Study modules (and the clinical trial ones), as in the SEG, SR and KO
(``copy_patient_and_study_information``): IssuerOfPatientID and its qualifiers,
StudyDescription, PatientAge and the rest, so that a PACS files the overlays
with the patient and study of the CT.

**Numbers and dates.** The overlay series' SeriesNumber is 1000 x the CT's
SeriesNumber + 902 (902 where the CT has none), its SeriesDescription names the CT
series and the model version (``inference.writers.sources``). An overlay's InstanceNumber is its CT image's
(``image_numbers``: the CT's InstanceNumber, or the frame number where the
source is one multi-frame instance), so "overlay 31" shows CT image 31 and a
viewer that sorts by InstanceNumber scrolls the overlays in the CT's order; the
overlays are returned in that order. SeriesDate/SeriesTime, ContentDate/Time
and the date and time of secondary capture are the time the overlays were made,
one for the whole series.
"""

from __future__ import annotations

import datetime
import functools
import logging
import re
from collections.abc import Sequence

import cv2
import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pydicom.valuerep import DA, TM

from inference.postprocess import SIDE_WORDS, Findings, SliceBox, shown
from inference.preview import WINDOW, render_slice
from inference.volume import Volume, slice_numbers
from inference.writers.sources import (
    DEVICE_SERIAL_NUMBER,
    MANUFACTURER,
    SC_SERIES_DESCRIPTION,
    SC_SERIES_NUMBER,
    Sources,
    copy_request_attributes,
)
from uronode.contrast import without_free_text

logger = logging.getLogger(__name__)

DISCLAIMER = "AI result - not for primary diagnosis"
TEXT_COLOUR = (255, 255, 0)
"""Yellow: neither the stones' red nor the boxes' green."""
SHADOW_COLOUR = (0, 0, 0)

STANDARD_EXTENSION = ("FrameOfReferenceUID", "ImageOrientationPatient", "ImagePositionPatient")
"""The attributes the overlays carry beyond the SC Image IOD (Type 3 extensions, declared in
docs/conformance.md): the source slice's Frame of Reference and plane, for reference lines and linked
scrolling."""


def _orientation_letter(direction: Sequence[float]) -> str:
    """The patient direction a unit vector points to most (LPS: +x left, +y posterior, +z head)."""
    axis = int(np.argmax(np.abs(direction)))
    positive = direction[axis] > 0
    return ("L", "P", "H")[axis] if positive else ("R", "A", "F")[axis]


def patient_orientation(volume: Volume) -> tuple[str, str]:
    return _orientation_letter(volume.row_direction), _orientation_letter(volume.column_direction)


CAUTION_CONTINUES = "Caution: see the SR"
"""The last top line where the image has no room for all of the cautions (the SR has them whole)."""
FONT = cv2.FONT_HERSHEY_SIMPLEX
MARGIN = 4
"""Pixels between the text and the image's edges."""
LARGEST_NAMED = re.compile(r"(?<=^Largest: )([\d.]+ mm) \(stone \d+, [^)]*\)$")
"""Which stone is the largest, in its line ("Largest: 18.8 mm (stone 1, right)"): left out where the top lines do
not fit, before a caution is."""
LARGEST_NAMED_SHORT = r"\1"
TOP_TEXT_SHARE = 1 / 3
"""The top lines cover at most this share of the image's rows (the count and largest stone always shown): on a
small matrix (a 3 mm series of 122 x 101 pixels) the wrapped cautions covered the whole image and hid the
kidneys (probe 17); what does not fit says "Caution: see the SR"."""


NEGATIVE_LINE = "A negative result does not exclude stones"
"""The second line of a no-stone summary image, as the SR's comment says it."""


def summary_lines(findings: Findings, k: int, images: int | None = None) -> list[str]:
    """The burned-in text of slice k, a line each before wrapping: the count, the largest stone, each of the
    input's cautions ("Caution: ..."), and the disclaimer last. With no stone (the summary image): that none was
    detected in the series' ``images`` images, and that this does not exclude stones, in place of the first two."""
    count = len(findings.stones)
    here = sorted({b.stone_index for b in findings.boxes if b.slice_index == k})
    if count or images is None:
        lines = [f"AI: {count} urinary stone{'s' if count != 1 else ''}, {len(here)} on this slice"]
    else:
        scope = "on this one image" if images == 1 else f"in the {images} images of this series"
        lines = [f"AI: no urinary stone detected {scope}", NEGATIVE_LINE]
    if count:  # the longest, as the SR's "Diameter, Maximum", named: it may be on another slice (probe 18)
        index, largest = max(enumerate(findings.stones), key=lambda item: item[1].length_mm)
        side = SIDE_WORDS.get(largest.side, largest.side)
        lines.append(f"Largest: {shown(largest.length_mm, 1)} mm (stone {index + 1}, {side})")
    lines.extend(f"Caution: {without_free_text(c)}" for c in findings.cautions)  # no header free text in pixels
    lines.append(DISCLAIMER)
    return lines


@functools.lru_cache(maxsize=4096)
def _text_width(line: str, scale: float, thickness: int) -> int:
    """How far ``line`` reaches right of its origin, drawn with its shadow (``thickness`` + 2), in pixels, as
    drawn: ``cv2.getTextSize`` says less than HERSHEY_SIMPLEX draws (485 pixels for a line that reaches 521)."""
    (width, height), baseline = cv2.getTextSize(line, FONT, scale, thickness + 2)
    canvas = np.zeros((2 * (height + baseline) + 4, 2 * width + 16), np.uint8)
    cv2.putText(canvas, line, (0, height + 2), FONT, scale, 255, thickness + 2, cv2.LINE_8)
    columns = np.flatnonzero(canvas.any(axis=0))
    return int(columns[-1]) + 1 if columns.size else 0


def wrap_line(line: str, width: int, scale: float, thickness: int = 1) -> list[str]:
    """``line`` broken at spaces into lines at most ``width`` pixels wide in the burned-in font; a word wider
    than that is broken where it has to be."""
    wrapped: list[str] = []
    current = ""
    for word in line.split():
        candidate = f"{current} {word}" if current else word
        if _text_width(candidate, scale, thickness) <= width:
            current = candidate
            continue
        if current:
            wrapped.append(current)
        current = word
        while len(current) > 1 and _text_width(current, scale, thickness) > width:
            cut = len(current) - 1
            while cut > 1 and _text_width(current[:cut], scale, thickness) > width:
                cut -= 1
            wrapped.append(current[:cut])
            current = current[cut:]
    if current:
        wrapped.append(current)
    return wrapped


def _scale(columns: int) -> float:
    """The burned-in font's scale: the text grows with the image's width."""
    return max(columns / 800.0, 0.2)


def text_placements(shape: tuple[int, int], lines: list[str],
                    boxes: Sequence[SliceBox]) -> list[tuple[str, tuple[int, int]]]:
    """Each burned-in line with its origin (x, y of its baseline's left end): ``lines`` but the last at the top
    left, the last at the bottom, each wrapped to the image's width; top lines that would reach the bottom one are
    left out, and so are those below the top third of the image (``TOP_TEXT_SHARE``), the last shown saying
    "Caution: see the SR" (the count and largest stone are always shown, the largest without which stone it is
    where the lines do not fit: ``LARGEST_NAMED``); then each box's stone number above the
    box (below where the image's edge is too near)."""
    rows, columns = shape
    scale = _scale(columns)
    thickness = 1
    (_, height), baseline = cv2.getTextSize("Ag", FONT, scale, thickness)
    step = height + baseline + 2
    width = max(columns - 2 * MARGIN, 1)
    bottom = wrap_line(lines[-1], width, scale, thickness)
    bottom_y = rows - baseline - MARGIN - step * (len(bottom) - 1)  # the baseline of the first bottom line
    room = max((bottom_y - height - baseline - 2) // step, 0)  # top lines (and shadows) clear of the bottom text
    fits = min(room, max(int(rows * TOP_TEXT_SHARE) // step, 1))  # and over a third of the image at most

    def wrapped(top_lines: list[str]) -> list[tuple[str, bool]]:
        return [(part, line.startswith("Caution: ")) for line in top_lines
                for part in wrap_line(line, width, scale, thickness)]

    top = wrapped(lines[:-1])
    if len(top) > fits:  # no room: which stone is the largest goes first, before any caution
        top = wrapped([LARGEST_NAMED.sub(LARGEST_NAMED_SHORT, line) for line in lines[:-1]])
    shown = [part for part, _ in top]
    if len(top) > fits:
        plain = sum(1 for _, caution in top if not caution)  # the count and largest stone, first: always shown
        continues = wrap_line(CAUTION_CONTINUES, width, scale, thickness)
        shown = shown[:max(fits - len(continues), plain)]
        if len(shown) < len(top) and len(shown) + len(continues) <= room:  # a caution left out: the pointer
            shown += continues
    placements = [(line, (MARGIN, step * (i + 1))) for i, line in enumerate(shown)]
    placements += [(line, (MARGIN, bottom_y + step * i)) for i, line in enumerate(bottom)]
    for box in boxes:
        label = str(box.stone_index + 1)
        y = box.row_min - 3 if box.row_min - 3 > height else box.row_max + height + 3
        placements.append((label, (box.column_min, min(y, rows - 1))))
    return placements


def _text_layer(shape: tuple[int, int], lines: list[str], boxes: Sequence[SliceBox]) -> tuple[np.ndarray, np.ndarray]:
    """Masks (text, shadow) of the burned-in text (``text_placements``), scaled to the image width."""
    scale = _scale(shape[1])
    thickness = 1
    text = np.zeros(shape, np.uint8)
    shadow = np.zeros(shape, np.uint8)
    for line, origin in text_placements(shape, lines, boxes):
        cv2.putText(shadow, line, origin, FONT, scale, 255, thickness + 2, cv2.LINE_8)
        cv2.putText(text, line, origin, FONT, scale, 255, thickness, cv2.LINE_8)
    return text > 0, shadow > 0


def _box_outline(shape: tuple[int, int], boxes: Sequence[SliceBox]) -> np.ndarray:
    outline = np.zeros(shape, bool)
    for b in boxes:
        outline[b.row_min, b.column_min:b.column_max + 1] = True
        outline[b.row_max, b.column_min:b.column_max + 1] = True
        outline[b.row_min:b.row_max + 1, b.column_min] = True
        outline[b.row_min:b.row_max + 1, b.column_max] = True
    return outline


def render_overlay(volume: Volume, findings: Findings, k: int) -> np.ndarray:
    """uint8 RGB (rows, columns, 3) of slice k: CT, red stones, green boxes, burned-in text."""
    image = render_slice(volume, findings, k, window=WINDOW)
    boxes = [b for b in findings.boxes if b.slice_index == k]
    text, shadow = _text_layer(image.shape[:2], summary_lines(findings, k, volume.shape[0]), boxes)
    protected = (findings.mask[k] > 0) | _box_outline(image.shape[:2], boxes)
    image[shadow & ~protected] = SHADOW_COLOUR
    image[text & ~protected] = TEXT_COLOUR
    return image


def _geometry(ds: Dataset, frame_number: int) -> dict[str, object]:
    """ImagePositionPatient, ImageOrientationPatient, PixelSpacing as the source states them."""
    if "PerFrameFunctionalGroupsSequence" not in ds:
        return {key: ds[key].value for key in
                ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing") if key in ds}
    found: dict[str, object] = {}
    per_frame = ds.PerFrameFunctionalGroupsSequence[frame_number - 1]
    shared = ds.get("SharedFunctionalGroupsSequence", [Dataset()])[0]
    for sequence, key in (("PlanePositionSequence", "ImagePositionPatient"),
                          ("PlaneOrientationSequence", "ImageOrientationPatient"),
                          ("PixelMeasuresSequence", "PixelSpacing")):
        for group in (per_frame, shared):
            items = group.get(sequence)
            if items and key in items[0]:
                found[key] = items[0][key].value
                break
    return found


def _number(value: object) -> int | None:
    try:
        return int(str(value))
    except (TypeError, ValueError):
        return None


def image_numbers(datasets: Sequence[Dataset], frame_numbers: Sequence[int], *,
                  from_head: bool = False) -> tuple[tuple[int, ...], str]:
    """Each slice's number as a reader finds its CT image, and what the numbers are (``slice_numbers``).

    ``datasets`` and ``frame_numbers`` are per slice (``Sources.datasets``, ``Volume.frame_numbers``);
    ``from_head``: ``Volume.index_from_head``.
    """
    multiframe = any((_number(ds.get("NumberOfFrames")) or 1) > 1 for ds in datasets)
    return slice_numbers([_number(ds.get("InstanceNumber")) for ds in datasets], frame_numbers, multiframe,
                         from_head=from_head)


def summary_slice(volume: Volume) -> int:
    """The slice of a no-stone series' one summary image: the middle one (the lone image of a lone image)."""
    return volume.shape[0] // 2


def sc_uids(sources: Sources, every_slice: bool) -> str:
    """SeriesInstanceUID of the overlay series (the mode is part of it: a mode change is a new series)."""
    return sources.identity.series_uid("sc", "all" if every_slice else "stones", "series")


def build_secondary_captures(volume: Volume, findings: Findings, sources: Sources, *,
                             every_slice: bool = False,
                             created: datetime.datetime | None = None) -> tuple[Dataset, ...]:
    """One RGB Secondary Capture per slice with a stone (or per slice with ``every_slice``), in the order of
    their InstanceNumbers (the CT's image numbers); with no stone, one: the summary image (``summary_slice``).
    ``created`` (default: now) is their series' date and time."""
    identity = sources.identity
    mode = "all" if every_slice else "stones"
    series_uid = sc_uids(sources, every_slice)
    slices = (range(volume.shape[0]) if every_slice else findings.slices_with_stones if findings.stones
              else [summary_slice(volume)])
    orientation = patient_orientation(volume)
    numbers, _ = image_numbers(sources.datasets, volume.frame_numbers, from_head=volume.index_from_head)
    created = created or datetime.datetime.now()
    images = []
    for k in slices:
        ref = sources.datasets[k]
        frame = volume.frame_numbers[k]
        sop_uid = identity.uid("sc", mode, volume.sop_instance_uids[k], frame)
        sc = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=ref,
            pixel_array=render_overlay(volume, findings, k),
            photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
            bits_allocated=8,
            coordinate_system=hd.CoordinateSystemNames.PATIENT,
            series_instance_uid=series_uid,
            series_number=identity.series_number(SC_SERIES_NUMBER),
            sop_instance_uid=sop_uid,
            instance_number=numbers[k],
            manufacturer=MANUFACTURER,
            patient_orientation=orientation,
            transfer_syntax_uid=ExplicitVRLittleEndian,
            series_description=identity.description(SC_SERIES_DESCRIPTION),
            manufacturer_model_name=identity.model_name,
            software_versions=identity.software_versions,
            device_serial_number=DEVICE_SERIAL_NUMBER,
            series_date=created.date(),
            series_time=created.time(),
            content_date=created.date(),
            content_time=created.time(),
        )
        # the whole Patient, General Study and Patient Study modules, as the SEG, SR and KO have them
        # (from_ref_dataset copies only the Type 2 subset its constructor takes)
        sc.copy_patient_and_study_information(sources.unique[0])
        sc.DateOfSecondaryCapture = DA(created.date())
        sc.TimeOfSecondaryCapture = TM(created.time())
        for key, value in _geometry(ref, frame).items():
            setattr(sc, key, value)
        sc.FrameOfReferenceUID = ref.FrameOfReferenceUID  # the source's, or the one derived where it had none
        copy_request_attributes(sc, sources.unique[0])
        sc.ImageType = ["DERIVED", "SECONDARY"]
        sc.ConversionType = "WSD"
        sc.BurnedInAnnotation = "YES"
        sc.DerivationDescription = (f"CT in window C{WINDOW[0]:g} W{WINDOW[1]:g} with AI stone overlay"
                                    if findings.stones else
                                    f"CT in window C{WINDOW[0]:g} W{WINDOW[1]:g} with the AI's no-stone result")
        if ref.get("BodyPartExamined"):
            sc.BodyPartExamined = ref.BodyPartExamined
        elif "Laterality" not in sc:
            # Laterality is type 2C unless the body part is unpaired; with no body
            # part stated, an empty value is the honest one (dciodvfy: a warning only)
            sc.Laterality = ""
        source = Dataset()
        source.ReferencedSOPClassUID = ref.SOPClassUID
        source.ReferencedSOPInstanceUID = volume.sop_instance_uids[k]
        if "NumberOfFrames" in ref:
            source.ReferencedFrameNumber = frame
        sc.SourceImageSequence = [source]
        images.append(sc)
    images.sort(key=lambda image: int(image.InstanceNumber))
    logger.info("%d overlay image(s) of series %s", len(images), volume.series_instance_uid)
    return tuple(images)
