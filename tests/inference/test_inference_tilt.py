"""Gantry tilt: a real tilted CT is predicted with measurements in true millimetres.

The real file is pydicom's ``J2K_pixelrep_mismatch.dcm``: a head CT (Hitachi
Supria) with GantryDetectorTilt -22 and ImageOrientationPatient
(1, 0, 0, 0, 0.9272, -0.3746), so its slice normal is 22 degrees from the
head-feet axis. It is one slice; ``write_tilted_stack`` makes a series of it
the way a tilted gantry does: copies stacked along the table (the head-feet
axis), each a new instance, with an 8 mm, 600 HU spherical stone drawn in the
true geometry (partial volume along the normal and in-plane, a 0.4 mm
point-spread blur). In such a stack the table step is not the distance
between the slice planes (1.5 mm of table, 1.39 mm between the planes at 22
degrees), and consecutive slices shift 0.56 mm in-plane, so a volume from the
table step is 8 % too large and a centroid from an upright stack is mm off.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from scipy import ndimage

from inference.errors import VolumeError
from inference.pipeline import Pipeline
from inference.postprocess import Stone, measure_stones
from inference.volume import AXIAL_TOLERANCE_DEG, load_volume
from inference.writers import save_results, write_results
from tests.factory import pydicom_test_file, uid

REAL_TILTED_CT = "J2K_pixelrep_mismatch.dcm"
HEAD_FEET = np.array([0.0, 0.0, 1.0])
TABLE_STEP_MM = 1.5
SLICES = 24
STONE_DIAMETER_MM = 8.0
STONE_HU = 600.0
STONE_AT = (200.3, 330.6, 0.4)
"""Stone centre: row and column on the middle slice (the temporal lobe, away from bone),
and mm along the normal off that slice's plane."""
PSF_SIGMA_MM = 0.4
SUPERSAMPLE = 4


@dataclass(frozen=True)
class TiltedStack:
    """A series written from the real file, with its stone's truth."""

    paths: list[Path]
    centre_mm: np.ndarray
    """LPS centre of the stone."""
    truth: np.ndarray
    """bool (slices, rows, columns): voxels at least half inside the stone."""
    plane_gap_mm: float
    normal: np.ndarray


def _orientation(tilt_deg: float | None, source: pydicom.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Row and column directions: the file's own (None), or tilted about left-right by tilt_deg."""
    if tilt_deg is None:
        values = np.array([float(v) for v in source.ImageOrientationPatient])
        return values[:3] / np.linalg.norm(values[:3]), values[3:] / np.linalg.norm(values[3:])
    t = math.radians(tilt_deg)
    return np.array([1.0, 0.0, 0.0]), np.array([0.0, math.cos(t), -math.sin(t)])


def write_tilted_stack(folder: Path, *, tilt_deg: float | None = None, step: np.ndarray | None = None,
                       stone: bool = True) -> TiltedStack:
    """``SLICES`` copies of the real tilted slice, ``TABLE_STEP_MM`` apart along ``step``
    (the table, head-feet, by default), new series and instance UIDs, with the stone."""
    source = pydicom.dcmread(pydicom_test_file(REAL_TILTED_CT))
    base = source.pixel_array.astype(np.float32) * float(source.RescaleSlope) + float(source.RescaleIntercept)
    row, col = _orientation(tilt_deg, source)
    normal = np.cross(row, col)
    spacing = [float(v) for v in source.PixelSpacing]
    direction = HEAD_FEET if step is None else step / np.linalg.norm(step)
    first = np.array([float(v) for v in source.ImagePositionPatient])
    positions = [first + k * TABLE_STEP_MM * direction for k in range(SLICES)]
    gap = TABLE_STEP_MM * abs(float(direction @ normal))
    r0, c0, n0 = STONE_AT
    centre = positions[SLICES // 2] + c0 * spacing[1] * row + r0 * spacing[0] * col + n0 * normal
    # partial volume: supersampled over each voxel, in-plane and along the normal
    half = int(STONE_DIAMETER_MM / min(spacing)) + 4
    rows = np.arange(int(r0) - half, int(r0) + half)
    cols = np.arange(int(c0) - half, int(c0) + half)
    sub = (np.arange(SUPERSAMPLE) + 0.5) / SUPERSAMPLE - 0.5
    series_uid = uid(REAL_TILTED_CT, tilt_deg, tuple(direction), stone, "series")
    truth = np.zeros((SLICES, *base.shape), dtype=bool)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, position in enumerate(positions):
        image = base.copy()
        if stone:
            inside = np.zeros((rows.size, cols.size))
            for a in sub:
                for b in sub:
                    for c in sub:
                        points = (position + c * gap * normal
                                  + ((cols[None, :] + b) * spacing[1])[..., None] * row
                                  + ((rows[:, None] + a) * spacing[0])[..., None] * col)
                        inside += np.linalg.norm(points - centre, axis=-1) <= STONE_DIAMETER_MM / 2
            cover = inside / SUPERSAMPLE**3
            truth[k, rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1] = cover >= 0.5
            blurred = ndimage.gaussian_filter(cover, PSF_SIGMA_MM / spacing[0])
            window = image[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
            window[...] = window * (1 - blurred) + STONE_HU * blurred
        ds = copy.deepcopy(source)
        ds.set_pixel_data(np.round(image).astype(np.int16), "MONOCHROME2", 16, generate_instance_uid=False)
        ds.RescaleSlope, ds.RescaleIntercept = 1, 0
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid(series_uid, k)
        ds.InstanceNumber = k + 1
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*row, *col)]
        ds.ImagePositionPatient = [f"{v:.4f}" for v in position]
        ds.SliceLocation = f"{position @ normal:.4f}"
        ds.SliceThickness = f"{gap:.4f}"
        ds.GantryDetectorTilt = f"{-math.degrees(math.acos(abs(normal[2]))):.1f}"
        path = folder / f"CT{k + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return TiltedStack(paths, centre, truth, gap, normal)


@pytest.fixture(scope="module")
def pipeline() -> Pipeline:
    """The default's network and rules at the file's own pixels (cascade-3.7.1). The real tilted file is a
    head CT at 0.43 mm; the default (3.8.0) reads it on a copy at 0.75 mm, where its network, which learned
    abdomens, scores the temporal-lobe sphere 0.03 (0.99 at 0.43 mm): the head's whole skull in the wide
    views (``test_the_default_reads_a_head_ct_at_its_true_size`` below). The tilt's geometry is what these
    tests measure, and it is the same with and without the copy (the stones are measured on the series)."""
    return Pipeline("cascade-3.7.1", cores=2)


def test_the_default_reads_a_head_ct_at_its_true_size(real_tilt: TiltedStack) -> None:
    """3.8.0 resamples the 0.43 mm head CT to 0.75 mm and then finds no stone in it: recorded, not wished
    away (docs/model.md: a head is outside what the model is for, and at its true size it looks like none
    of the abdomens the network learned)."""
    default = Pipeline("default", cores=2)
    volume = load_volume(real_tilt.paths)
    assert default.resample_to_mm and abs(volume.pixel_spacing[0] - default.resample_to_mm) > 0.3
    findings = default.run(volume)
    assert "resample_s" in default.last_timings
    assert findings.mask.shape == volume.shape and not findings.stones


@pytest.fixture(scope="module")
def real_tilt(tmp_path_factory: pytest.TempPathFactory) -> TiltedStack:
    return write_tilted_stack(tmp_path_factory.mktemp("tilt22"))


def _stone_near(stones: tuple[Stone, ...], centre: np.ndarray) -> Stone:
    assert stones, "no stone was found"
    nearest = min(stones, key=lambda s: float(np.linalg.norm(np.subtract(s.centroid_mm, centre))))
    return nearest


def _sphere_volume() -> float:
    return math.pi * STONE_DIAMETER_MM**3 / 6


def test_the_real_tilted_file_loads_at_22_degrees_and_is_predicted(pipeline: Pipeline) -> None:
    path = pydicom_test_file(REAL_TILTED_CT)
    ds = pydicom.dcmread(path)
    assert float(ds.GantryDetectorTilt) == -22.0
    volume = load_volume([path])
    assert volume.tilt_deg == pytest.approx(22.0, abs=0.05)
    assert volume.shape == (1, 512, 512)
    assert volume.slice_spacing == pytest.approx(float(ds.SliceThickness))
    np.testing.assert_array_equal(volume.hu[0], ds.pixel_array.astype(np.float32))
    findings = pipeline.run(volume)
    assert findings.mask.shape == volume.shape


def test_the_tilted_stack_keeps_its_true_geometry(real_tilt: TiltedStack) -> None:
    volume = load_volume(real_tilt.paths)
    assert volume.tilt_deg == pytest.approx(22.0, abs=0.05)
    # the positions step along the table; the planes are the cosine of that apart
    np.testing.assert_allclose(np.diff(volume.positions, axis=0), [[0.0, 0.0, TABLE_STEP_MM]] * (SLICES - 1),
                               atol=1e-3)
    assert volume.slice_spacing == pytest.approx(TABLE_STEP_MM * math.cos(math.radians(22.0)), abs=2e-3)
    np.testing.assert_allclose(volume.slice_extent_mm, real_tilt.plane_gap_mm, atol=2e-3)
    # each voxel sits where its slice's own ImagePositionPatient puts it, not on an upright stack
    voxel = np.array([17, 40, 60])
    expected = (volume.positions[17] + 60 * volume.pixel_spacing[1] * np.asarray(volume.row_direction)
                + 40 * volume.pixel_spacing[0] * np.asarray(volume.column_direction))
    np.testing.assert_allclose(volume.index_to_patient(voxel), expected, atol=1e-6)


def test_a_tilted_stone_is_measured_in_true_millimetres(real_tilt: TiltedStack) -> None:
    volume = load_volume(real_tilt.paths)
    findings = measure_stones(volume, real_tilt.truth)
    [stone] = findings.stones
    voxel_mm3 = volume.pixel_spacing[0] * volume.pixel_spacing[1] * real_tilt.plane_gap_mm
    assert stone.volume_mm3 == pytest.approx(stone.voxel_count * voxel_mm3, rel=1e-4)
    # the table step would give 8 % more; the voxelised sphere is within 3 % of the true one
    assert stone.volume_mm3 == pytest.approx(_sphere_volume(), rel=0.03)
    assert stone.volume_mm3 * TABLE_STEP_MM / real_tilt.plane_gap_mm > _sphere_volume() * 1.05
    np.testing.assert_allclose(stone.centroid_mm, real_tilt.centre_mm, atol=0.25)
    assert stone.max_diameter_mm == pytest.approx(STONE_DIAMETER_MM, abs=max(volume.pixel_spacing))


@pytest.mark.parametrize("tilt_deg", [0.0, None, AXIAL_TOLERANCE_DEG], ids=["axial", "real-22", "limit-30"])
def test_the_default_model_finds_a_tilted_stone_in_true_millimetres(
        pipeline: Pipeline, real_tilt: TiltedStack, tilt_deg: float | None, tmp_path: Path) -> None:
    stack = real_tilt if tilt_deg is None else write_tilted_stack(tmp_path, tilt_deg=tilt_deg)
    volume = load_volume(stack.paths)
    findings = pipeline.run(volume)
    stone = _stone_near(findings.stones, stack.centre_mm)
    voxel_mm3 = volume.pixel_spacing[0] * volume.pixel_spacing[1] * stack.plane_gap_mm
    assert stone.volume_mm3 == pytest.approx(stone.voxel_count * voxel_mm3, rel=1e-4)
    assert stone.volume_mm3 == pytest.approx(_sphere_volume(), rel=0.07)
    np.testing.assert_allclose(stone.centroid_mm, stack.centre_mm, atol=1.0)
    assert stone.max_diameter_mm == pytest.approx(STONE_DIAMETER_MM, abs=1.0)
    assert stone.side == "left"  # LPS +x, where the stone was drawn


def test_a_tilted_series_writes_its_seg_overlays_and_report(
        pipeline: Pipeline, real_tilt: TiltedStack, tmp_path: Path) -> None:
    volume = load_volume(real_tilt.paths)
    findings = pipeline.run(volume)
    assert findings.stones
    results = write_results(volume, findings)
    paths = save_results(results, tmp_path)
    assert results.seg is not None and len(results.secondary_captures) == len(findings.slices_with_stones)
    seg = hd.seg.segread(next(p for p in paths if p.name.startswith("SEG_")))
    sources = [pydicom.dcmread(p, stop_before_pixels=True) for p in real_tilt.paths]
    shared = seg.SharedFunctionalGroupsSequence[0]
    orientation = shared.PlaneOrientationSequence[0].ImageOrientationPatient
    # the frames are not one upright stack: a spacing, where stated, is the planes' own
    if "SpacingBetweenSlices" in shared.PixelMeasuresSequence[0]:
        assert float(shared.PixelMeasuresSequence[0].SpacingBetweenSlices) == pytest.approx(
            real_tilt.plane_gap_mm, abs=1e-3)
    np.testing.assert_allclose([float(v) for v in orientation],
                               [float(v) for v in sources[0].ImageOrientationPatient], atol=1e-6)
    # every frame at the position of the slice it references, whatever order highdicom chose
    by_uid = {str(ds.SOPInstanceUID): ds for ds in sources}
    referenced = set()
    for frame in seg.PerFrameFunctionalGroupsSequence:
        source = by_uid[frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID]
        referenced.add(str(source.SOPInstanceUID))
        np.testing.assert_allclose([float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient],
                                   [float(v) for v in source.ImagePositionPatient], atol=1e-4)
    assert referenced == {volume.sop_instance_uids[k] for stone in findings.stones for k in stone.slice_indices}
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=list(volume.sop_instance_uids), combine_segments=True,
        assert_missing_frames_are_empty=True)
    np.testing.assert_array_equal(pixels > 0, findings.mask > 0)
    for sc in results.secondary_captures:
        assert [float(v) for v in sc.ImageOrientationPatient] == pytest.approx(
            [float(v) for v in sources[0].ImageOrientationPatient])


@pytest.mark.parametrize(
    ("tilt_deg", "angle"),
    [(45.0, "45 degrees"), (AXIAL_TOLERANCE_DEG + 2.0, "32 degrees"), (90.0, "90 degrees")],
    ids=["tilt-45", "just-beyond-the-limit", "coronal"],
)
def test_tilts_beyond_the_limit_are_not_axial(tmp_path: Path, tilt_deg: float, angle: str) -> None:
    stack = write_tilted_stack(tmp_path, tilt_deg=tilt_deg, stone=False,
                               step=None if tilt_deg < 90 else np.array([0.0, 1.0, 0.0]))
    with pytest.raises(VolumeError, match="the slices are not axial") as info:
        load_volume(stack.paths)
    assert angle in info.value.reason


def test_an_oblique_stack_along_its_normal_is_accepted(tmp_path: Path) -> None:
    """An oblique reformat: tilted planes stacked along their own normal, no in-plane shift."""
    source = pydicom.dcmread(pydicom_test_file(REAL_TILTED_CT), stop_before_pixels=True)
    row, col = _orientation(None, source)
    stack = write_tilted_stack(tmp_path, step=np.cross(row, col), stone=False)
    volume = load_volume(stack.paths)
    assert volume.tilt_deg == pytest.approx(22.0, abs=0.05)
    assert volume.slice_spacing == pytest.approx(TABLE_STEP_MM, abs=1e-3)


def test_a_tilted_stack_that_steps_off_the_table_is_refused(tmp_path: Path) -> None:
    """Tilted planes whose origins move front to back: neither the normal nor the table."""
    stack = write_tilted_stack(tmp_path, step=np.array([0.0, 0.6, 1.0]), stone=False)
    with pytest.raises(VolumeError, match="tilted gantry"):
        load_volume(stack.paths)
