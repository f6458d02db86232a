"""A CT series as a volume in Hounsfield units with its patient geometry.

``load_volume`` takes the instances of one series (paths or pydicom datasets) and
returns a frozen ``Volume``; anything the model cannot read is rejected with a
``VolumeError`` that says why.

Rules worth knowing:

- Slices are sorted along the normal of the image orientation (row x column
  direction), from the lowest to the highest offset along that normal (for the
  usual axial orientation: from feet to head).
- **Duplicates.** The same SOP Instance UID (and frame) seen twice is one slice
  (the first copy is kept). Two different instances at the same position (within
  ``POSITION_TOLERANCE_MM`` along the normal) are one slice too: the one with the
  highest InstanceNumber is kept, ties broken by the larger SOP Instance UID, so
  the result does not depend on the order the files arrived in. A warning says
  how many were dropped.
- **Uneven spacing** is kept as it is: ``positions`` holds every slice's
  position, ``slice_extent_mm`` each slice's own extent along the normal, and
  ``uniform_spacing`` says whether the gaps agree within 10 %.
- **Gantry tilt** up to ``AXIAL_TOLERANCE_DEG`` is accepted. The slices of a
  tilted gantry are oblique axial images (the row direction stays left-right,
  the column direction leans towards the head or the feet) stacked along the
  table, the head-feet axis, so the step from one slice's ImagePositionPatient
  to the next is not along the normal. The slices are kept as they are, in
  their own planes, and every distance is taken from the true geometry:
  ``slice_spacing`` and ``slice_extent_mm`` are distances between the planes
  along the normal (the table step times the cosine of the tilt), positions come
  from ImagePositionPatient, and in-plane sizes from PixelSpacing.
- **A lone slice in any plane.** A series of one slice is read in its own
  plane whatever its orientation (a coronal or sagittal image sent or uploaded
  alone): the network reads a lone slice as a 2D image, its neighbours being
  itself, and model 3 learned from coronal images read exactly so.
- **Pixel padding** (PixelPaddingValue, up to PixelPaddingRangeLimit: outside
  a scanner's round field of view) reads as air, -1024 HU, whatever it is
  stored as (GE's 63536 unsigned would otherwise read as +62,512 HU).
- **Rescale.** RescaleSlope and RescaleIntercept come from a frame's CT Pixel
  Value Transformation functional group (Enhanced CT), else from the top level
  of the data set, where converters that flatten an Enhanced CT put them.
  Unsigned pixels with no intercept anywhere are refused: their stored values
  are not Hounsfield units.
- **Malformed numbers.** A RescaleSlope, RescaleIntercept or SliceThickness
  written with a decimal comma ("-1024,0", as exports made under a European
  locale write them) is read as the number it means; a value that is no number
  is refused with the attribute and the file named. An InstanceNumber that is
  no whole number counts as absent: it only breaks ties between slices at one
  position.
- **Left out, with a warning:** instances of the series that are no slice of
  it: another modality or SOP class (a dose report, a dose screen, raw data), a
  localizer, no pixel data, values that are no Hounsfield units (a multi-energy
  CT's map: ``uronode.energy``). Scanners and PACS put them beside the slices.
- **Multi-energy CT** read all the same (a virtual monoenergetic image; a
  material-removed or -modified one, uploaded) or a Rescale Type of US gives
  a caution in ``Volume.notes`` (:func:`energy_note`).
- **Rejected** (``VolumeError``): nothing but such instances (not CT, a
  localizer, missing pixel data, no HU), a slice claiming more than
  ``MAX_CT_MATRIX`` rows or columns (refused before decoding: a decoder
  allocates what the header claims), more
  than one series or frame of reference, mixed image sizes, orientations or pixel
  spacings, a stack of slices more than ``AXIAL_TOLERANCE_DEG`` away from axial
  (coronal, sagittal, strongly oblique reformats), and stacks whose slices shift in-plane
  from one to the next other than along the table (a gantry tilt that the
  orientation does not state, or slices that are not one stack).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, cast

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import pixel_array

from inference.errors import VolumeError
from uronode.anatomy import CHILD_YEARS, age_years, caution_region
from uronode.contrast import Evidence, contrast_evidence
from uronode.dicomfile import identity_value, lossy, same_identity
from uronode.energy import EnergyImage, energy_image, unspecified
from uronode.header import PARSE_ERRORS

logger = logging.getLogger(__name__)

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"
LEGACY_CONVERTED_ENHANCED_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2.2"
CT_SOP_CLASSES = frozenset(
    {CT_IMAGE_STORAGE, ENHANCED_CT_IMAGE_STORAGE, LEGACY_CONVERTED_ENHANCED_CT_IMAGE_STORAGE}
)
MULTIFRAME_CT_SOP_CLASSES = frozenset(
    {ENHANCED_CT_IMAGE_STORAGE, LEGACY_CONVERTED_ENHANCED_CT_IMAGE_STORAGE}
)

AXIAL_TOLERANCE_DEG = 30.0
"""Largest angle between the slice normal and the patient's head-feet axis.

30 degrees is the mechanical tilt range of clinical CT gantries, so every
gantry-tilted series passes; a stack of coronal or sagittal slices (90 degrees)
or a strongly oblique reformat does not. The network reads a slice with its
neighbours, and it learned neighbours only from axial stacks: beyond this a
stack's neighbours lie along an axis it never saw, and a tilted stack's
neighbour slices shift in-plane by more than half the distance between the
planes (tan 30 = 0.58). A lone slice has no neighbours and is read in any
plane (model 3 learned from lone coronal images)."""
POSITION_TOLERANCE_MM = 0.01
"""Slices closer than this along the normal are at the same position."""
TILT_TOLERANCE_MM = 0.5
"""Largest in-plane shift of a slice's origin off its stack (along the normal, or along
the table for a gantry tilt) before the stack is refused."""
ORIENTATION_TOLERANCE = 1e-3
SPACING_TOLERANCE = 1e-3
MAX_CT_MATRIX = 4096
"""Most Rows or Columns a CT slice may claim before its pixels are decoded.

Clinical CT reconstructs 512 x 512, ultra-high-resolution and photon-counting
scanners 1024 x 1024 or 2048 x 2048; 4096 leaves that a factor of two. A
decoder allocates what Rows x Columns claim before it finds the compressed
data short (a few hundred bytes claiming 30000 x 30000 made the worker
allocate 1.8 GB), so a larger claim is refused before any pixel is decoded."""


@dataclass(frozen=True, eq=False)
class Volume:
    """A CT series in HU, slices sorted along the normal, with what locates every voxel.

    ``hu[k, i, j]`` is the voxel of slice ``k``, row ``i``, column ``j``; its centre
    in DICOM patient coordinates (LPS, mm) is ``positions[k] + j * pixel_spacing[1]
    * row_direction + i * pixel_spacing[0] * column_direction``. With a tilted
    gantry the positions step along the table, not along the normal: voxel
    ``(k, i, j)`` and ``(k + 1, i, j)`` are then not straight above each other.
    """

    hu: np.ndarray
    """float32, shape (slices, rows, columns)."""
    positions: np.ndarray
    """float64, shape (slices, 3): ImagePositionPatient of every slice (LPS, mm)."""
    row_direction: tuple[float, float, float]
    """ImageOrientationPatient[0:3]: direction of increasing column index."""
    column_direction: tuple[float, float, float]
    """ImageOrientationPatient[3:6]: direction of increasing row index."""
    pixel_spacing: tuple[float, float]
    """PixelSpacing as in DICOM: (between rows, between columns) in mm."""
    slice_spacing: float
    """Median distance between the slice planes, along the normal (SliceThickness for one
    slice); with a tilted gantry less than the table step, by the cosine of the tilt."""
    frame_of_reference_uid: str
    study_instance_uid: str
    series_instance_uid: str
    sop_class_uid: str
    sop_instance_uids: tuple[str, ...]
    """SOP Instance UID of the instance each slice came from."""
    frame_numbers: tuple[int, ...]
    """1-based frame number of each slice inside its instance (1 for single-frame CT)."""
    source_paths: tuple[str, ...]
    """File each slice came from ("" where a dataset was given in memory)."""
    notes: tuple[str, ...] = ()
    """What loading had to decide or found that makes the series less than the model's figures assume, a
    sentence each: slices left out as duplicates of a position, slices missing, lossy-compressed images.
    The pipeline passes them on as the findings' cautions (``inference.pipeline.input_cautions``)."""
    instance_numbers: tuple[int, ...] = ()
    """Each slice's InstanceNumber (0 where it has none); empty where the volume was not loaded from DICOM."""

    def where(self, slices: Iterable[int]) -> str:
        """Where ``slices`` (indices) are, in words a reader finds them by: the series' image numbers, or frame
        numbers, as the report names a stone's (``slice_numbers``, ``images_words``)."""
        return images_words(*self.numbers(), [int(k) for k in slices])

    def numbers(self) -> tuple[tuple[int, ...], str]:
        """Each slice's number as a reader finds its image, and what the numbers are (``slice_numbers``)."""
        multiframe = any(f > 1 for f in self.frame_numbers)
        return slice_numbers(self.instance_numbers or (0,) * len(self.frame_numbers), self.frame_numbers,
                             multiframe, from_head=self.index_from_head)

    @property
    def index_from_head(self) -> bool:
        """Whether slice index 0 is the head end: the slices run along their normal, which a feet-first image
        orientation (probe 37: ImageOrientationPatient -1,0,0,0,1,0) points to the feet."""
        return index_from_head(self.normal)

    @property
    def shape(self) -> tuple[int, int, int]:
        z, y, x = self.hu.shape
        return z, y, x

    @property
    def normal(self) -> np.ndarray:
        return np.cross(np.asarray(self.row_direction), np.asarray(self.column_direction))

    @property
    def tilt_deg(self) -> float:
        """Angle between the slice normal and the head-feet axis (degrees); 0 for axial."""
        return _tilt_deg(self.normal)

    @property
    def offsets_mm(self) -> np.ndarray:
        """Each slice's position along the normal (mm), increasing."""
        return self.positions @ self.normal

    @property
    def spacing(self) -> tuple[float, float, float]:
        """(slice, row, column) spacing in mm; the slice value is the median gap."""
        return (self.slice_spacing, self.pixel_spacing[0], self.pixel_spacing[1])

    @property
    def slice_extent_mm(self) -> np.ndarray:
        """Extent of each slice along the normal: half the gap to each neighbour."""
        offsets = self.offsets_mm
        if offsets.size < 2:
            return np.full(offsets.shape, self.slice_spacing)
        gaps = np.diff(offsets)
        extent = np.empty_like(offsets)
        extent[0] = gaps[0]
        extent[-1] = gaps[-1]
        extent[1:-1] = (gaps[:-1] + gaps[1:]) / 2.0
        return extent

    @property
    def uniform_spacing(self) -> bool:
        offsets = self.offsets_mm
        if offsets.size < 3:
            return True
        gaps = np.diff(offsets)
        return bool(gaps.max() <= 1.1 * gaps.min())

    def index_to_patient(self, index: np.ndarray) -> np.ndarray:
        """Voxel indices (..., 3) as (slice, row, column), fractional allowed, -> LPS mm."""
        index = np.asarray(index, dtype=np.float64)
        k = index[..., 0]
        n = self.positions.shape[0]
        if n == 1:
            origin = np.broadcast_to(self.positions[0], index.shape).copy()
            origin = origin + k[..., None] * self.slice_spacing * self.normal
        else:
            k0 = np.clip(np.floor(k).astype(int), 0, n - 2)
            frac = (k - k0)[..., None]
            origin = self.positions[k0] * (1.0 - frac) + self.positions[k0 + 1] * frac
        row = np.asarray(self.row_direction)
        col = np.asarray(self.column_direction)
        return (
            origin
            + index[..., 2, None] * self.pixel_spacing[1] * row
            + index[..., 1, None] * self.pixel_spacing[0] * col
        )


@dataclass(frozen=True)
class _Frame:
    """One slice found in the instances, before its pixels are decoded."""

    dataset_index: int
    frame_number: int
    position: tuple[float, float, float]
    orientation: tuple[float, ...]
    pixel_spacing: tuple[float, float]
    slope: float
    intercept: float
    thickness: float | None
    instance_number: int
    sop_instance_uid: str
    energy: EnergyImage | None = None
    """What a multi-energy image is (``uronode.energy``; None for conventional CT), frame by frame."""
    kev: float | None = None
    """A virtual monoenergetic image's energy, where its header gives it."""
    unspecified: bool = False
    """Whether its Rescale Type calls the unit unspecified (US): read as HU, with a caution."""


def mirrored(volume: Volume) -> Volume:
    """The same patient's voxels stored the other way: the slices in reverse order, each image mirrored left-right,
    the row direction turned. A feet-first series (``Volume.index_from_head``: its images are the head-first ones
    mirrored, its slices head end first) becomes the head-first series of the same patient, and back (probe 37).
    Views of ``volume``'s arrays, nothing copied."""
    columns = volume.shape[2]
    row = np.asarray(volume.row_direction)
    return dataclasses.replace(
        volume, hu=volume.hu[::-1, :, ::-1],
        positions=volume.positions[::-1] + (columns - 1) * volume.pixel_spacing[1] * row,
        row_direction=(-float(row[0]), -float(row[1]), -float(row[2])),
        sop_instance_uids=volume.sop_instance_uids[::-1], frame_numbers=volume.frame_numbers[::-1],
        source_paths=volume.source_paths[::-1], instance_numbers=volume.instance_numbers[::-1])


def index_from_head(normal: np.ndarray) -> bool:
    """Whether a stack sorted along ``normal`` starts at the head: the normal points to the feet (LPS: -z)."""
    return bool(normal[2] < 0)


def slice_numbers(instance_numbers: Sequence[int | None], frame_numbers: Sequence[int],
                  multiframe: bool, *, from_head: bool = False) -> tuple[tuple[int, ...], str]:
    """Each slice's number as a reader finds its CT image, and what the numbers are: a slice of a single-frame
    instance has its InstanceNumber ("instance"), a frame of a multi-frame instance its frame number ("frame").
    Where they do not tell the slices apart (one missing, under 1, or repeated), every slice has its 1-based
    place counted from the feet end ("index"), so that the numbers stay unique: the volume's index plus 1, or
    counted back where the volume's index 0 is the head end (``from_head``, ``Volume.index_from_head``)."""
    found = list(frame_numbers) if multiframe else list(instance_numbers)
    numbers = [n for n in found if n is not None and n >= 1]
    if len(numbers) == len(found) and len(set(numbers)) == len(numbers):
        return tuple(numbers), "frame" if multiframe else "instance"
    return tuple(range(len(found), 0, -1) if from_head else range(1, len(found) + 1)), "index"


def number_ranges(numbers: Sequence[int]) -> str:
    """Sorted numbers as ranges: [31, 32, 33, 40] -> "31-33, 40"."""
    runs: list[list[int]] = []
    for n in sorted(set(numbers)):
        if runs and n == runs[-1][-1] + 1:
            runs[-1].append(n)
        else:
            runs.append([n])
    return ", ".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else str(r[0]) for r in runs)


def images_words(numbers: Sequence[int], kind: str, slices: Sequence[int]) -> str:
    """Where slices ``slices`` are, in words a reader finds them by (``slice_numbers``' numbers and kind): "images
    102-103", "image 108", "frames 3-5", or "slices 3-5 (counted from the feet end)" where the series' own numbers
    do not tell its images apart."""
    chosen = [numbers[k] for k in slices]
    plural = "" if len(set(chosen)) == 1 else "s"
    text = number_ranges(chosen)
    if kind == "instance":
        return f"image{plural} {text}"
    if kind == "frame":
        return f"frame{plural} {text}"
    return f"slice{plural} {text} (counted from the feet end)"


def read_dicom(path: str | Path, *, stop_before_pixels: bool = False,
               specific_tags: list[str] | None = None) -> Dataset:
    """A DICOM file, or a bare data set without the preamble and File Meta group (older software and some
    exports write those; the node's STOW-RS takes them too): read as the data set it is, with the transfer
    syntax pydicom finds. InvalidDicomError for anything else."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=stop_before_pixels, specific_tags=specific_tags)
    except InvalidDicomError as first:
        try:
            ds = pydicom.dcmread(path, force=True, stop_before_pixels=stop_before_pixels, specific_tags=specific_tags)
            wanted = specific_tags or ["SOPClassUID", "SeriesInstanceUID"]
            identified = all(_is_uid(ds.get(keyword)) for keyword in wanted if keyword.endswith("UID"))
        except Exception:  # noqa: BLE001 - whatever a forced read of a non-DICOM file raises, it is not DICOM
            raise first from None
        if not identified or ds.original_encoding[0] is None:
            raise first from None
    _infer_transfer_syntax(ds)
    return ds


def _infer_transfer_syntax(ds: Dataset) -> None:
    """A data set whose File Meta group lacks TransferSyntaxUID (none at all in a bare data set, or a Part 10
    file whose writer left it out) gets the one pydicom read it with: its pixels cannot be decoded without."""
    if "TransferSyntaxUID" in ds.file_meta or ds.original_encoding[0] is None:
        return
    implicit, little = ds.original_encoding
    ds.file_meta.TransferSyntaxUID = (pydicom.uid.ImplicitVRLittleEndian if implicit
                                      else pydicom.uid.ExplicitVRLittleEndian if little
                                      else pydicom.uid.ExplicitVRBigEndian)


def _is_uid(value: object) -> bool:
    text = str(value or "")
    return 0 < len(text) <= 64 and all(part.isdigit() for part in text.split("."))


def _read(source: str | Path | Dataset) -> tuple[Dataset, str]:
    if isinstance(source, Dataset):
        return source, ""
    path = str(source)
    try:
        return read_dicom(path), path
    except (InvalidDicomError, OSError, EOFError) as exc:
        raise VolumeError(f"{Path(path).name} cannot be read as DICOM: {exc}") from exc


def _floats(value: object, count: int, what: str) -> tuple[float, ...]:
    if not isinstance(value, Iterable):
        raise VolumeError(f"{what} is not {count} numbers")
    try:
        numbers = tuple(float(v) for v in value)
    except (TypeError, ValueError) as exc:
        raise VolumeError(f"{what} is not {count} numbers") from exc
    if len(numbers) != count or not all(math.isfinite(v) for v in numbers):
        raise VolumeError(f"{what} is not {count} finite numbers")
    return numbers


def _point(value: object, what: str) -> tuple[float, float, float]:
    x, y, z = _floats(value, 3, what)
    return x, y, z


def _pair(value: object, what: str) -> tuple[float, float]:
    first, second = _floats(value, 2, what)
    return first, second


_DECIMAL_COMMA = re.compile(r"[+-]?(\d*),(\d+)|[+-]?(\d+),")
"""One number written with a decimal comma ("-1024,0", "2,5"), as exports made under a European locale write
DS values: a single value with one comma and digits only is no list (DS separates values with a backslash),
so it is read as the number it means, unless it could as well group thousands (``_THOUSANDS``)."""
_THOUSANDS = re.compile(r"[+-]?[1-9]\d{0,2},\d{3}")
"""A value such as "-1,024" or "2,500", whose comma may be a decimal comma or a thousands separator (-1.024 or
-1024): no number can be read from it."""


def decimal_number(value: object) -> float | None:
    """A DS or IS value (pydicom's are float and int; one it could not parse stays a str) as a finite float,
    a decimal comma read as a point; None where it is no number (text, several values, NaN, a comma that may
    group thousands). The writers mend source headers with it as the loader reads them."""
    if isinstance(value, str):
        text = value.strip()
        if _DECIMAL_COMMA.fullmatch(text) and not _THOUSANDS.fullmatch(text):
            text = text.replace(",", ".")
        value = text
    if not isinstance(value, int | float | str | Decimal):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _number(value: object, what: str) -> float:
    """``decimal_number``, or a ``VolumeError`` naming the attribute and the file where it is no number (a
    ValueError would end a whole run, every other series of it too)."""
    number = decimal_number(value)
    if number is None:
        raise VolumeError(f"{what} is not a number: {value!r}")
    return number


def _given(value: object) -> bool:
    """Whether an optional value is there: an empty DS or IS (pydicom reads it as "" or None) is absent."""
    return value is not None and value != ""


def _instance_number(value: object) -> int:
    """InstanceNumber as a whole number, or 0 where it is absent or none ("12A", 1.5): it only breaks ties
    between slices at one position, which an instance without one loses, so a bad one is no reason to refuse
    the series."""
    if isinstance(value, int):
        return int(value)
    try:
        number = float(str(value).strip())
    except ValueError:
        return 0
    return int(number) if number.is_integer() else 0


def _frame_count(ds: Dataset, name: str) -> int:
    """NumberOfFrames (1 where absent or empty); ``VolumeError`` where it is not a whole number."""
    value = ds.get("NumberOfFrames")
    if not _given(value):
        return 1
    number = _number(value, f"NumberOfFrames of {name}")
    if not number.is_integer() or number < 0:
        raise VolumeError(f"NumberOfFrames of {name} is not a whole number: {value!r}")
    return int(number) or 1


def _rescale(ds: Dataset, frame_index: int, keyword: str) -> object | None:
    """RescaleSlope or RescaleIntercept of a frame: from its CT Pixel Value Transformation functional group,
    else from the top level of the data set, where converters that flatten an Enhanced CT put it; None where
    neither states it."""
    value = _functional(ds, frame_index, "PixelValueTransformationSequence", keyword)
    if not _given(value):
        value = ds.get(keyword)
    return value if _given(value) else None


def _unsigned_without_intercept(name: str) -> VolumeError:
    return VolumeError(f"{name} has no RescaleIntercept and unsigned pixel values: they cannot be read as "
                       "Hounsfield units (CT stores them with an intercept, usually -1024)")


def _functional(ds: Dataset, frame_index: int, sequence: str, keyword: str) -> object | None:
    """A value from the per-frame functional groups, else from the shared ones."""
    for groups_name in ("PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence"):
        groups = ds.get(groups_name)
        if not groups:
            continue
        group = groups[frame_index] if groups_name.startswith("PerFrame") else groups[0]
        items = group.get(sequence)
        if items and keyword in items[0]:
            return items[0].get(keyword)
    return None


def _frames_of(ds: Dataset, dataset_index: int, name: str) -> list[_Frame]:
    sop_uid = str(ds.get("SOPInstanceUID", ""))
    if not sop_uid:
        raise VolumeError(f"{name} has no SOP Instance UID")
    instance_number = _instance_number(ds.get("InstanceNumber"))
    unsigned = int(ds.get("PixelRepresentation", 1) or 0) == 0
    if ds.get("SOPClassUID") in MULTIFRAME_CT_SOP_CLASSES or "PerFrameFunctionalGroupsSequence" in ds:
        count = _frame_count(ds, name)
        items = len(ds.get("PerFrameFunctionalGroupsSequence") or [])
        if count > 1 and items < count:
            raise VolumeError(f"{name} holds {count} frames (NumberOfFrames) but {items} items of per-frame "
                              "functional groups: the frames without one have no position")
        frames = []
        for i in range(count):
            position = _functional(ds, i, "PlanePositionSequence", "ImagePositionPatient")
            orientation = _functional(ds, i, "PlaneOrientationSequence", "ImageOrientationPatient")
            spacing = _functional(ds, i, "PixelMeasuresSequence", "PixelSpacing")
            if position is None or orientation is None or spacing is None:
                raise VolumeError(
                    f"frame {i + 1} of {name} lacks its position, orientation or pixel spacing"
                )
            slope = _rescale(ds, i, "RescaleSlope")
            intercept = _rescale(ds, i, "RescaleIntercept")
            if intercept is None and unsigned:
                raise _unsigned_without_intercept(f"frame {i + 1} of {name}")
            thickness = _functional(ds, i, "PixelMeasuresSequence", "SliceThickness")
            frames.append(
                _Frame(
                    **_energy_of(ds, i),
                    dataset_index=dataset_index,
                    frame_number=i + 1,
                    position=_point(position, f"ImagePositionPatient of frame {i + 1} of {name}"),
                    orientation=_floats(orientation, 6, f"ImageOrientationPatient of {name}"),
                    pixel_spacing=_pair(spacing, f"PixelSpacing of {name}"),
                    slope=_number(slope, f"RescaleSlope of {name}") if slope is not None else 1.0,
                    intercept=_number(intercept, f"RescaleIntercept of {name}") if intercept is not None else 0.0,
                    thickness=_number(thickness, f"SliceThickness of {name}") if thickness else None,
                    instance_number=instance_number,
                    sop_instance_uid=sop_uid,
                )
            )
        return frames
    for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
        if keyword not in ds:
            raise VolumeError(f"{name} has no {keyword}")
    frame_count = _frame_count(ds, name)
    if frame_count > 1:
        raise VolumeError(f"{name} holds {frame_count} frames but one position: a CT Image Storage instance is "
                          "one slice (send the series as one file per slice, or as Enhanced CT)")
    slope, intercept, thickness = (ds.get(k) for k in ("RescaleSlope", "RescaleIntercept", "SliceThickness"))
    if ds.get("RescaleIntercept") in (None, "") and unsigned:
        raise _unsigned_without_intercept(name)
    return [
        _Frame(
            **_energy_of(ds, None),
            dataset_index=dataset_index,
            frame_number=1,
            position=_point(ds.ImagePositionPatient, f"ImagePositionPatient of {name}"),
            orientation=_floats(ds.ImageOrientationPatient, 6, f"ImageOrientationPatient of {name}"),
            pixel_spacing=_pair(ds.PixelSpacing, f"PixelSpacing of {name}"),
            # an empty value is absent; a slope of 0 (no valid CT has one) has always been read as 1
            slope=(_number(slope, f"RescaleSlope of {name}") if _given(slope) else 1.0) or 1.0,
            intercept=_number(intercept, f"RescaleIntercept of {name}") if _given(intercept) else 0.0,
            thickness=(_number(thickness, f"SliceThickness of {name}") or None) if thickness else None,
            instance_number=instance_number,
            sop_instance_uid=sop_uid,
        )
    ]


PADDING_HU = -1024.0
"""What pixel padding (outside a scanner's round field of view) is read as: air."""
IMPOSSIBLE_HU = 32_767.0
"""More than any CT's HU scale holds (an extended scale ends near 30,700 HU): a pixel beyond it (or below -32,768) is padding whose
PixelPaddingValue an export stripped (GE's -2000 stored unsigned, 63536, reads as 62,512 HU), read as air
(probe 38: every result of such a series had said "Metal" on every image)."""


IMPOSSIBLE_SHARE = 0.5
"""The largest share of a slice's pixels that may read above ``IMPOSSIBLE_HU`` (padding whose tag an export
stripped: at most the corners outside a round field of view, a fifth of the square); more, and the slice's
rescale is wrong."""


def _padding_range(ds: Dataset, dtype: np.dtype) -> tuple[int, int] | None:
    """The stored values that are padding (PixelPaddingValue, up to PixelPaddingRangeLimit), in the pixels'
    own type, or None. Unsigned padding such as 63536 (-2000 as unsigned) would otherwise read as 62,512 HU:
    a body as wide as the image, and the midline that sides a stone moved by centimetres."""
    value = ds.get("PixelPaddingValue")
    if value is None or isinstance(value, bytes):
        return None
    limit = ds.get("PixelPaddingRangeLimit")
    values = [int(value)] + ([int(limit)] if limit is not None and not isinstance(limit, bytes) else [])
    if np.issubdtype(dtype, np.signedinteger):  # a value read as unsigned where the pixels are signed
        bits = np.iinfo(dtype).bits
        values = [v - (1 << bits) if v >= 1 << (bits - 1) else v for v in values]
    return min(values), max(values)


def _instance_name(index: int, ds: Dataset, path: str) -> str:
    """How the messages name an instance: its place among those given, and its file where the file's name is the
    sender's; a file named by its own SOP Instance UID (the node's store, many archives) is named by the Instance
    Number and UID a viewer shows, not by a file name nobody else sees (probe 48: a failed job's reason named
    the store's ``<uid>-<suffix>.dcm``)."""
    name = f"instance {index + 1}"
    file = Path(path).name if path else ""
    uid = str(ds.get("SOPInstanceUID", "") or "")
    if not file:
        return name
    if not uid or uid not in file:
        return f"{name} ({file})"
    number = str(ds.get("InstanceNumber", "") or "").strip()
    return f"{name} (" + (f"Instance Number {number}, " if number else "") + f"SOP Instance UID {uid})"


def _not_a_slice(ds: Dataset, name: str) -> str | None:
    """Why an instance is no slice of the CT volume (another modality or SOP class, a localizer, no pixel
    data), or None. Scanners and PACS put such objects into a series beside its slices (a scout, a dose
    report, a dose screen, raw data): they are left out, and only a series of nothing else fails."""
    modality = str(ds.get("Modality", ""))
    if modality != "CT":
        return f"{name} is not CT (Modality {modality or 'missing'})"
    sop_class = str(ds.get("SOPClassUID", ""))
    if sop_class not in CT_SOP_CLASSES:
        return f"{name} is not a CT image (SOP Class {sop_class or 'missing'})"
    image_type = [str(v).upper() for v in (ds.get("ImageType") or [])]
    if "LOCALIZER" in image_type:
        return f"{name} is a localizer, not an axial image"
    if "PixelData" not in ds:
        return f"{name} has no pixel data"
    if _screen_capture(ds, image_type):
        return (f"{name} is a secondary image without a position (Image Type {_values(image_type)}): a screen "
                "capture such as a dose screen, not a CT slice")
    return None


SCREEN_WORDS = frozenset({"OTHER", "SCREEN", "DOSE", "DOSE_INFO", "DOSE REPORT", "SCREEN SAVE", "CAPTURE"})
"""Image Type values after DERIVED\\SECONDARY that name no slice (a dose screen is DERIVED\\SECONDARY\\OTHER)."""


def _screen_capture(ds: Dataset, image_type: list[str]) -> bool:
    """Whether a CT image is a screen capture stored as CT (a dose screen): secondary, without a position (absent
    or empty), and said so by its Image Type or by lacking an orientation or a pixel spacing too. A secondary
    slice that has them but its position stays a broken slice, which refuses the series (review 48: a
    DERIVED\\SECONDARY\\AXIAL slice without a position would otherwise go quietly)."""
    if "SECONDARY" not in image_type or ds.get("ImagePositionPatient") or "PerFrameFunctionalGroupsSequence" in ds \
            or "SharedFunctionalGroupsSequence" in ds:
        return False
    return bool(SCREEN_WORDS & set(image_type[2:])) or not ds.get("ImageOrientationPatient") \
        or not ds.get("PixelSpacing")


def _values(value: object) -> str:
    """A multi-valued text attribute (Image Type, Frame Type) joined by backslashes, as the index keeps it."""
    if not value:
        return ""
    return value if isinstance(value, str) else "\\".join(str(v) for v in cast(Iterable[object], value))


def _energy_of(ds: Dataset, frame_index: int | None) -> dict[str, Any]:
    """What a multi-energy image is (``uronode.energy``), its keV and whether its unit is unspecified, as
    ``_Frame`` fields: from a frame's own functional groups where an Enhanced CT has them (Frame Type, Rescale
    Type, Monoenergetic Energy Equivalent: the frames of one instance may differ), else from the top level."""
    image_type, kev = "", None
    if frame_index is not None:
        image_type = _values(_functional(ds, frame_index, "CTImageFrameTypeSequence", "FrameType"))
        kev = _functional(ds, frame_index, "MultienergyCTCharacteristicsSequence", "MonoenergeticEnergyEquivalent")
    if not image_type:
        image_type = _values(ds.get("ImageType"))
    if not _given(kev):
        items = ds.get("MultienergyCTCharacteristicsSequence") or []
        kev = items[0].get("MonoenergeticEnergyEquivalent") if items else ds.get("MonoenergeticEnergyEquivalent")
    unit = str(_rescale(ds, frame_index or 0, "RescaleType") or "")
    number = decimal_number(kev) if _given(kev) else None
    return {"energy": energy_image(image_type, unit), "unspecified": unspecified(unit),
            "kev": number if number is not None and 0 < number < 1000 else None}


INTENDED_USE_CAUTIONS = ("The header names ", "A patient of ")
"""How the cautions of a series outside the model's intended use begin (:func:`intended_use_notes`): another region
than the abdomen, or a child. They question every finding and come first (``inference.pipeline.input_cautions``)."""
ENERGY_CAUTION = " of a multi-energy CT"
"""What a caution about a multi-energy image holds (:func:`energy_note`): it comes after contrast's, before the rest."""
NEAR_CONVENTIONAL_KEV = (65.0, 75.0)
"""Energies whose monoenergetic image reads about as conventional 120 kV CT does (70 keV is the usual match)."""


def energy_note(frames: Sequence[_Frame], contrast: Evidence | None) -> list[str]:
    """Cautions where the series' frames are multi-energy images the model reads all the same
    (``uronode.energy``): a virtual monoenergetic image (naming its energies and which way they move a stone's
    HU), a material-removed or -modified one (uploaded; where the header says the acquisition had contrast, what
    the processing leaves of it is said here, not as a contrast-enhanced image: its iodine was taken out), or a
    unit the header calls unspecified (Rescale Type US, read as HU)."""
    notes = []
    energies = {f.energy.term: f.energy for f in frames if f.energy is not None}
    if "VMI" in energies:
        kevs = sorted({f.kev for f in frames if f.kev is not None and f.energy is not None and f.energy.monoenergetic})
        at = f" at {' and '.join(f'{k:g}' for k in kevs)} keV" if kevs else ""
        low, high = NEAR_CONVENTIONAL_KEV
        if kevs and kevs[-1] < low:
            how = ("below the about 70 keV that reads like conventional CT: calcium stones and bone read brighter, "
                   "and the noise is higher, than on the CT the model learned")
        elif kevs and kevs[0] > high:
            how = ("above the about 70 keV that reads like conventional CT: calcium stones read fainter than on the "
                   "CT the model learned, and small ones may be missed")
        elif kevs and kevs[0] >= low and kevs[-1] <= high:
            how = "an energy that reads about like conventional CT"
        else:
            how = ("calcium stones and bone read brighter below about 70 keV, and fainter above it, than on the "
                   "conventional CT the model learned")
        notes.append(f"A virtual monoenergetic image{at}{ENERGY_CAUTION}: {how}; the HU reported are this energy's.")
    changed = next((e for e in energies.values() if e.hounsfield and not e.monoenergetic), None)
    if changed is not None:
        made_from = (f" It was made from a contrast-enhanced acquisition ({contrast.text}): contrast the processing "
                     "left, dense in the collecting system, can be reported as a stone." if contrast else "")
        notes.append(f"{changed.kind[0].upper()}{changed.kind[1:]}: the processing can take calcium, and with it "
                     "small stones, out of the pixels; a result without stones rules out less than on a conventional "
                     f"CT, and sizes and HU may be understated.{made_from}")
    if any(f.unspecified for f in frames):
        notes.append("The header calls the unit of the pixel values unspecified (Rescale Type US): they were read "
                     "as Hounsfield units.")
    return notes


def _check_instance(ds: Dataset, name: str) -> None:
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        raise VolumeError(f"{name} is not a greyscale image")
    rows, columns = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
    if rows > MAX_CT_MATRIX or columns > MAX_CT_MATRIX:
        raise VolumeError(
            f"{name} claims {rows} x {columns} pixels, more than any CT makes (at most {MAX_CT_MATRIX} x "
            f"{MAX_CT_MATRIX} are read): its pixel data was not decoded"
        )


def _listed(values: Iterable[float]) -> str:
    return "[" + ", ".join(f"{v:g}" for v in values) + "]"


def _tilt_deg(normal: np.ndarray) -> float:
    return math.degrees(math.acos(min(1.0, abs(float(normal[2])))))


def _stack_shift_mm(positions: np.ndarray, normal: np.ndarray) -> float:
    """How far the slices' origins leave their stack, in-plane (mm).

    A stack steps along its normal, or (tilted gantry) along the table, the
    head-feet axis: a step of ``d`` mm between the planes then moves the origin
    ``d * tan(tilt)`` in-plane, towards the head-feet axis. Whichever of the two
    fits better is measured; 0 for a perfect stack of either kind.
    """
    steps = positions - positions[0]
    offsets = steps @ normal
    in_plane = steps - np.outer(offsets, normal)
    along_normal = float(np.linalg.norm(in_plane, axis=1).max())
    head_feet = np.array([0.0, 0.0, 1.0])
    cosine = float(normal[2])
    if abs(cosine) < 1e-6:
        return along_normal
    shear = (head_feet - cosine * normal) / cosine
    along_table = float(np.linalg.norm(in_plane - np.outer(offsets, shear), axis=1).max())
    return min(along_normal, along_table)


def _one_patient(datasets: Sequence[Dataset]) -> None:
    """``VolumeError`` where the instances name more than one patient (Patient ID; with the same ID, two issuers
    where both are given): a correction sent again for part of a series (probe 32) left images of two identities
    in it, and the results would carry one of them; so do other names, birth dates, sexes or Accession Numbers
    under one ID (probe 45). The reason counts the images of each, never names a value (it is shown and logged)."""
    found = Counter(str(d.get("PatientID", "") or "").strip() for d in datasets)
    if len(found) == 1:  # one ID: other patients only where two images name other issuers (a PACS may add one)
        found = Counter(issuer for d in datasets if (issuer := str(d.get("IssuerOfPatientID", "") or "").strip()))
    if len(found) > 1:
        counts = " and ".join(str(n) for _, n in found.most_common())
        raise VolumeError(f"the series' images name {len(found)} different patients (Patient IDs on {counts} "
                          "images): part of it was sent again after a correction? Send the whole series again with "
                          "one patient's identity")
    # one ID, and the rest of the identity or the order corrected on part of it (probe 45: analysed without a word,
    # the results carrying whichever the first image named)
    # (compared as the store compares a replaced image's: an image without a name, birth date or sex names no other;
    # one without an Accession Number does)
    for keyword, words in (("PatientName", "patient names"), ("PatientBirthDate", "birth dates"),
                           ("PatientSex", "sexes"), ("AccessionNumber", "Accession Numbers")):
        named: Counter[str] = Counter(str(ds.get(keyword, "") or "") for ds in datasets
                                      if identity_value(keyword, ds.get(keyword, "")) or keyword == "AccessionNumber")
        # every two values compared (review 42: grouped by the first seen, the outcome hung on the images' order)
        if any(not same_identity(keyword, a, b) for a in named for b in named):
            counts = " and ".join(str(n) for _, n in named.most_common())
            raise VolumeError(f"the series' images name {len(named)} different {words} ({counts} images): part of "
                              "it was sent again after a correction? Send the whole series again with one identity")


def _single(values: Iterable[str], what: str) -> str:
    found = sorted({v for v in values})
    if len(found) > 1:
        raise VolumeError(f"the instances belong to {len(found)} different {what}s")
    return found[0] if found else ""




def contrast_agent(ds: Dataset) -> str:
    """The contrast agent ``ds`` names: its Contrast/Bolus Agent (0018,0010), else the agents coded in its
    Contrast/Bolus Agent Sequence (0018,0012), each by its Code Meaning (its Code Value where it has none),
    joined by ", ". An Enhanced CT image names its agent only there: its Enhanced Contrast/Bolus module is
    present where contrast was used, and it has no (0018,0010). '' where neither names one."""
    text = str(ds.get("ContrastBolusAgent", "") or "").strip()
    if text:
        return text
    try:
        items = ds.get("ContrastBolusAgentSequence") or []
        named = [str(item.get("CodeMeaning", "") or item.get("CodeValue", "") or "").strip() for item in items]
    except PARSE_ERRORS:  # a damaged sequence names nothing; the volume itself has been read
        return ""
    return ", ".join(n for n in named if n)


CONTRAST_TEXTS = ("SeriesDescription", "StudyDescription", "ProtocolName")
"""What :func:`header_contrast` reads besides the agent: the series' own description, then what the examination
is called (``uronode.contrast.contrast_evidence``'s context)."""


def header_contrast(datasets: Iterable[Dataset]) -> Evidence | None:
    """What in the header of any of ``datasets`` says the series was acquired with contrast (``uronode.contrast``;
    the agent as :func:`contrast_agent` reads it), or None."""
    headers = {(contrast_agent(ds), *(str(ds.get(keyword, "") or "") for keyword in CONTRAST_TEXTS))
               for ds in datasets}  # a series' slices mostly say the same: each saying read once
    return next((e for agent, description, study, protocol in sorted(headers)
                 if (e := contrast_evidence(agent, description, (("Study Description", study),
                                                                 ("Protocol Name", protocol))))), None)


def intended_use_notes(datasets: Sequence[Dataset]) -> list[str]:
    """Cautions where the header says the series is outside the model's intended use (non-contrast CT of an
    adult's abdomen): it names another region or a phantom and the abdomen nowhere (``uronode.anatomy``; such a
    series is read when it is uploaded, or with ``inference.other_region_series = "read"``), or the patient is
    a child (Patient's Age, else the Study Date less the Birth Date). Probe 46: a head CT and a five-year-old's
    abdomen were reported as an adult's abdomen, without a word."""
    notes = []
    region = caution_region((str(ds.get("BodyPartExamined", "") or ""), str(ds.get("ProtocolName", "") or ""),
                             str(ds.get("SeriesDescription", "") or ""), str(ds.get("StudyDescription", "") or ""))
                            for ds in datasets)
    if region is not None:
        notes.append(f"The header names {region.kind} ({region.word}), not the abdomen: the model was made for "
                     "abdominal CT; what it marks outside the kidneys, ureters and bladder is no urinary stone.")
    first = datasets[0]
    age = age_years(*(str(first.get(keyword, "") or "") for keyword in (
        "PatientAge", "PatientBirthDate", "StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate")))
    if age is not None and age < CHILD_YEARS:
        months = int(round(age * 12, 6))
        shown = (f"{int(age)} years" if age >= 2 else f"{months} months" if months > 1
                 else "1 month" if months == 1 else "under a month")
        notes.append(f"A patient of {shown}: the model was never measured on children; what it finds and misses, "
                     "and its sizes, are unknown there.")
    return notes


def contrast_note(evidence: Evidence | None) -> list[str]:
    """A caution where the header says the series was acquired with contrast (:func:`header_contrast`): the model
    reads non-contrast CT."""
    if evidence is None:
        return []
    return [f"{'Contrast-enhanced' if evidence.clear else 'Perhaps contrast-enhanced'} ({evidence.text}): "
            "the model was made for non-contrast CT; contrast in the kidneys, ureters and bladder can be "
            "reported as stones and can hide them."]


def _drop_duplicates(frames: list[_Frame], normal: np.ndarray) -> list[_Frame]:
    seen: dict[tuple[str, int], _Frame] = {}
    for frame in frames:
        seen.setdefault((frame.sop_instance_uid, frame.frame_number), frame)
    unique = list(seen.values())
    unique.sort(key=lambda f: float(np.dot(f.position, normal)))
    kept: list[_Frame] = []
    for frame in unique:
        if kept and abs(float(np.dot(frame.position, normal) - np.dot(kept[-1].position, normal))) < POSITION_TOLERANCE_MM:
            winner = max(
                kept[-1], frame, key=lambda f: (f.instance_number, f.sop_instance_uid, -f.frame_number)
            )
            kept[-1] = winner
        else:
            kept.append(frame)
    dropped = len(frames) - len(kept)
    if dropped:
        logger.warning("dropped %d duplicate slice(s) of %d (same instance or same position)", dropped, len(frames))
    return kept


def load_volume(sources: Sequence[str | Path | Dataset],
                progress: Callable[[int], object] | None = None) -> Volume:
    """Assemble the instances of one CT series into a ``Volume`` (see the module's rules).

    Raises ``VolumeError`` with the reason when the series cannot be read as an axial CT.
    ``progress(1)`` is called after each instance is read (a tqdm bar's ``update`` fits).
    """
    if not sources:
        raise VolumeError("no instances were given")
    datasets: list[Dataset] = []
    paths: list[str] = []
    names: list[str] = []
    numbers: list[int] = []
    frames: list[_Frame] = []
    left_out: list[str] = []
    for index, source in enumerate(sources):
        ds, path = _read(source)
        name = _instance_name(index, ds, path)
        if progress is not None:
            progress(1)
        reason = _not_a_slice(ds, name)
        if reason is not None:
            left_out.append(reason)
            continue
        _check_instance(ds, name)
        found = _frames_of(ds, len(datasets), name)
        unread = [f for f in found if f.energy is not None and not f.energy.hounsfield]
        if unread:  # values that are no HU (a multi-energy map): left out as the other non-slices are
            which = f"{name} is" if len(unread) == len(found) else f"{len(unread)} of the {len(found)} frames of {name} are"
            left_out.append(f"{which} {cast(EnergyImage, unread[0].energy).reason(asked=True)}")
            found = [f for f in found if f.energy is None or f.energy.hounsfield]
            if not found:
                continue
        frames.extend(found)
        datasets.append(ds)
        paths.append(path)
        names.append(name)
        numbers.append(index + 1)
    if not datasets:
        more = f" (and {len(left_out) - 1} more like it)" if len(left_out) > 1 else ""
        raise VolumeError(left_out[0] + more)
    if left_out:
        logger.warning("left out %d instance(s) that are no slice of the CT: %s%s", len(left_out),
                       "; ".join(left_out[:3]), "; ..." if len(left_out) > 3 else "")

    series_uid = _single((str(d.get("SeriesInstanceUID", "")) for d in datasets), "series")
    study_uid = _single((str(d.get("StudyInstanceUID", "")) for d in datasets), "studie")
    for_uid = _single((str(d.get("FrameOfReferenceUID", "")) for d in datasets), "frame of reference")
    sop_class = _single((str(d.SOPClassUID) for d in datasets), "SOP classe")
    _one_patient(datasets)

    shapes: dict[tuple[int, int], list[str]] = defaultdict(list)
    for ds, name in zip(datasets, names, strict=True):
        shapes[(int(ds.Rows), int(ds.Columns))].append(name)
    if len(shapes) > 1:
        raise VolumeError(f"the slices have mixed sizes: {sorted(shapes)}: " + "; ".join(
            f"{size} in {len(found)} instance(s), such as {found[0]}" for size, found in sorted(shapes.items())))
    ((rows, columns),) = shapes

    def where(frame: _Frame) -> str:
        """The file of a slice, and its frame where the file holds more than one: for the messages."""
        many = sum(f.dataset_index == frame.dataset_index for f in frames) > 1
        return (f"frame {frame.frame_number} of " if many else "") + names[frame.dataset_index]

    orientation = np.asarray(frames[0].orientation)
    for frame in frames[1:]:
        if np.abs(np.asarray(frame.orientation) - orientation).max() > ORIENTATION_TOLERANCE:
            raise VolumeError(f"the slices have mixed image orientations: {where(frames[0])} has "
                              f"{_listed(frames[0].orientation)}, {where(frame)} {_listed(frame.orientation)}")
    spacing = np.asarray(frames[0].pixel_spacing)
    for frame in frames[1:]:
        if np.abs(np.asarray(frame.pixel_spacing) - spacing).max() > SPACING_TOLERANCE:
            raise VolumeError(f"the slices have mixed pixel spacings: {where(frames[0])} has "
                              f"{_listed(frames[0].pixel_spacing)} mm, {where(frame)} {_listed(frame.pixel_spacing)} mm")
    if spacing.min() <= 0:
        raise VolumeError("PixelSpacing is not positive")

    row_dir = orientation[:3] / np.linalg.norm(orientation[:3])
    col_dir = orientation[3:] / np.linalg.norm(orientation[3:])
    if abs(float(np.dot(row_dir, col_dir))) > 1e-2:
        raise VolumeError("ImageOrientationPatient rows and columns are not perpendicular")
    normal = np.cross(row_dir, col_dir)
    normal = normal / np.linalg.norm(normal)
    angle = _tilt_deg(normal)
    # one slice given (however many copies of it): a lone slice, read in any plane
    lone = len({(f.sop_instance_uid, f.frame_number) for f in frames}) == 1
    if lone and angle > 1.0:
        logger.info("a lone slice %.0f degrees from axial: read in its own plane, as a 2D image", angle)
    elif round(angle, 1) > AXIAL_TOLERANCE_DEG:  # to a tenth of a degree: IOP is rounded text
        raise VolumeError(
            f"the slices are not axial: their normal is {angle:.0f} degrees from the head-feet axis"
        )

    given = len({(f.sop_instance_uid, f.frame_number) for f in frames})
    frames = _drop_duplicates(frames, normal)
    notes: list[str] = []
    if len(frames) < given:
        notes.append(f"{given - len(frames)} of the series' {given} images lay at the position of another and "
                     "were left out (the higher InstanceNumber kept): a second reconstruction or a resent image "
                     "in the same series would be mixed into this one.")
    positions = np.asarray([f.position for f in frames], dtype=np.float64)
    offsets = positions @ normal
    if len(frames) > 1:
        shift = _stack_shift_mm(positions, normal)
        if shift > TILT_TOLERANCE_MM:
            raise VolumeError(
                f"the slices shift {shift:.1f} mm in-plane along the stack (tilted gantry); "
                "such stacks are not resampled (a tilt is read from ImageOrientationPatient, and "
                "the positions must step along the normal or along the table)"
            )
        gaps = np.diff(offsets)
        slice_spacing = float(np.median(gaps))
        missing = np.flatnonzero(gaps > 1.5 * slice_spacing)
        image_numbers, image_kind = slice_numbers(
            [f.instance_number for f in frames], [f.frame_number for f in frames],
            any(f.frame_number > 1 for f in frames), from_head=index_from_head(normal))

        def between(k: int) -> str:
            """The gap after slice index ``k``, in the numbers a reader finds the images by."""
            low, high = sorted((image_numbers[k], image_numbers[k + 1]))
            return f"{low} and {high}"

        wide = gaps[missing]
        if missing.size >= 3 and missing[-1] - missing[0] + 1 == missing.size and wide.max() <= 1.1 * wide.min():
            # one run of even wider gaps: two reconstructions' spacings in one series, no slice missing
            # (probe 30: 128 slices at 1.25 mm and 444 at 0.625 mm were said to miss slices after slice 1 ...)
            # named by the series' own image numbers, as the report names a stone's (counted from the feet end
            # only where those numbers do not tell the images apart)
            wider = images_words(image_numbers, image_kind, range(int(missing[0]), int(missing[-1]) + 2))
            logger.warning("the slice spacing changes within the series: %d gaps of %.2f mm between %s beside "
                           "%d of %.2f mm", missing.size, float(wide.mean()), wider,
                           gaps.size - missing.size, slice_spacing)
            notes.append(f"The slice spacing changes within the series: {missing.size} gaps of {wide.mean():.2f} mm"
                         f" ({wider}) beside {gaps.size - missing.size} of {slice_spacing:.2f}"
                         " mm (two reconstructions in one series?): each stone is measured at its own slices'"
                         " spacing, and the model's findings are less sure where the spacing is not the usual.")
        elif missing.size:
            word = {"instance": "images", "frame": "frames"}.get(image_kind, "slices")
            shown = "; ".join(between(int(i)) for i in missing[:5]) + ("; ..." if missing.size > 5 else "")
            feet = " (counted from the feet end)" if image_kind == "index" else ""
            logger.warning(
                "%d gap(s) in the slices (the widest %.2f mm where the others are %.2f mm): slices missing "
                "between %s %s%s; a stone across a gap is measured from the slices there are",
                missing.size, gaps.max(), slice_spacing, word, shown, feet)
            notes.append(f"Slices are missing between {word} {shown}{feet} "
                         f"(a gap of up to {gaps.max():.1f} mm where the others are {slice_spacing:.1f} mm): a stone "
                         "there is missed or measured from the slices there are.")
        elif gaps.max() > 1.1 * gaps.min():
            logger.info(
                "uneven slice spacing kept as is: gaps %.2f to %.2f mm", gaps.min(), gaps.max()
            )
    else:
        slice_spacing = frames[0].thickness or 1.0
    if angle > 1.0 and not lone:
        logger.info(
            "oblique slices kept in their own planes: normal %.1f degrees from the head-feet axis "
            "(GantryDetectorTilt %s), %.2f mm between the planes",
            angle, datasets[0].get("GantryDetectorTilt", "not stated"), slice_spacing,
        )

    hu = np.empty((len(frames), rows, columns), dtype=np.float32)
    decoded: dict[int, np.ndarray] = {}
    for k, frame in enumerate(frames):
        pixels = decoded.get(frame.dataset_index)
        if pixels is None:
            ds = datasets[frame.dataset_index]
            try:
                # pixels.pixel_array does not cache the decoded array on the dataset
                pixels = pixel_array(ds)
            except (ValueError, RuntimeError, NotImplementedError, AttributeError, TypeError) as exc:
                path = paths[frame.dataset_index]
                raise VolumeError(
                    f"the pixel data of instance {numbers[frame.dataset_index]} cannot be decoded"
                    + (f" ({Path(path).name})" if path else "") + f": {exc}"
                ) from exc
            if _frame_count(ds, names[frame.dataset_index]) == 1:
                pixels = pixels[None]
            if pixels.shape[1:] != (rows, columns):
                raise VolumeError(
                    f"the pixel data of {names[frame.dataset_index]} has shape "
                    f"{pixels.shape[1:]}, not {(rows, columns)}"
                )
            if pixels.shape[0] > 1:  # keep a multi-frame instance's frames for its other slices
                decoded[frame.dataset_index] = pixels
        raw = pixels[frame.frame_number - 1]
        with np.errstate(over="ignore", invalid="ignore"):
            hu[k] = raw * np.float32(frame.slope) + np.float32(frame.intercept)
        padding = _padding_range(datasets[frame.dataset_index], raw.dtype)
        if padding is not None:
            hu[k][(raw >= padding[0]) & (raw <= padding[1])] = PADDING_HU
        impossible = ~((hu[k] >= -IMPOSSIBLE_HU - 1) & (hu[k] <= IMPOSSIBLE_HU))  # beyond 16 bits, or NaN
        if impossible.mean() > IMPOSSIBLE_SHARE:
            # probe 40: a RescaleSlope of 1e308 read every pixel as padding, and a clean "no stone" report went out
            raise VolumeError(
                f"{impossible.mean():.0%} of the pixels of {names[frame.dataset_index]} are beyond any CT value once"
                f" rescaled (RescaleSlope {frame.slope:g}, RescaleIntercept {frame.intercept:g}): its rescale is"
                " not the image's")
        hu[k][impossible] = PADDING_HU
    read = [datasets[i] for i in sorted({f.dataset_index for f in frames})]
    contrast = header_contrast(read)
    said_of_energy = energy_note(frames, contrast)
    if any(f.energy is not None and f.energy.hounsfield and not f.energy.monoenergetic for f in frames):
        contrast = None  # a material-removed image's iodine was taken out: its caution says what is left
    said_of_energy = [*intended_use_notes(read), *contrast_note(contrast), *said_of_energy]
    return Volume(
        hu=hu,
        positions=positions,
        row_direction=_point(row_dir, "the row direction"),
        column_direction=_point(col_dir, "the column direction"),
        pixel_spacing=(float(spacing[0]), float(spacing[1])),
        slice_spacing=slice_spacing,
        frame_of_reference_uid=for_uid,
        study_instance_uid=study_uid,
        series_instance_uid=series_uid,
        sop_class_uid=sop_class,
        sop_instance_uids=tuple(f.sop_instance_uid for f in frames),
        frame_numbers=tuple(f.frame_number for f in frames),
        source_paths=tuple(paths[f.dataset_index] for f in frames),
        instance_numbers=tuple(f.instance_number for f in frames),
        notes=(*notes, *said_of_energy,
               *(["The images were lossy-compressed (JPEG or JPEG 2000 with loss, or LossyImageCompression "
                  "01): faint and small stones may be lost, and HU, by which a stone's make-up is judged, are "
                  "altered."]
                 if any(lossy(datasets[i]) for i in {f.dataset_index for f in frames}) else [])),
    )


def find_dicom_files(paths: Iterable[str | Path]) -> list[Path]:
    """Files named directly, and every file under the folders named (recursively), sorted."""
    found: list[Path] = []
    for item in paths:
        path = Path(item)
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*") if p.is_file()))
        elif path.is_file():
            found.append(path)
        else:
            raise VolumeError(f"{path} does not exist")
    return found


def group_series(paths: Iterable[str | Path]) -> dict[str, list[Path]]:
    """DICOM files grouped by Series Instance UID; files that are not DICOM are skipped."""
    series: dict[str, list[Path]] = defaultdict(list)
    for path in find_dicom_files(paths):
        try:
            ds = read_dicom(path, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
        except (InvalidDicomError, OSError, EOFError):
            logger.debug("skipped %s: not DICOM", path.name)
            continue
        uid = str(ds.get("SeriesInstanceUID", ""))
        if uid:
            series[uid].append(path)
    return dict(series)
