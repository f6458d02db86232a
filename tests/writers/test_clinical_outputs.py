"""What the SEG and the SR tell a reader, checked on real highdicom/pydicom objects (and dciodvfy, dsrdump).

Each test here failed before its fix:

- a negative SR says "Calculus: Not detected" (not "Absent") with its scope, that it does not exclude stones and
  that it is not for primary diagnosis; every SR says the latter, where a text rendering shows it;
- a stone's size is its length (largest extent in any direction, true geometry: a tilted gantry's too), the
  axial diameter qualified as such, in the planar group's words, whose region is on the slice it was measured on;
- a stone near the midline (it may lie in the bladder) gets no laterality;
- one SEG segment per stone, referenced by its own group, frames only where a segment has pixels;
- a lone slice's SEG states no spacing between slices it does not know;
- the SR's image region is the stone's own box, not the overlay's margin box;
- SEG and SR carry SeriesDate/SeriesTime.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from inference.postprocess import SIDE_TOLERANCE_MM, Findings, measure_stones, shown
from inference.volume import Volume, load_volume
from inference.writers import Results, save_results, write_results
from lab.synth import generate_phantom, write_series
from tests.writers.conftest import MODEL_NAME, MODEL_VERSION, Case, dciodvfy, report_of

PIXEL_MM = 0.75
SLICE_MM = 1.25


@pytest.fixture(scope="module")
def fine(tmp_path_factory: pytest.TempPathFactory) -> Volume:
    """A 256 x 256 series, 0.75 mm pixels, 1.25 mm apart, 24 slices, no stones of its own."""
    phantom = generate_phantom(5, rows=256, pixel_spacing=PIXEL_MM, slice_spacing=SLICE_MM, slices=24,
                               coverage=(0.1, 0.2), n_stones=0, n_mimics=0)
    return load_volume(write_series(phantom, tmp_path_factory.mktemp("fine")))


def _midline_column(volume: Volume, k: int) -> float:
    """The body's left-right centre on slice k, as a (fractional) column."""
    body = volume.hu[k] > -500
    return float(np.nonzero(body)[1].mean())


def _ellipsoid(volume: Volume, centre: tuple[float, float, float], semi_mm: tuple[float, float, float]) -> np.ndarray:
    """Voxels whose centres lie in an ellipsoid (slice, row, column centre; semi-axes along column, row, slice)."""
    k, r, c = np.mgrid[0:volume.shape[0], 0:volume.shape[1], 0:volume.shape[2]]
    ps_r, ps_c = volume.pixel_spacing
    inside = (((c - centre[2]) * ps_c / semi_mm[0]) ** 2 + ((r - centre[1]) * ps_r / semi_mm[1]) ** 2
              + ((k - centre[0]) * volume.slice_spacing / semi_mm[2]) ** 2) <= 1.0
    return inside.astype(np.uint8)


def _write(volume: Volume, mask: np.ndarray, folder: Path) -> tuple[Findings, Results, list[Path]]:
    hu = volume.hu.copy()
    hu[mask > 0] = 900.0
    volume = dataclasses.replace(volume, hu=hu)
    findings = measure_stones(volume, mask, model_name=MODEL_NAME, model_version=MODEL_VERSION)
    results = write_results(volume, findings)
    return findings, results, save_results(results, folder)


def _no_dciodvfy_errors(paths: list[Path]) -> None:
    for path in paths:
        errors, _ = dciodvfy(path)
        assert not errors, (path.name, errors)


def _sr_text(path: Path) -> str:
    """The SR as a PACS renders it as text (DCMTK's dsrdump)."""
    tool = shutil.which("dsrdump")
    if tool is None:
        pytest.fail("dsrdump (Debian package dcmtk) is not installed")
    done = subprocess.run([tool, "+Pl", str(path)], capture_output=True, text=True, timeout=60, check=True)
    assert "Error" not in done.stderr and "Warning" not in done.stderr, done.stderr  # DCMTK reads it as valid
    return " ".join(done.stdout.split())


def _volumetric_diameter(group: hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations) -> float:
    (diameter,) = [m for m in group.get_measurements() if m.name.value == "81827009"]
    return float(diameter.value)


# F2 -------------------------------------------------------------------------------------------------------------


def test_a_negative_sr_says_not_detected_with_its_scope_and_no_absent(no_stones: Case) -> None:
    sr = next(p for p in no_stones.paths if p.name.startswith("SR_"))
    text = _sr_text(sr)
    assert "272519000" not in text and "Absent" not in text
    assert "Not detected" in text
    n = no_stones.volume.shape[0]
    assert f"No urinary stone detected by the AI model ({MODEL_NAME} {MODEL_VERSION}) in {n} images" in text
    assert "this does not exclude urinary stones" in text
    assert "not for primary diagnosis" in text
    report = report_of(hd.sr.srread(sr))
    assert report.get_image_measurement_groups() == []  # no group, no "Finding: Calculus" for the urinary system
    assert "Finding Site" not in str(pydicom.dcmread(sr))
    _no_dciodvfy_errors([sr])


def test_every_sr_says_it_is_not_for_primary_diagnosis(stones: Case) -> None:
    sr = next(p for p in stones.paths if p.name.startswith("SR_"))
    text = _sr_text(sr)
    assert "Qualitative Evaluations" in text
    assert "3 urinary stones detected by the AI model" in text and "not for primary diagnosis" in text
    ds = pydicom.dcmread(sr)
    (container,) = [i for i in ds.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "C0034375"]
    assert ds.ContentSequence[-1] is container  # after the Imaging Measurements, as TID 1500 orders them
    verdict, comment = container.ContentSequence  # "Calculus: Present" (probe 42), then the comment
    assert verdict.ValueType == "CODE" and verdict.ConceptCodeSequence[0].CodeMeaning == "Present"
    assert comment.ValueType == "TEXT" and comment.RelationshipType == "CONTAINS"
    assert len(report_of(hd.sr.srread(sr)).get_volumetric_roi_measurement_groups()) == 3  # still read as TID 1500


def test_a_lone_image_sr_claims_no_more_than_its_image(tmp_path: Path) -> None:
    phantom = generate_phantom(7, rows=64, slice_spacing=2.5, slices=1, coverage=(0.7, 0.8), n_stones=0, n_mimics=0)
    volume = load_volume(write_series(phantom, tmp_path / "ct"))
    findings = measure_stones(volume, np.zeros(volume.shape, np.uint8), model_name=MODEL_NAME,
                              model_version=MODEL_VERSION)
    summary, sr = save_results(write_results(volume, findings), tmp_path / "out")
    text = _sr_text(sr)
    assert "in the one image of this series" in text and "does not exclude" in text
    assert "Urinary system" not in text
    assert summary.name.startswith("OT_")  # the no-stone summary image: the lone image itself
    _no_dciodvfy_errors([sr])


# F3 -------------------------------------------------------------------------------------------------------------


def test_an_elongated_stone_is_reported_by_its_length(fine: Volume, tmp_path: Path) -> None:
    """4 mm across in the axial plane, 12 mm head to feet: 'Diameter, Maximum' is about 12 mm, not 4.4."""
    k0, r0 = 12, 128
    c0 = _midline_column(fine, k0) + 50.0 / PIXEL_MM  # 50 mm to the patient's left: a ureter's place
    mask = _ellipsoid(fine, (k0, r0, c0), (2.0, 2.0, 6.0))
    findings, results, paths = _write(fine, mask, tmp_path)
    (stone,) = findings.stones
    assert stone.max_diameter_mm == pytest.approx(4.4, abs=0.5)  # the axial diameter, as before
    # centres 10 mm apart plus half a slice: the end slices' centres lie inside its pointed ends
    assert stone.length_mm == pytest.approx(12.0, abs=1.5)
    assert stone.to_json()["length_mm"] == pytest.approx(stone.length_mm, abs=0.01)
    report = report_of(hd.sr.Comprehensive3DSR.from_dataset(results.sr))
    (volumetric,) = report.get_volumetric_roi_measurement_groups()
    (planar,) = report.get_planar_roi_measurement_groups()
    assert _volumetric_diameter(volumetric) == pytest.approx(stone.length_mm, abs=0.05)  # to 0.1 mm
    assert planar.roi is not None
    on = planar.roi.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID
    box = next(b for b in findings.boxes if b.sop_instance_uid == on)
    assert box.diameter_mm == pytest.approx(stone.max_diameter_mm)  # the region is where the axial one was measured
    (comment,) = [i for i in planar[0].ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "121106"]
    assert comment.TextValue.startswith(f"Stone 1, left: {shown(stone.length_mm, 1)} mm, ")
    numbers = sorted(int(pydicom.dcmread(fine.source_paths[k], stop_before_pixels=True).InstanceNumber)
                     for k in stone.slice_indices)
    assert comment.TextValue.endswith(f", axial {shown(stone.max_diameter_mm, 1)} mm, images {numbers[0]}-{numbers[-1]}")
    _no_dciodvfy_errors(paths)


def _tilted_volume(tilt_deg: float, slices: int = 30, rows: int = 64, step_mm: float = 1.0) -> Volume:
    """A stack as a tilted gantry makes it: row direction left-right, column direction leaning towards the
    feet by ``tilt_deg``, slices stepping along the table (head-feet), not along their normal."""
    t = math.radians(tilt_deg)
    positions = np.array([[-20.0, -20.0, 100.0 + step_mm * k] for k in range(slices)])
    hu = np.full((slices, rows, rows), 40.0, dtype=np.float32)
    return Volume(
        hu=hu, positions=positions, row_direction=(1.0, 0.0, 0.0),
        column_direction=(0.0, math.cos(t), -math.sin(t)), pixel_spacing=(0.6, 0.6),
        slice_spacing=step_mm * math.cos(t), frame_of_reference_uid="1.2.3", study_instance_uid="1.2.4",
        series_instance_uid="1.2.5", sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        sop_instance_uids=tuple(f"1.2.6.{k}" for k in range(slices)), frame_numbers=(1,) * slices,
        source_paths=("",) * slices,
    )


@pytest.mark.parametrize("tilt_deg", [0.0, 25.0])
def test_length_is_measured_in_the_true_geometry_of_a_tilted_gantry(tilt_deg: float) -> None:
    """A rod 16 mm long along the patient's head-feet axis (thin: 1.2 mm) and a 7 mm ball, drawn in patient
    coordinates: their lengths whatever the tilt (a length from indices times spacings would not be: 14.5 mm
    for the rod at 25 degrees). 45 slices: a tilted slice's rows reach 8 mm lower at the rod's place, and 30
    cut its upper end off (which a corner-to-corner voxel width once made up for)."""
    volume = _tilted_volume(tilt_deg, slices=45)
    k, r, c = np.mgrid[0:volume.shape[0], 0:volume.shape[1], 0:volume.shape[2]]
    lps = volume.index_to_patient(np.stack([k, r, c], axis=-1).reshape(-1, 3)).reshape(*volume.shape, 3)
    rod_at, ball_at = np.array([-8.0, -2.0, 115.0]), np.array([10.0, -2.0, 113.0])
    off = lps - rod_at
    rod = (np.abs(off[..., 2]) <= 8.0) & (np.hypot(off[..., 0], off[..., 1]) <= 0.6)
    ball = np.linalg.norm(lps - ball_at, axis=-1) <= 3.5
    findings = measure_stones(volume, (rod | ball).astype(np.uint8))
    by_x = sorted(findings.stones, key=lambda s: s.centroid_mm[0])
    assert by_x[0].length_mm == pytest.approx(16.0, abs=1.2)
    assert by_x[1].length_mm == pytest.approx(7.0, abs=1.2)
    for stone in by_x:
        assert stone.length_mm >= stone.max_diameter_mm


def test_the_length_of_a_huge_component_is_cheap() -> None:
    """A 60 mm ball (hundreds of thousands of voxels): measured on its surface's hull, in well under a second."""
    import time

    volume = _tilted_volume(0.0, slices=100, rows=128, step_mm=0.6)
    k, r, c = np.mgrid[0:100, 0:128, 0:128]
    ball = ((k - 50) ** 2 + (r - 64) ** 2 + (c - 64) ** 2) <= 50**2
    start = time.perf_counter()
    (stone,) = measure_stones(volume, ball.astype(np.uint8)).stones
    assert time.perf_counter() - start < 5.0
    assert stone.voxel_count > 400_000
    assert stone.length_mm == pytest.approx(60.6, abs=1.0)


# F4 -------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("offset_mm", "side"), [(0.0, "midline"), (-12.0, "midline"), (18.0, "midline"),
                                                 (-40.0, "right"), (45.0, "left")])
def test_laterality_only_where_the_stone_lies_clearly_to_one_side(fine: Volume, tmp_path: Path,
                                                                  offset_mm: float, side: str) -> None:
    """A bladder stone lies anywhere in the bladder, 10-20 mm off the midline; read as left or right it would be
    a distal ureteric stone on that side. Within 25 mm of the midline: no laterality, 'near midline'."""
    assert SIDE_TOLERANCE_MM == 25.0
    k0 = 12
    c0 = _midline_column(fine, k0) + offset_mm / PIXEL_MM
    mask = _ellipsoid(fine, (k0, 150, c0), (2.5, 2.5, 2.5))
    findings, results, _ = _write(fine, mask, tmp_path)
    (stone,) = findings.stones
    assert stone.side == side
    report = report_of(hd.sr.Comprehensive3DSR.from_dataset(results.sr))
    for group in (*report.get_volumetric_roi_measurement_groups(), *report.get_planar_roi_measurement_groups()):
        (site,) = group.finding_sites
        assert site.topographical_modifier is None
        if side == "midline":
            assert site.laterality is None
        else:
            assert site.laterality is not None and site.laterality.meaning.lower() == side
    (planar,) = report.get_planar_roi_measurement_groups()
    (comment,) = [i for i in planar[0].ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "121106"]
    words = "near midline" if side == "midline" else side
    assert comment.TextValue.startswith(f"Stone 1, {words}: ")


# F5, F11, F12, F14 --------------------------------------------------------------------------------------------


def test_two_stones_on_one_slice_are_two_segments_each_referenced_by_its_group(fine: Volume, tmp_path: Path) -> None:
    mask = np.zeros(fine.shape, np.uint8)
    mask[10:13, 100:104, 60:64] = 1  # one stone on slices 10-12
    mask[11, 100:103, 80:83] = 1  # another beside it on slice 11
    findings, results, paths = _write(fine, mask, tmp_path)
    assert len(findings.stones) == 2
    seg = hd.seg.segread(next(p for p in paths if p.name.startswith("SEG_")))
    assert seg.get_segment_numbers() == [1, 2]
    assert int(seg.NumberOfFrames) == 3 + 1  # frames only where a segment has pixels
    labels = seg.get_pixels_by_source_instance(list(fine.sop_instance_uids), combine_segments=True,
                                               assert_missing_frames_are_empty=True)
    report = report_of(hd.sr.Comprehensive3DSR.from_dataset(results.sr))
    groups = report.get_volumetric_roi_measurement_groups()
    for i, (group, stone) in enumerate(zip(groups, findings.stones, strict=True)):
        assert int((labels == i + 1).sum()) == stone.voxel_count
        segment = group.referenced_segment
        assert segment is not None and list(segment.referenced_segment_numbers or []) == [i + 1]
        description = seg.get_segment_description(i + 1)
        assert description.segment_label == f"Stone {i + 1}" and description.tracking_uid == group.tracking_uid
    _no_dciodvfy_errors(paths)


def test_a_seg_of_twelve_stones_on_300_slices_stays_small(tmp_path: Path) -> None:
    one = generate_phantom(9, rows=128, slice_spacing=1.0, slices=1, coverage=(0.5, 0.6), n_stones=0, n_mimics=0)
    phantom = dataclasses.replace(one, hu=np.repeat(one.hu, 300, axis=0),
                                  stone_labels=np.repeat(one.stone_labels, 300, axis=0),
                                  mimic_labels=np.repeat(one.mimic_labels, 300, axis=0))
    volume = load_volume(write_series(phantom, tmp_path / "ct"))
    mask = np.zeros(volume.shape, np.uint8)
    for i in range(12):
        mask[10 + 24 * i:16 + 24 * i, 60:63, 10 + 9 * i:13 + 9 * i] = 1  # 12 stones of 6 slices
    findings = measure_stones(volume, mask, model_name=MODEL_NAME, model_version=MODEL_VERSION)
    assert len(findings.stones) == 12
    seg = write_results(volume, findings).seg
    assert seg is not None
    assert int(seg.NumberOfFrames) == 12 * 6  # not 12 x 300
    assert len(seg.PixelData) <= 12 * 6 * 128 * 128 // 8 + 1  # 147 kB: 72 frames of 2 kB
    path = tmp_path / "seg.dcm"
    seg.save_as(path, enforce_file_format=True)
    assert path.stat().st_size < 500_000
    _no_dciodvfy_errors([path])


@pytest.mark.parametrize("stated", [None, "3.0"])
def test_a_lone_slice_seg_states_no_spacing_it_does_not_know(tmp_path: Path, stated: str | None) -> None:
    phantom = generate_phantom(7, rows=64, slice_spacing=2.5, slices=1, coverage=(0.7, 0.8), n_stones=0, n_mimics=0)
    (path,) = write_series(phantom, tmp_path / "ct")
    if stated is not None:
        ds = pydicom.dcmread(path)
        ds.SpacingBetweenSlices = stated
        ds.save_as(path, enforce_file_format=True)
    volume = load_volume([path])
    mask = np.zeros(volume.shape, np.uint8)
    mask[0, 30:33, 30:33] = 1
    findings = measure_stones(volume, mask, model_name=MODEL_NAME, model_version=MODEL_VERSION)
    paths = save_results(write_results(volume, findings), tmp_path / "out")
    seg = pydicom.dcmread(next(p for p in paths if p.name.startswith("SEG_")))
    measures = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    if stated is None:
        assert "SpacingBetweenSlices" not in measures  # highdicom's default was 1.0
    else:
        assert float(measures.SpacingBetweenSlices) == 3.0  # the source's own
    assert float(measures.SliceThickness) == pytest.approx(float(pydicom.dcmread(path).SliceThickness))
    _no_dciodvfy_errors(paths)


def test_the_sr_region_is_the_stone_not_the_overlay_margin_box(fine: Volume, tmp_path: Path) -> None:
    mask = np.zeros(fine.shape, np.uint8)
    mask[12, 120:124, 70:73] = 1  # 4 rows x 3 columns: 3.0 x 2.25 mm
    findings, results, _ = _write(fine, mask, tmp_path)
    (box,) = findings.boxes
    assert (box.row_min, box.column_min, box.row_max, box.column_max) == (113, 63, 130, 79)  # overlay: 5 mm margin
    assert box.tight == (120, 70, 123, 72)
    (planar,) = report_of(hd.sr.Comprehensive3DSR.from_dataset(results.sr)).get_planar_roi_measurement_groups()
    assert planar.roi is not None
    assert planar.roi.value.tolist() == [[70, 120], [73, 120], [73, 124], [70, 124], [70, 120]]


def test_seg_and_sr_carry_series_date_and_time(stones: Case) -> None:
    assert stones.results.seg is not None
    for ds in (stones.results.seg, stones.results.sr):
        assert ds.SeriesDate and ds.SeriesTime
        assert (ds.SeriesDate, ds.SeriesTime) == (ds.ContentDate, ds.ContentTime)
    for path in stones.paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        if ds.Modality in ("SEG", "SR"):
            assert ds.SeriesDate == ds.ContentDate
