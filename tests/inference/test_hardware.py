"""Patients after treatment and with hardware (probe 36, model 3.9.0's rules): a ureteral stent is a tube the
candidate rule removes whole, which keeps the local-contrast rule off its edge and reported stones off its voxels;
a stone on it is a candidate of its own; metal is never a stone; each is said in the cautions."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy import ndimage

from inference.candidates import BudgetCut, CandidateRule, Tube, find_candidates
from inference.components import ComponentThresholds, component_table, kept_components, select_mask
from inference.pipeline import Pipeline, analysis_cautions, input_cautions, metal_caution
from inference.postprocess import measure_stones
from inference.runtime import load_model
from inference.volume import Volume, mirrored
from lab.synth import generate_phantom
from tests.factory import hu_volume

PIXEL_MM = 0.75
SLICE_MM = 2.0
RULE = CandidateRule.from_card(load_model(None).card.candidates)
"""The shipped model's candidate rule (3.9.0: clear of what it removes)."""


def _volume(hu: np.ndarray) -> Volume:
    return hu_volume(hu, PIXEL_MM, SLICE_MM)


def abdomen(slices: int = 80, size: int = 160, seed: int = 0) -> np.ndarray:
    """Soft tissue (40 HU, 8 HU of noise) in an oval body, with a vertebra (cancellous 250 HU in a 700 HU cortex)
    and, attached to it along the whole series, a thin lamina (2 mm, 600 HU): bone whose thin parts are no tube."""
    rng = np.random.default_rng(seed)
    yy, xx = (np.mgrid[0:size, 0:size] - size / 2) * PIXEL_MM
    body = (xx / 55) ** 2 + (yy / 45) ** 2 <= 1
    vertebra = xx ** 2 + (yy - 22) ** 2 <= 12 ** 2
    cortex = (xx ** 2 + (yy - 22) ** 2 <= 14 ** 2) & ~vertebra
    lamina = (np.abs(xx) <= 1.0) & (yy > 35) & (yy < 44)
    hu = np.where(body, 40.0, -1000.0).astype(np.float32)
    hu = np.repeat(hu[None], slices, axis=0)
    hu[:, vertebra], hu[:, cortex], hu[:, lamina] = 250.0, 700.0, 600.0
    hu += rng.normal(0, 8, hu.shape).astype(np.float32) * body
    return hu


def draw_tube(hu: np.ndarray, columns_mm: tuple[float, float], row_mm: float, radius_mm: float = 1.0,
              lumen_mm: float = 0.6, value: float = 900.0) -> None:
    """A hollow tube running along the slices and sideways from one column to the other (a stent in the ureter),
    with its partial volume and a scanner's blur."""
    size = hu.shape[1]
    yy, xx = (np.mgrid[0:size, 0:size] - size / 2) * PIXEL_MM
    for k in range(hu.shape[0]):
        d = np.hypot(xx - tube_column(columns_mm, k, hu.shape[0]), yy - row_mm)
        wall = np.clip((radius_mm - d) / PIXEL_MM + 0.5, 0, 1) - np.clip((lumen_mm - d) / PIXEL_MM + 0.5, 0, 1)
        share = ndimage.gaussian_filter(wall, 0.8)
        hu[k] = np.where(share > 0.01, np.maximum(hu[k], 40 + share * (value - 40)), hu[k])  # air stays air


def tube_column(columns_mm: tuple[float, float], k: int, slices: int) -> float:
    return columns_mm[0] + (columns_mm[1] - columns_mm[0]) * k / (slices - 1)


def draw_stone(hu: np.ndarray, centre: tuple[float, float, float], diameter_mm: float, value: float = 1000.0) -> None:
    """A round stone (slice, row mm, column mm from the centre), with its partial volume."""
    k0, row_mm, column_mm = centre
    size = hu.shape[1]
    zz, yy, xx = np.mgrid[0:hu.shape[0], 0:size, 0:size].astype(np.float32)
    d = np.sqrt(((zz - k0) * SLICE_MM) ** 2 + ((yy - size / 2) * PIXEL_MM - row_mm) ** 2
                + ((xx - size / 2) * PIXEL_MM - column_mm) ** 2)
    share = np.clip((diameter_mm / 2 - d) / PIXEL_MM + 0.5, 0, 1)
    hu[:] = np.where(share > 0, np.maximum(hu, 40 + share * (value - 40)), hu)


def test_a_stent_is_a_tube_that_keeps_candidates_off_its_edge() -> None:
    """Probe 36: a stent 160 mm long gave dozens of local-contrast candidates on its edge (of the removed structures
    only the kept ones kept them off), each reported as a stone with the stent's HU."""
    hu = abdomen()
    draw_tube(hu, (-35.0, -25.0), 5.0)
    volume = _volume(hu)
    before = find_candidates(volume, dataclasses.replace(RULE, clear_of_removed=0))
    after = find_candidates(volume, RULE)
    assert before.count - before.dense_count >= 20  # the edge's local-contrast candidates
    assert after.count - after.dense_count == 0
    (tube,) = after.tubes
    assert tube.length_mm == pytest.approx(hu.shape[0] * SLICE_MM, abs=SLICE_MM) and tube.slices == (0, 79)
    assert before.tubes == after.tubes  # said whatever the model
    assert find_candidates(_volume(abdomen()), RULE).tubes == ()  # the bone's lamina is none
    outside = abdomen()
    draw_tube(outside, (-20.0, -20.0), 56.0, lumen_mm=0.0, value=1500.0)  # a line on the table, below the body
    assert find_candidates(_volume(outside), RULE).tubes == ()  # review 34


def test_a_stone_on_a_stent_is_a_candidate_of_its_own() -> None:
    """Probe 36: a stone touching a stent was one dense structure with it, removed with it as too long (or reached
    through the edge and measured with the stent)."""
    hu = abdomen()
    draw_tube(hu, (-35.0, -25.0), 5.0)
    column = tube_column((-35.0, -25.0), 40, hu.shape[0])
    draw_stone(hu, (40, 5.0, column + 3.5), 6.0)  # touching the stent
    found = find_candidates(_volume(hu), RULE)
    size = hu.shape[1]
    k, r, c = 40, round(5.0 / PIXEL_MM + size / 2), round((column + 3.5) / PIXEL_MM + size / 2)
    stone = int(found.labels[k, r, c])
    assert 0 < stone <= found.dense_count  # a dense candidate
    voxels = np.argwhere(found.labels == stone)
    extent = (voxels.max(axis=0) - voxels.min(axis=0) + 1) * np.array([SLICE_MM, PIXEL_MM, PIXEL_MM])
    assert extent.max() <= 8.0  # the stone, not the stent
    assert found.tubes and all(t.length_mm > 60 for t in found.tubes)
    without = find_candidates(_volume(hu), dataclasses.replace(RULE, clear_of_removed=0))
    assert int(without.labels[k, r, c]) == 0  # removed with the stent, as before 3.9.0


def test_metal_is_never_a_stone_and_is_said() -> None:
    hu = abdomen(slices=10)
    hu[4:6, 80:84, 60:64] = 3071.0  # a clip at the scanner's ceiling
    labels = np.zeros(hu.shape, np.uint8)
    labels[4:6, 80:84, 60:64] = 1
    labels[2, 20:23, 20:23] = 2
    hu[2, 20:23, 20:23] = 1800.0  # a dense stone
    table = component_table(labels, 2, 2, hu, np.ones(hu.shape, np.float16), np.array([1, 2]), np.array([0.99, 0.99]))
    assert table.peak_hu is not None and list(table.peak_hu) == [3071.0, 1800.0]  # measured on the voxels
    card = {"components": {"dense_small": 0.7, "max_peak_hu": 3000.0}}
    assert list(kept_components(table, ComponentThresholds.from_card(card, 0.5))) == [2]
    assert list(kept_components(table, ComponentThresholds.from_card({"components": {"dense_small": 0.7}}, 0.5))) == [
        1, 2]  # models before 3.9.0
    # and on the series' own voxels when it was analysed on a resampled copy, where the peak is averaged down
    # (review 34): the measured stones leave it out
    volume = _volume(hu)
    mask = (labels > 0).astype(np.uint8)
    assert len(measure_stones(volume, mask).stones) == 2
    kept = measure_stones(volume, mask, max_hu=3000.0)
    assert [s.max_hu for s in kept.stones] == [1800.0] and int(kept.mask.sum()) == 9
    assert metal_caution(_volume(abdomen(slices=10))) is None
    numbered = dataclasses.replace(volume, instance_numbers=tuple(range(10, 0, -1)))  # head first
    assert metal_caution(numbered) == ("Metal, or contrast as dense (3,000 HU or more: an implant, clips or wires?), "
                                       "on images 5-6: its streaks can hide stones near it and make false ones.")
    assert input_cautions(numbered) == (metal_caution(numbered),)  # the findings' cautions carry it
    for pixel_mm in (0.5, 1.0):  # analysed on a copy resampled to 0.75 mm, where a small peak is averaged down
        findings = Pipeline().run(_beads(pixel_mm))
        assert findings.stones == (), [s.to_json() for s in findings.stones]


def _beads(pixel_mm: float) -> Volume:
    """A body 200 x 160 mm of 240 mm at ``pixel_mm``, with three bits of metal of 1-2 mm at the scanner's ceiling
    on 3 slices (review 34's case)."""
    rng = np.random.default_rng(0)
    size = int(240 / pixel_mm)
    yy, xx = (np.mgrid[0:size, 0:size] - size / 2) * pixel_mm
    body = (xx / 100) ** 2 + (yy / 80) ** 2 <= 1
    hu = np.repeat(np.where(body, 40.0, -1000.0).astype(np.float32)[None], 24, axis=0)
    hu += rng.normal(0, 8, hu.shape).astype(np.float32) * body
    for row_mm, column_mm, diameter_mm in ((20, -40, 1.0), (-20, 40, 1.5), (0, 0, 2.0)):
        metal = ndimage.gaussian_filter((np.hypot(xx - column_mm, yy - row_mm) <= diameter_mm / 2).astype(np.float32),
                                        0.5 / pixel_mm * 0.75)
        hu[10:13] = np.maximum(hu[10:13], 40 + np.clip(metal / max(float(metal.max()), 1e-6), 0, 1) * 3031)
    return dataclasses.replace(_volume(np.clip(hu, -1024, 3071)), pixel_spacing=(pixel_mm, pixel_mm))


def test_a_kept_component_never_takes_a_removed_structures_voxels() -> None:
    """Probe 36: a candidate beside a stent grew into it (pixels of probability >= 0.5 within two of it) and was
    measured with the stent's HU."""
    labels = np.zeros((3, 12, 12), np.uint8)
    labels[1, 5, 5] = 1
    prob = np.ones(labels.shape, np.float16)
    table = component_table(labels, 1, 1, np.zeros(labels.shape, np.float32), prob, np.array([1]), np.array([0.9]))
    thresholds = ComponentThresholds.from_card({"components": {"dense_small": 0.7}}, 0.5)
    grown = select_mask(labels, prob, table, thresholds)
    removed = np.ravel_multi_index(np.nonzero(grown & (np.arange(12)[None, None, :] >= 6)), labels.shape)
    kept = select_mask(labels, prob, table, thresholds, removed=np.sort(removed))
    assert grown[:, :, 6:].any() and not kept[:, :, 6:].any() and kept[1, 5, 5] == 1


def test_a_structure_removed_for_its_volume_keeps_nothing_off() -> None:
    """Review 34: a staghorn stone over 8,000 mm3 is removed as bone is; 3.8.0 still reached it through its edge's
    candidates, and keeping clear of it too left it without a mark. Only what is too long keeps candidates off."""
    hu = abdomen(slices=30)
    draw_stone(hu, (15, 5.0, -30.0), 28.0, value=900.0)  # 11,500 mm3, 28 mm across
    found = find_candidates(_volume(hu), RULE)
    assert found.removed.size == 0 or not np.isin(
        np.ravel_multi_index((15, round(5.0 / PIXEL_MM + 80), round(-30.0 / PIXEL_MM + 80)), hu.shape), found.removed)
    before = find_candidates(_volume(hu), dataclasses.replace(RULE, clear_of_removed=0))
    assert found.count == before.count


def test_what_the_candidate_stage_met_is_said() -> None:
    volume = _volume(abdomen(slices=90))
    tube = ("A long thin dense structure, 172 mm on slices 4-89 (counted from the feet end) (a ureteral stent, a "
            "catheter, a wire or a vessel?), is not analysed: stones touching it may be missed or measured short")
    tubes = (Tube(172.0, (3, 88)),)
    noise = BudgetCut(900, 0, 0.0, 95.0, (10, 40))
    assert analysis_cautions(tubes, noise, RULE, volume) == (tube + ".",)  # noise just over 60 HU: not said
    assert analysis_cautions(tubes, BudgetCut(40, 40, 180.0, 0.0, (0, 9)), RULE, volume) == (tube + ".",)  # faint
    assert analysis_cautions(tubes, BudgetCut(900, 2, 800.0, 400.0, (10, 40)), dataclasses.replace(RULE, clear_of_removed=0),
                             volume) == (
        tube + ", and parts of it may be reported as stones.",
        "900 candidate regions on slices 11-41 (counted from the feet end) were not looked at, over the candidate "
        "budget (2 dense, up to 800 HU, 898 standing up to 400 HU above their surroundings: metal streaks or strong "
        "noise?): "
        "stones there may be missed.")
    numbered = dataclasses.replace(volume, instance_numbers=tuple(range(90, 0, -1)))
    assert analysis_cautions((), BudgetCut(40, 40, 3071.0, 0.0, (0, 9)), RULE, numbered) == (
        "40 candidate regions on images 81-90 were not looked at, over the candidate budget (40 dense, up to 3071 HU: "
        "metal streaks or strong noise?): stones there may be missed.",)
    said = input_cautions(dataclasses.replace(volume, notes=("The images were lossy-compressed.",)), ("found",))
    assert said == ("found", "The images were lossy-compressed.")


@pytest.mark.slow
def test_a_stented_phantom_reports_its_stone_and_not_the_stent() -> None:
    """Through the whole pipeline, on a generated abdomen with a 10 mm ureteral stone and a stent running past it,
    touching it, for over 100 mm: 3.9.0 reports the stone at its size and nothing on the stent, and says the stent is
    there; 3.8.0 lost the stone with the stent (and, where the stent's edge broke up, reported pieces of it as
    stones: probe 36, 17-39 a series)."""
    phantom = generate_phantom(5, slice_spacing=SLICE_MM, n_stones=1, n_mimics=0, stone_sites=("ureter",))
    (stone,) = phantom.stones
    assert stone.diameter_mm == pytest.approx(10.0)
    k, r, c = np.argwhere(phantom.stone_labels == 1).mean(axis=0)
    pixel = phantom.pixel_spacing
    hu = phantom.hu.copy()
    size = hu.shape[1]
    yy, xx = np.mgrid[0:size, 0:size] * pixel
    d = np.hypot(xx - (c * pixel + stone.diameter_mm / 2 + 1.0), yy - r * pixel)
    wall = np.clip((1.0 - d) / pixel + 0.5, 0, 1) - np.clip((0.6 - d) / pixel + 0.5, 0, 1)
    stent = 40 + ndimage.gaussian_filter(wall, 0.8).astype(np.float32) * 860
    a, b = max(0, int(k) - 40), min(hu.shape[0], int(k) + 40)
    assert (b - a) * SLICE_MM >= 100  # longer than any stone
    hu[a:b] = np.maximum(hu[a:b], stent)
    volume = dataclasses.replace(phantom.to_volume(), hu=hu)
    findings = Pipeline().run(volume)
    (found,) = findings.stones
    assert found.max_diameter_mm == pytest.approx(stone.diameter_mm, abs=2.0), found.to_json()
    assert any(note.startswith("A long thin dense structure, ") for note in findings.cautions), findings.cautions
    feet = Pipeline().run(mirrored(volume))  # lying feet first: the tube on the same slices, counted from the feet
    assert feet.cautions == findings.cautions and len(feet.stones) == 1
    before = Pipeline("cascade-3.8.0").run(volume)
    assert before.stones == ()  # removed with the stent as one structure too long to be a stone
