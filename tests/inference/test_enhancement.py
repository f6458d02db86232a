"""Contrast the header does not name, seen in the pixels (inference/enhancement.py): an enhanced aorta gives a
caution, unenhanced blood, cancellous bone and a bowel loop holding oral contrast do not; real non-contrast CT
and generated series are left alone."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy import ndimage

from inference.enhancement import LENGTH_MM, LOW_HU, enhanced_blood
from inference.pipeline import Pipeline, input_cautions
from inference.volume import Volume
from lab.synth import generate_phantom, read_nifti, shared_data_dir
from tests.factory import hu_volume

PIXEL_MM = 0.75
SLICE_MM = 1.25


def abdomen(blood_hu: float, *, length_mm: float = 200.0, noise_hu: float = 0.0, seed: int = 0,
            loop_hu: float | None = None, size: int = 320, bone: tuple[float, float] = (230.0, 600.0)) -> np.ndarray:
    """Axial slices (1.25 mm apart, 0.75 mm pixels) through a body of soft tissue: a grainy vertebral body with
    its cortex behind, the aorta (22 mm, ``blood_hu``) in front of it and to its left, and, where ``loop_hu`` is
    given, a bowel loop (25 mm) holding oral contrast for 60 mm, straight along the body. ``bone``: the vertebral
    body's mean HU and the strength of its grain."""
    rng = np.random.default_rng(seed)
    count = round(length_mm / SLICE_MM)
    yy, xx = (np.mgrid[0:size, 0:size] - size / 2) * PIXEL_MM
    body = (xx / 150) ** 2 + (yy / 105) ** 2 <= 1
    vertebra = (xx ** 2 + (yy - 45) ** 2) <= 17 ** 2
    cortex = ((xx ** 2 + (yy - 45) ** 2) <= 19 ** 2) & ~vertebra
    aorta = ((xx - 15) ** 2 + (yy - 12) ** 2) <= 11 ** 2
    loop = ((xx + 60) ** 2 + (yy + 40) ** 2) <= 12.5 ** 2
    grain = ndimage.gaussian_filter(rng.normal(0, 1, (count, size, size)), (0, 1.5, 1.5)).astype(np.float32)
    hu = np.full((count, size, size), -1000.0, np.float32)
    for k in range(count):
        hu[k][body] = 40.0
        hu[k][vertebra] = bone[0] + bone[1] * grain[k][vertebra]  # cancellous bone: as dense as blood, grainy
        hu[k][cortex] = 800.0
        hu[k][aorta] = blood_hu
        if loop_hu is not None and abs(k * SLICE_MM - length_mm / 2) <= 30:
            hu[k][loop] = loop_hu
    if noise_hu:
        hu += rng.normal(0, noise_hu, hu.shape).astype(np.float32)
    return hu


def offsets(hu: np.ndarray, slice_mm: float = SLICE_MM) -> np.ndarray:
    return np.arange(hu.shape[0]) * slice_mm


def test_unenhanced_blood_and_grainy_bone_are_not_contrast() -> None:
    for noise in (0.0, 20.0, 40.0):
        hu = abdomen(45.0, noise_hu=noise)
        assert enhanced_blood(hu, (PIXEL_MM, PIXEL_MM), offsets(hu)) is None


@pytest.mark.parametrize("blood", [130.0, 180.0, 400.0, 580.0])
@pytest.mark.parametrize("noise", [0.0, 20.0, 40.0])
def test_an_enhanced_aorta_is_found_and_measured(blood: float, noise: float) -> None:
    hu = abdomen(blood, noise_hu=noise, seed=int(blood + noise))
    found = enhanced_blood(hu, (PIXEL_MM, PIXEL_MM), offsets(hu))
    assert found is not None
    assert abs(found.hu - blood) <= 10, found
    assert found.length_mm >= LENGTH_MM
    assert f"a vessel {found.length_mm:.0f} mm long measures {found.hu:.0f} HU" in found.caution()
    assert found.caution().startswith("Perhaps contrast-enhanced (")


def test_blood_just_under_the_range_is_not_taken_for_contrast() -> None:
    hu = abdomen(LOW_HU - 25)
    assert enhanced_blood(hu, (PIXEL_MM, PIXEL_MM), offsets(hu)) is None


def test_even_sclerotic_bone_is_no_vessel() -> None:
    """Dense, smooth cancellous bone (sclerotic vertebrae: 400 HU, its smoothed spread about 34 HU, the least
    the real chest CT's vertebrae showed being 30) all along the series is not taken for the aorta."""
    hu = abdomen(45.0, bone=(400.0, 300.0), noise_hu=10.0)
    assert enhanced_blood(hu, (PIXEL_MM, PIXEL_MM), offsets(hu)) is None


def test_a_vessel_may_miss_one_analysed_slice_not_three() -> None:
    """A plaque or a slice of streaks hides the aorta on one slice: the vessel goes on across it; a gap of three
    analysed slices splits it into two too short to count."""
    one = abdomen(200.0, length_mm=120.0)
    one[round(57 / SLICE_MM):round(63 / SLICE_MM)] = abdomen(45.0, length_mm=120.0)[round(57 / SLICE_MM):round(63 / SLICE_MM)]
    found = enhanced_blood(one, (PIXEL_MM, PIXEL_MM), offsets(one))
    assert found is not None and found.length_mm >= LENGTH_MM
    three = abdomen(200.0, length_mm=120.0)
    three[round(50 / SLICE_MM):round(75 / SLICE_MM)] = abdomen(45.0, length_mm=120.0)[round(50 / SLICE_MM):round(75 / SLICE_MM)]
    assert enhanced_blood(three, (PIXEL_MM, PIXEL_MM), offsets(three)) is None


@pytest.mark.parametrize("loop", [250.0, 450.0])
def test_a_bowel_loop_with_oral_contrast_is_no_vessel(loop: float) -> None:
    hu = abdomen(45.0, loop_hu=loop, noise_hu=10.0)
    assert enhanced_blood(hu, (PIXEL_MM, PIXEL_MM), offsets(hu)) is None


def test_a_lone_slice_and_a_short_series_are_not_checked() -> None:
    hu = abdomen(300.0, length_mm=LENGTH_MM - 10)
    assert enhanced_blood(hu, (PIXEL_MM, PIXEL_MM), offsets(hu)) is None
    assert enhanced_blood(hu[:1], (PIXEL_MM, PIXEL_MM), offsets(hu[:1])) is None
    # the same aorta, long enough, is found
    longer = abdomen(300.0, length_mm=LENGTH_MM + 10)
    assert enhanced_blood(longer, (PIXEL_MM, PIXEL_MM), offsets(longer)) is not None


def test_thick_slices_and_other_pixel_sizes_find_the_same_aorta() -> None:
    hu = abdomen(180.0, noise_hu=15.0)
    thick = hu[::4]  # 5 mm slices
    found = enhanced_blood(thick, (PIXEL_MM, PIXEL_MM), offsets(thick, 5 * SLICE_MM / 1.25))
    assert found is not None and abs(found.hu - 180) <= 10
    fine = ndimage.zoom(hu[::8], (1, 1.5, 1.5), order=1)  # 0.5 mm pixels, 10 mm apart
    found = enhanced_blood(fine, (PIXEL_MM / 1.5, PIXEL_MM / 1.5), offsets(fine, 8 * SLICE_MM))
    assert found is not None and abs(found.hu - 180) <= 10


def test_the_real_non_contrast_ct_is_left_alone() -> None:
    """The TotalSegmentator example CT (real, non-contrast, 336 mm from the pelvis to the chest): as it is (3 mm
    pixels) and at 0.75 mm, with and without low-dose noise."""
    ct = read_nifti(shared_data_dir() / "example_ct.nii.gz").astype(np.float32)
    hu = np.ascontiguousarray(ct[::-1, ::-1, :].transpose(2, 1, 0))
    at = offsets(hu, 3.0)
    assert enhanced_blood(hu, (3.0, 3.0), at) is None
    fine = ndimage.zoom(hu, (1, 4, 4), order=1)
    assert enhanced_blood(fine, (0.75, 0.75), at) is None
    noisy = fine + np.random.default_rng(5).normal(0, 40, fine.shape).astype(np.float32)
    assert enhanced_blood(noisy, (0.75, 0.75), at) is None


@pytest.mark.parametrize("seed", [50000, 50001, 50002])
def test_generated_series_are_left_alone(seed: int) -> None:
    """The generator's abdomens: unenhanced aorta and IVC, dense bowel loops, bone, stones."""
    phantom = generate_phantom(seed)
    pixel = float(phantom.pixel_spacing)
    assert enhanced_blood(phantom.hu, (pixel, pixel), offsets(phantom.hu, float(phantom.slice_spacing))) is None


def _volume(hu: np.ndarray, notes: tuple[str, ...] = ()) -> Volume:
    return hu_volume(hu, PIXEL_MM, -SLICE_MM, notes)


def test_the_caution_reaches_the_findings_once() -> None:
    enhanced = _volume(abdomen(200.0, noise_hu=10.0))
    (caution,) = [c for c in input_cautions(enhanced) if "contrast" in c]
    assert caution.startswith("Perhaps contrast-enhanced (a vessel ")
    assert "unenhanced blood measures 30-60 HU" in caution
    assert input_cautions(_volume(abdomen(45.0, noise_hu=10.0))) == ()
    # the header said so already: its caution stands, the pixels add none
    said = ("Contrast-enhanced (Series Description 'ABD PORTAL VENOUS'): the model was made for non-contrast CT; "
            "contrast in the kidneys, ureters and bladder can be reported as stones and can hide them.",)
    assert input_cautions(dataclasses.replace(enhanced, notes=said)) == said
    # a weaker sign (an agent alone) leaves the pixels to say more (probe 33); contrast comes first, before the
    # other cautions, since an overlay shows as many as it has room for
    lossy = "The images were lossy-compressed (JPEG or JPEG 2000 with loss, or LossyImageCompression 01): ..."
    agent = ("Perhaps contrast-enhanced (Contrast/Bolus Agent 'OMNIPAQUE 350'): the model was made for non-contrast "
             "CT; contrast in the kidneys, ureters and bladder can be reported as stones and can hide them.")
    both = input_cautions(dataclasses.replace(enhanced, notes=(lossy, agent)))
    assert both[0] == agent and both[1].startswith("Perhaps contrast-enhanced (a vessel ") and both[2] == lossy
    assert input_cautions(dataclasses.replace(enhanced, notes=(lossy, *said))) == (*said, lossy)


def test_a_pipeline_run_carries_the_caution() -> None:
    hu = abdomen(220.0, length_mm=100.0, noise_hu=10.0, size=256)
    findings = Pipeline().run(_volume(hu))
    assert any(c.startswith("Perhaps contrast-enhanced (a vessel ") for c in findings.cautions), findings.cautions
