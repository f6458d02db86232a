"""Seeded synthetic abdominal CT with urinary stones and the mimics that fool detectors.

``generate_phantom(seed)`` draws an abdomen in patient coordinates (LPS, mm) and
renders it in HU: body outline, subcutaneous and visceral fat, abdominal wall
muscle, liver, spleen, kidneys with renal sinus and pelvis, ureters, bladder,
psoas, aorta, IVC and iliac vessels, lumbar spine and sacrum, ribs, iliac wings,
femoral heads, bowel loops with gas, faeces, fluid and dense content. Then:

- **stones**: 1-20 mm, 200-2000 HU, in the renal pelvis, along a ureter (with a
  dilated ureter above and a soft-tissue rim around it) or lying dependent in the
  bladder; rendered with partial volume (3x supersampling);
- **mimics**: pelvic phleboliths (round, often with a lucent centre), aortic and
  iliac wall calcifications, bone islands, dense pellets and contrast in bowel,
  streak artefacts;
- a point spread blur and correlated noise.

The steps, in the order they draw from the phantom's random generator, are in
``lab.abdomen``. The same seed gives the same phantom. ``write_series`` writes
it as a CT Image Storage series with real geometry; ``real_anatomy_phantom``
inserts stones into the real kidneys of the TotalSegmentator example CT in the
shared data folder (``shared_data_dir``; see ``REAL_CT_ATTRIBUTION``).

Ground truth: a voxel belongs to a stone when at least half of it is covered;
a stone too small for that still owns its most covered voxel.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict, Unpack

import numpy as np
from scipy import ndimage

from inference.volume import CT_IMAGE_STORAGE, Volume
from lab.abdomen import (
    MIMIC_KINDS,
    STONE_SITES,
    Canvas,
    Mimic,
    Stone,
    acquire,
    dilated_ureters,
    draw_anatomy,
    draw_grid,
    insert_mimics,
    insert_stones,
    paint_anatomy,
    plan_stone,
)

__all__ = ["MIMIC_KINDS", "REAL_CT_ATTRIBUTION", "STONE_SITES", "Mimic", "Phantom", "PhantomOptions", "Stone", "generate_phantom",
           "iter_phantoms", "read_nifti", "real_anatomy_phantom", "shared_data_dir", "write_series"]

logger = logging.getLogger(__name__)

REAL_CT_ATTRIBUTION = (
    "Real CT: TotalSegmentator test files (github.com/wasserth/TotalSegmentator, "
    "tests/reference_files/, Apache-2.0 repository; TotalSegmentator data set CC BY 4.0, "
    "Wasserthal et al., Radiology: AI 2023)."
)


def shared_data_dir() -> Path:
    """The project's shared data: ``$URONODE_SHARED_DATA``, else ``../shared/data`` beside the checkout."""
    env = os.environ.get("URONODE_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parent.parent.parent / "shared" / "data"


DEFAULT_REAL_DATA = shared_data_dir()
UID_ROOT = "1.2.826.0.1.3680043.10.1431."
"""Prefix for the generated UIDs (pydicom's registered root plus a project branch)."""
PLANES = {"coronal": 1, "sagittal": 2}
"""The axis of a phantom's (slices, rows, columns) arrays that a plane of that name is cut across."""
PLANE_CLEAR = 3
"""A stone-free plane has no stone within this many planes (``clear_plane``)."""

@dataclass(frozen=True, eq=False)
class Phantom:
    """A rendered synthetic (or stone-augmented real) CT with its ground truth."""

    hu: np.ndarray
    """float32 (slices, rows, columns), whole HU."""
    stone_labels: np.ndarray
    """int16, 0 = no stone, i + 1 = ``stones[i]``."""
    mimic_labels: np.ndarray
    """int16, 0 = none, i + 1 = ``mimics[i]`` (streaks are not labelled)."""
    stones: tuple[Stone, ...]
    mimics: tuple[Mimic, ...]
    origin_mm: tuple[float, float, float]
    """LPS position of voxel (0, 0, 0); slices run feet to head, rows anterior to posterior."""
    pixel_spacing: float
    slice_spacing: float
    seed: int
    study_instance_uid: str
    series_instance_uid: str
    frame_of_reference_uid: str
    description: str = "uronode synthetic abdomen"

    def sop_instance_uid(self, k: int) -> str:
        return f"{self.series_instance_uid}.{k + 1}"

    def to_volume(self) -> Volume:
        """The phantom as the ``Volume`` that loading its DICOM series would give."""
        n = self.hu.shape[0]
        positions = np.zeros((n, 3))
        positions[:, 0] = self.origin_mm[0]
        positions[:, 1] = self.origin_mm[1]
        positions[:, 2] = self.origin_mm[2] + np.arange(n) * self.slice_spacing
        return Volume(
            hu=self.hu,
            positions=positions,
            row_direction=(1.0, 0.0, 0.0),
            column_direction=(0.0, 1.0, 0.0),
            pixel_spacing=(self.pixel_spacing, self.pixel_spacing),
            slice_spacing=self.slice_spacing,
            frame_of_reference_uid=self.frame_of_reference_uid,
            study_instance_uid=self.study_instance_uid,
            series_instance_uid=self.series_instance_uid,
            sop_class_uid=CT_IMAGE_STORAGE,
            sop_instance_uids=tuple(self.sop_instance_uid(k) for k in range(n)),
            frame_numbers=(1,) * n,
            source_paths=("",) * n,
        )


def _uid(seed: int, *parts: object) -> str:
    """A deterministic UID under UID_ROOT (at most 64 characters)."""
    digest = int(hashlib.sha256(repr((seed, *parts)).encode()).hexdigest(), 16) % 10**18
    return f"{UID_ROOT}{seed}.{digest}"


class PhantomOptions(TypedDict, total=False):
    """The keyword arguments of ``generate_phantom``, for callers that gather or pass them on."""

    rows: int
    pixel_spacing: float | None
    slice_spacing: float | None
    coverage: tuple[float, float] | None
    slices: int | None
    n_stones: int | None
    n_mimics: int | None
    stone_sites: tuple[str, ...]
    small_stone_fraction: float


def plane_image(phantom: Phantom, plane: str, index: int) -> tuple[np.ndarray, np.ndarray]:
    """The phantom's ``plane`` ('coronal' or 'sagittal') image at row or column ``index``, head up, its
    slices' axis resampled to the pixel spacing: (HU, stone labels)."""
    axis = PLANES[plane]
    factor = phantom.slice_spacing / phantom.pixel_spacing
    hu = np.take(phantom.hu, index, axis=axis)[::-1]
    labels = np.take(phantom.stone_labels, index, axis=axis)[::-1]
    return (np.asarray(ndimage.zoom(hu, (factor, 1), order=1), np.float32),
            np.asarray(ndimage.zoom(labels, (factor, 1), order=0)))


def centre_planes(phantom: Phantom, axis: int) -> dict[int, list[int]]:
    """{index: stones} of the planes across ``axis`` through each stone's centre (its voxels' mean)."""
    labels = phantom.stone_labels
    through: dict[int, list[int]] = {}
    for stone in (int(v) for v in np.unique(labels) if v):
        through.setdefault(int(round(float(np.nonzero(labels == stone)[axis].mean()))), []).append(stone)
    return through


def clear_plane(phantom: Phantom, axis: int, index: int) -> bool:
    """Whether the plane across ``axis`` at ``index`` is a stone-free one worth showing: no stone within
    ``PLANE_CLEAR`` planes, and a body (above -500 HU) across at least a fifth of it."""
    near = [slice(None)] * 3
    near[axis] = slice(max(0, index - PLANE_CLEAR), index + PLANE_CLEAR + 1)
    return (not phantom.stone_labels[tuple(near)].any()
            and bool((np.take(phantom.hu, index, axis=axis) > -500).mean() >= 0.2))


def generate_phantom(
    seed: int,
    *,
    rows: int = 512,
    pixel_spacing: float | None = None,
    slice_spacing: float | None = None,
    coverage: tuple[float, float] | None = None,
    slices: int | None = None,
    n_stones: int | None = None,
    n_mimics: int | None = None,
    stone_sites: tuple[str, ...] = STONE_SITES,
    small_stone_fraction: float = 0.4,
) -> Phantom:
    """A synthetic abdominal CT, the same for the same arguments.

    ``coverage`` is the part of the abdomen covered, as fractions of its height
    (0 = below the bladder, 1 = above the kidneys); ``slices`` overrides the slice
    count that coverage and spacing give. Square images of ``rows`` x ``rows``.
    ``small_stone_fraction`` is the share of stones under 3 mm (training sets raise
    it to show the network more of the hard ones; the default 0.4 leaves the
    generator's output, and so the held-out set, unchanged).
    """
    rng = np.random.default_rng(seed)
    grid = draw_grid(rng, rows, pixel_spacing, slice_spacing, coverage, slices)
    anatomy = draw_anatomy(rng, grid)
    # stones first (a ureter stone dilates the ureter above it), painted last
    count = n_stones if n_stones is not None else int(rng.choice([0, 1, 1, 2, 2, 3, 4]))
    plans = [plan_stone(rng, grid, anatomy, stone_sites, small_stone_fraction) for _ in range(count)]
    hydro = dilated_ureters(rng, plans)
    shape = (grid.z.size, grid.y.size, grid.x.size)
    canvas = Canvas(hu=np.full(shape, -1000.0, dtype=np.float32), x=grid.x, y=grid.y, z=grid.z,
                     stone_labels=np.zeros(shape, dtype=np.int16), mimic_labels=np.zeros(shape, dtype=np.int16))
    paint_anatomy(rng, canvas, grid, anatomy, hydro)
    mimics = insert_mimics(rng, canvas, grid, anatomy, n_mimics if n_mimics is not None else int(rng.integers(3, 10)))
    stones = insert_stones(canvas, plans)
    return Phantom(
        hu=acquire(rng, canvas, grid, anatomy, mimics),
        stone_labels=canvas.stone_labels,
        mimic_labels=canvas.mimic_labels,
        stones=tuple(stones),
        mimics=tuple(mimics),
        origin_mm=(float(grid.x[0]), float(grid.y[0]), float(grid.z[0])),
        pixel_spacing=grid.pixel_spacing,
        slice_spacing=grid.slice_spacing,
        seed=seed,
        study_instance_uid=_uid(seed, "study"),
        series_instance_uid=_uid(seed, "series"),
        frame_of_reference_uid=_uid(seed, "for"),
    )


def iter_phantoms(seeds: range | list[int], **kwargs: Unpack[PhantomOptions]) -> Iterator[Phantom]:
    for seed in seeds:
        yield generate_phantom(seed, **kwargs)


def read_nifti(path: Path) -> np.ndarray:
    """The voxels of a NIfTI file, in its own axes and data type."""
    import nibabel as nib

    image = nib.load(str(path))
    if not isinstance(image, nib.Nifti1Image):  # Nifti2Image is one too
        raise ValueError(f"{path} is not a NIfTI image")
    return np.asarray(image.dataobj)


def real_anatomy_phantom(seed: int, data_dir: Path = DEFAULT_REAL_DATA, *, upsample: int = 4,
                         n_stones: int = 3) -> Phantom:
    """Stones inserted into the real kidneys of the TotalSegmentator example CT.

    The 3 mm example is resampled (linear) to 3/upsample mm in-plane and 1.5 mm
    between slices; fine noise is added back; stones of 1-12 mm go inside the kidney
    labels (2 = right, 3 = left). See ``REAL_CT_ATTRIBUTION``.
    """
    rng = np.random.default_rng(seed)
    ct = read_nifti(data_dir / "example_ct_sm.nii.gz").astype(np.float32)
    seg = read_nifti(data_dir / "example_seg.nii.gz")
    # NIfTI (i: towards patient right, j: anterior, k: superior) -> (slice, row, column) in LPS order
    ct_zyx = ct[::-1, ::-1, :].transpose(2, 1, 0)
    seg_zyx = seg[::-1, ::-1, :].transpose(2, 1, 0)
    nx, ny = ct.shape[0], ct.shape[1]
    origin_nifti = (-177.95632935, 11.31900024, 94.30175781)
    origin = (-(origin_nifti[0] + 3.0 * (nx - 1)), -(origin_nifti[1] + 3.0 * (ny - 1)), origin_nifti[2])
    zoom = (2.0, float(upsample), float(upsample))
    hu = ndimage.zoom(ct_zyx, zoom, order=1).astype(np.float32)
    labels = ndimage.zoom(seg_zyx, zoom, order=0)
    ps = 3.0 / upsample
    ss = 1.5
    # voxel centres shift when zooming: keep the first voxel's centre at the first original centre
    x = origin[0] + np.arange(hu.shape[2]) * ps
    y = origin[1] + np.arange(hu.shape[1]) * ps
    z = origin[2] + np.arange(hu.shape[0]) * ss
    canvas = Canvas(hu=hu, x=x, y=y, z=z, stone_labels=np.zeros(hu.shape, np.int16),
                     mimic_labels=np.zeros(hu.shape, np.int16))
    stones: list[Stone] = []
    for _ in range(n_stones):
        label = int(rng.choice([2, 3]))
        kidney = ndimage.binary_erosion(labels == label, iterations=4)
        candidates = np.argwhere(kidney)
        if candidates.size == 0:
            continue
        u = rng.random()
        d = float(math.exp(rng.uniform(math.log(1.0), math.log(3.0)))) if u < 0.4 else (
            float(rng.uniform(3, 5)) if u < 0.7 else float(rng.uniform(5, 12)))
        hu_s = float(rng.uniform(200, 2000))
        kk, ii, jj = candidates[int(rng.integers(0, len(candidates)))]
        center = (float(x[jj]), float(y[ii]), float(z[kk]))
        if any(np.linalg.norm(np.subtract(center, s.center_mm)) < 15 for s in stones):
            continue
        canvas.blob(center, (d / 2, d / 2, d / 2), hu_s, canvas.stone_labels, len(stones) + 1)
        stones.append(Stone(center_mm=center, diameter_mm=d, hu=hu_s, site="kidney",
                            side="right" if label == 2 else "left"))
    noise = ndimage.gaussian_filter(rng.standard_normal(hu.shape).astype(np.float32), (0, 0.7, 0.7))
    hu = canvas.hu + noise * (6.0 / max(float(noise.std()), 1e-6))
    hu = np.clip(np.round(hu), -1024, 3071).astype(np.float32)
    return Phantom(
        hu=hu, stone_labels=canvas.stone_labels, mimic_labels=canvas.mimic_labels,
        stones=tuple(stones), mimics=(), origin_mm=(float(x[0]), float(y[0]), float(z[0])),
        pixel_spacing=ps, slice_spacing=ss, seed=seed,
        study_instance_uid=_uid(seed, "real-study"), series_instance_uid=_uid(seed, "real-series"),
        frame_of_reference_uid=_uid(seed, "real-for"),
        description="TotalSegmentator example CT with inserted stones",
    )


def write_series(
    phantom: Phantom,
    out_dir: str | Path,
    *,
    patient_name: str = "Synthetic^Phantom",
    patient_id: str = "SYNTH0001",
    series_number: int = 1,
    transfer_syntax_uid: str | None = None,
) -> list[Path]:
    """Write the phantom as a CT Image Storage series (one file per slice) into out_dir.

    Pixels are stored unsigned with RescaleIntercept -1024, as most scanners do.
    ``transfer_syntax_uid`` defaults to Explicit VR Little Endian; RLE Lossless
    compresses (through pydicom's encoder).
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, RLELossless

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ts = transfer_syntax_uid or ExplicitVRLittleEndian
    now = datetime.datetime(2026, 1, 1, 12, 0, 0)
    paths = []
    n, rows, cols = phantom.hu.shape
    for k in range(n):
        ds = Dataset()
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SOPClassUID = CT_IMAGE_STORAGE
        ds.SOPInstanceUID = phantom.sop_instance_uid(k)
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = now.strftime("%Y%m%d")
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = now.strftime("%H%M%S")
        ds.AccessionNumber = ""
        ds.Modality = "CT"
        ds.Manufacturer = "uronode synth"
        ds.ReferringPhysicianName = ""
        ds.StudyDescription = "Synthetic abdomen CT"
        ds.SeriesDescription = phantom.description
        ds.PatientName = patient_name
        ds.PatientID = patient_id
        ds.PatientBirthDate = ""
        ds.PatientSex = "O"
        ds.BodyPartExamined = "ABDOMEN"
        ds.SliceThickness = f"{phantom.slice_spacing:.3f}"
        ds.KVP = "120"
        ds.PatientPosition = "HFS"
        ds.StudyInstanceUID = phantom.study_instance_uid
        ds.SeriesInstanceUID = phantom.series_instance_uid
        ds.StudyID = "1"
        ds.SeriesNumber = series_number
        ds.AcquisitionNumber = 1
        ds.InstanceNumber = k + 1
        z = phantom.origin_mm[2] + k * phantom.slice_spacing
        ds.ImagePositionPatient = [f"{phantom.origin_mm[0]:.4f}", f"{phantom.origin_mm[1]:.4f}", f"{z:.4f}"]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.FrameOfReferenceUID = phantom.frame_of_reference_uid
        ds.PositionReferenceIndicator = ""
        ds.SliceLocation = f"{z:.4f}"
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = rows, cols
        ds.PixelSpacing = [f"{phantom.pixel_spacing:.6f}", f"{phantom.pixel_spacing:.6f}"]
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.WindowCenter = "40"
        ds.WindowWidth = "400"
        ds.RescaleIntercept = "-1024"
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
        stored = np.clip(phantom.hu[k] + 1024, 0, 65535).astype(np.uint16)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta = meta
        ds.PixelData = stored.tobytes()
        if ts == RLELossless:
            ds.compress(RLELossless, stored)
        elif ts != ExplicitVRLittleEndian:
            ds.compress(ts, stored)
        path = out / f"CT{k + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    logger.info("wrote %d synthetic CT slices to %s", n, out)
    return paths
