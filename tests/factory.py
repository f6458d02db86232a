"""Synthetic DICOM with known geometry, for the tests and the benchmarks (no patient data)."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import TypedDict, Unpack

import numpy as np
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian, SecondaryCaptureImageStorage
from pydicom.valuerep import DS

from inference.volume import Volume


def uid(*parts: object) -> UID:
    """A deterministic 2.25 UID from the parts."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return UID("2.25." + str(int.from_bytes(digest[:16], "big")))


def pydicom_test_file(name: str) -> Path:
    """One of pydicom's test files (pydicom-data, part of the test set-up), by name."""
    path = get_testdata_file(name)
    if not isinstance(path, str):
        raise FileNotFoundError(f"pydicom's test file {name} is missing")
    return Path(path)


@functools.lru_cache(maxsize=64)
def _pixels(size: int, seed: int, variant: int) -> np.ndarray:
    """Soft-tissue noise in raw units (HU + 1024); 16 variants per size and seed, cached."""
    rng = np.random.default_rng(seed * 100_003 + variant)
    return (rng.normal(40, 20, (size, size)) + 1024).clip(0, 4095).astype(np.uint16)


class SliceOptions(TypedDict, total=False):
    """The keyword arguments of ``ct_slice``, for helpers that pass them on."""

    size: int
    spacing: float
    thickness: float
    modality: str
    image_type: Sequence[str]
    manufacturer: str
    sop_class: str
    seed: int
    series_description: str
    contrast_agent: str | None
    convolution_kernel: str | None
    orientation: Sequence[float]
    position: bool
    body_part: str | None
    birth_date: str
    study_description: str | None
    protocol_name: str | None


def ct_slice(
    study: str,
    series: str,
    index: int,
    *,
    size: int = 64,
    spacing: float = 0.7,
    thickness: float = 2.5,
    modality: str = "CT",
    image_type: Sequence[str] = ("ORIGINAL", "PRIMARY", "AXIAL"),
    manufacturer: str = "TESTSCANNER",
    sop_class: str = CTImageStorage,
    seed: int = 0,
    series_description: str = "Abdomen non-contrast",
    contrast_agent: str | None = None,
    convolution_kernel: str | None = None,
    orientation: Sequence[float] = (1, 0, 0, 0, 1, 0),
    position: bool = True,
    body_part: str | None = None,
    birth_date: str = "19700101",
    study_description: str | None = None,
    protocol_name: str | None = None,
) -> Dataset:
    """One axial CT slice at z = -index * thickness, pixel values in raw units (HU + 1024)."""
    pixels = _pixels(size, seed, index % 16)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UID(sop_class)
    ds.file_meta.MediaStorageSOPInstanceUID = uid(series, index)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = uid(series, index)
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.FrameOfReferenceUID = uid(study, "for")
    ds.PatientName = "Synthetic^Patient"
    ds.PatientID = "SYN0001"
    ds.PatientBirthDate = birth_date
    ds.PatientSex = "O"
    ds.StudyDate = "20260101"
    ds.StudyTime = "120000"
    ds.AccessionNumber = "ACC0001"
    ds.StudyID = "1"
    ds.ReferringPhysicianName = ""
    ds.Modality = modality
    ds.Manufacturer = manufacturer
    ds.SeriesDescription = series_description
    if contrast_agent is not None:
        ds.ContrastBolusAgent = contrast_agent
    if body_part is not None:
        ds.BodyPartExamined = body_part
    if study_description is not None:
        ds.StudyDescription = study_description
    if protocol_name is not None:
        ds.ProtocolName = protocol_name
    ds.SeriesNumber = 2
    ds.InstanceNumber = index + 1
    ds.ImageType = list(image_type)
    if position:
        ds.ImagePositionPatient = [-size * spacing / 2, -size * spacing / 2, -index * thickness]
    ds.ImageOrientationPatient = list(orientation)
    if convolution_kernel is not None:
        ds.ConvolutionKernel = convolution_kernel
    ds.PixelSpacing = [spacing, spacing]
    ds.SliceThickness = thickness
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = size
    ds.Columns = size
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    ds.PixelData = pixels.tobytes()
    return ds


def write_series(
    folder: Path, count: int, *, study: str | None = None, series: str | None = None, **kwargs: Unpack[SliceOptions]
) -> tuple[str, str, list[Path]]:
    """Write ``count`` slices as files ``folder/NNNN.dcm``; return (study UID, series UID, paths)."""
    folder.mkdir(parents=True, exist_ok=True)
    study = study or uid("study", folder)
    series = series or uid("series", folder)
    paths = []
    for i in range(count):
        ds = ct_slice(study, series, i, **kwargs)
        path = folder / f"{i:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return study, series, paths


def image_slice(
    path: Path, grey: np.ndarray, spacing: float, window: tuple[float, float],
    orientation: Sequence[float] = (1, 0, 0, 0, 0, -1),
) -> Dataset:
    """An 8-bit image as one derived CT slice (coronal by default), as a viewer exports a reformat: its
    rescale is ``window`` (level, width), so its HU are the grey read back through that window."""
    level, width = window
    ds = ct_slice(uid("study", path), uid("series", path), 0, spacing=spacing)
    ds.Rows, ds.Columns = grey.shape
    ds.ImageOrientationPatient = list(orientation)
    ds.ImagePositionPatient = [-150.0, 20.0, 100.0]
    ds.ImageType = ["DERIVED", "SECONDARY", "REFORMATTED"]
    ds.RescaleSlope = DS(width / 255.0, auto_format=True)
    ds.RescaleIntercept = level - width / 2
    ds.PixelData = grey.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return ds


def hu_volume(hu: np.ndarray, pixel_mm: float, step_mm: float, notes: tuple[str, ...] = ()) -> Volume:
    """``hu`` (slices, rows, columns) as an axial ``Volume`` in memory: slice k at z = k * ``step_mm`` (negative:
    head first), its pixels ``pixel_mm``, no files behind it."""
    count = hu.shape[0]
    return Volume(hu=hu, positions=np.array([[0.0, 0.0, k * step_mm] for k in range(count)]),
                  row_direction=(1.0, 0.0, 0.0), column_direction=(0.0, 1.0, 0.0),
                  pixel_spacing=(pixel_mm, pixel_mm), slice_spacing=abs(step_mm), frame_of_reference_uid="1.2.3",
                  study_instance_uid="1.2.3.1", series_instance_uid="1.2.3.2", sop_class_uid=CTImageStorage,
                  sop_instance_uids=tuple(f"1.2.3.4.{k}" for k in range(count)), frame_numbers=(1,) * count,
                  source_paths=("",) * count, notes=notes)


__all__ = ["CTImageStorage", "SecondaryCaptureImageStorage", "ct_slice", "hu_volume", "image_slice", "uid",
           "write_series"]
