"""In-plane resampling to the card's pixel size (inference/resample.py), and the pipeline that uses it."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from inference.candidates import CandidateRule, find_candidates
from inference.components import ComponentTable
from inference.errors import ModelError, VolumeError
from inference.pipeline import Pipeline
from inference.resample import (
    BODY_MARGIN_MM,
    Grid,
    Part,
    Window,
    body_window,
    copy_part,
    mask_to_original,
    original_index,
    resample_grid,
    resample_volume,
    table_to_original,
    to_original,
)
from inference.runtime import resolve_model_dir
from inference.volume import Volume
from lab.realimages import image_volume
from lab.synth import generate_phantom


def _volume(pixel_mm: float, rows: int = 100, columns: int = 80) -> Volume:
    rng = np.random.default_rng(0)
    one = image_volume(rng.normal(40, 10, (rows, columns)).astype(np.float32), "resample", pixel_mm=pixel_mm)
    # three slices, oblique in-plane directions, so that a wrong shift of the positions shows
    row_dir, col_dir = (0.8, 0.6, 0.0), (-0.6, 0.8, 0.0)
    positions = np.array([[10.0, -20.0, 5.0 * k] for k in range(3)])
    return dataclasses.replace(one, hu=np.repeat(one.hu, 3, axis=0), positions=positions, row_direction=row_dir,
                               column_direction=col_dir, slice_spacing=5.0,
                               sop_instance_uids=("1", "2", "3"), frame_numbers=(1, 1, 1), source_paths=("", "", ""))


def test_a_series_near_the_cards_pixel_size_or_a_card_without_one_is_analysed_as_it_is() -> None:
    assert resample_grid(_volume(0.75), None) is None
    assert resample_grid(_volume(0.6), 0.0) is None
    assert resample_grid(_volume(0.77), 0.75) is None  # within 5 %
    grid = resample_grid(_volume(0.6), 0.75)
    assert grid == Grid(100, 80, 80, 64)
    assert resample_grid(_volume(0.9), 0.75) == Grid(100, 80, 120, 96)


def test_a_pixel_spacing_wider_than_any_ct_fails_the_series_instead_of_taking_memory_without_bound() -> None:
    """Probe 40: 128 pixels of 45 mm a side (650 KB of images) were resampled to 7,680 a side, 5.3 GB; a copy onto
    finer pixels of images wider than any CT's field of view (1,000 mm) is refused with the reason. Coarser
    copies (smaller than the series) and the widest real fields of view (a 700 mm bore at 1.5 mm) still go."""
    with pytest.raises(VolumeError, match=r"would be 3600 x 4500 mm \(80 x 100 pixels of 45 x 45 mm\), wider than"):
        resample_grid(_volume(45.0), 0.75)
    assert resample_grid(_volume(1.5, rows=480, columns=480), 0.75) == Grid(480, 480, 960, 960)  # 720 mm
    assert resample_grid(_volume(0.5, rows=2400, columns=2400), 0.75) is not None  # 1,200 mm, made coarser


def test_the_card_names_how_far_from_its_pixel_size_a_series_is_analysed_as_it_is(tmp_path: Path) -> None:
    # 3.8.0's tolerance, 0.15: 0.64-0.86 mm as it is (the chest CT's 0.84 mm too), beyond that resampled
    assert resample_grid(_volume(0.84), 0.75, 0.15) is None
    assert resample_grid(_volume(0.64), 0.75, 0.15) is None
    assert resample_grid(_volume(0.63), 0.75, 0.15) is not None
    assert resample_grid(_volume(0.87), 0.75, 0.15) is not None
    folder = tmp_path / "model"
    shutil.copytree(resolve_model_dir("default"), folder)
    card = json.loads((folder / "card.json").read_text())
    card["preprocessing"].update(resample_to_mm=0.75, resample_tolerance=0.15)
    (folder / "card.json").write_text(json.dumps(card))
    pipeline = Pipeline(folder, cores=1)
    assert pipeline.resample_tolerance == 0.15
    for pixel_mm, resampled in ((0.84, False), (1.0, True)):
        pipeline.analyse(_volume(pixel_mm))
        assert ("resample_s" in pipeline.last_timings) is resampled
    card["preprocessing"]["resample_tolerance"] = 1.5
    (folder / "card.json").write_text(json.dumps(card))
    with pytest.raises(ModelError, match="resample_tolerance"):
        Pipeline(folder, cores=1)


@pytest.mark.parametrize("pixel_mm", [0.6, 0.9])
def test_the_copy_covers_the_same_field_of_view_in_the_same_place(pixel_mm: float) -> None:
    volume = _volume(pixel_mm)
    grid = resample_grid(volume, 0.75)
    assert grid is not None
    copy = resample_volume(volume, grid)
    assert copy.shape == (3, grid.new_rows, grid.new_columns)
    assert copy.pixel_spacing == pytest.approx((pixel_mm * 100 / grid.new_rows, pixel_mm * 80 / grid.new_columns))
    sr, sc = grid.scale
    # a voxel of the copy lies where its fractional index says it does on the series
    for i, j in [(0, 0), (grid.new_rows - 1, 5), (7, grid.new_columns - 1)]:
        here = copy.index_to_patient(np.array([1, i, j]))
        there = volume.index_to_patient(np.array([1, (i + 0.5) * sr - 0.5, (j + 0.5) * sc - 0.5]))
        np.testing.assert_allclose(here, there, atol=1e-9)
    # the HU are kept on average (linear where finer, area where coarser)
    assert abs(float(copy.hu.mean()) - float(volume.hu.mean())) < 0.5


def test_a_mask_goes_back_without_losing_a_component() -> None:
    coarse_series = Grid(rows=40, columns=40, new_rows=48, new_columns=48)  # 0.9 mm series, a 0.75 mm copy
    mask = np.zeros((2, 48, 48), np.uint8)
    mask[0, 10, 10] = 1  # one pixel of the copy: less than an original pixel's area
    mask[1, 20:30, 20:30] = 1
    back = mask_to_original(mask, coarse_series)
    assert back.shape == (2, 40, 40)
    assert back[0].sum() >= 1
    (r, c), = np.argwhere(back[0])
    assert abs(r - ((10 + 0.5) * 40 / 48 - 0.5)) <= 1 and abs(c - ((10 + 0.5) * 40 / 48 - 0.5)) <= 1
    # a large component keeps about its area, in the series' pixels
    assert abs(int(back[1].sum()) - 100 * (40 / 48) ** 2) <= 12
    prob = to_original(mask.astype(np.float32), coarse_series)
    assert prob.shape == (2, 40, 40) and prob.max() <= 1.0


def test_the_densest_voxels_of_the_components_go_back_to_the_series_grid() -> None:
    grid = Grid(rows=100, columns=80, new_rows=80, new_columns=64)
    table = ComponentTable([None], np.zeros(1), np.array(["contrast"], object), np.zeros(1), np.zeros(1),
                           np.array([[2, 79, 0]]), significance=np.array([7.0]), gas=np.array([0.2]))
    back = table_to_original(table, grid)
    assert back.peaks.tolist() == [[2, 99, 0]]
    # the surroundings rules' measures, as measured on the copy, travel with their components
    assert back.significance is not None and back.gas is not None
    assert back.significance.tolist() == [7.0] and back.gas.tolist() == [0.2]
    assert original_index(np.array([[0, 40, 32]]), grid).tolist() == [[0, 50, 40]]


@pytest.fixture(scope="module")
def resampling_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("model") / "resampling"
    shutil.copytree(resolve_model_dir("default"), folder)
    card = json.loads((folder / "card.json").read_text())
    card["preprocessing"]["resample_to_mm"] = 0.75
    (folder / "card.json").write_text(json.dumps(card))
    return folder


@pytest.mark.parametrize("pixel_mm", [0.6, 0.9])
def test_a_series_of_other_pixels_is_found_and_measured_in_its_own_millimetres(resampling_model: Path,
                                                                                pixel_mm: float) -> None:
    # a seed far from training (1000-9999) and from the documented evaluation (50000+)
    phantom = generate_phantom(92_000, pixel_spacing=pixel_mm, n_stones=3, coverage=(0.6, 0.9),
                               stone_sites=("kidney",), small_stone_fraction=0.0)
    volume = phantom.to_volume()
    pipeline = Pipeline(resampling_model, cores=2)
    assert resample_grid(volume, pipeline.resample_to_mm) is not None
    findings = pipeline.run(volume)
    assert findings.mask.shape == volume.shape
    assert "resample_s" in pipeline.last_timings
    truth = [s for s in phantom.stones if s.diameter_mm >= 3.0]
    assert truth
    found = 0
    for label, stone in enumerate(phantom.stones, start=1):
        if stone.diameter_mm < 3.0:
            continue
        on = findings.mask[phantom.stone_labels == label]
        found += bool(on.any())
    assert found == len(truth)
    # each reported stone on a true one is measured in the series' millimetres, not the copy's pixels
    for reported in findings.stones:
        k = reported.slice_indices[len(reported.slice_indices) // 2]
        labels_here = np.unique(phantom.stone_labels[k][findings.mask[k] > 0])
        labels_here = labels_here[labels_here > 0]
        if labels_here.size:
            true_mm = phantom.stones[int(labels_here[0]) - 1].diameter_mm
            assert abs(reported.max_diameter_mm - true_mm) <= max(1.5, 0.35 * true_mm), (reported.max_diameter_mm, true_mm)


def test_a_finer_copy_has_its_candidates_found_at_the_series_noise() -> None:
    # linear interpolation onto finer pixels keeps the noise's peaks but narrows its spread: measured on
    # the copy, the dense threshold would drop below the peaks (on a real chest CT: 26 false stones)
    rule = CandidateRule.from_card(json.loads((resolve_model_dir("default") / "card.json").read_text())["candidates"])
    phantom = generate_phantom(92_010, pixel_spacing=0.9, slices=24, n_stones=1)
    noisy = phantom.to_volume()
    noisy = dataclasses.replace(noisy, hu=(noisy.hu + np.random.default_rng(1).normal(0, 50, noisy.shape))
                                .astype(np.float32))
    grid = resample_grid(noisy, 0.75)
    assert grid is not None and grid.scale[0] < 1
    copy = resample_volume(noisy, grid)
    own = find_candidates(noisy, rule)
    on_copy = find_candidates(copy, rule)
    from_series = find_candidates(copy, rule, noise_of=noisy)
    assert on_copy.dense_threshold_hu < own.dense_threshold_hu - 50
    assert from_series.dense_threshold_hu == pytest.approx(own.dense_threshold_hu)
    assert from_series.count < on_copy.count
    with pytest.raises(ValueError, match="slices"):
        find_candidates(copy, rule, noise_of=dataclasses.replace(noisy, hu=noisy.hu[:3]))


def test_only_the_bodys_part_is_kept_and_it_is_the_whole_copys_there() -> None:
    volume = _volume(1.0, rows=100, columns=80)
    rng = np.random.default_rng(38)
    hu = np.full(volume.shape, -1000.0, np.float32)
    hu[1, 30:50, 20:45] = rng.normal(40.0, 30.0, (20, 25))  # the body, on one slice only: the part covers every slice's
    volume = dataclasses.replace(volume, hu=hu)
    window = body_window(volume)
    margin = int(np.ceil(BODY_MARGIN_MM / 1.0))
    assert window == Window(30 - margin, 50 + margin, 20 - margin, 45 + margin)
    grid = Grid(100, 80, 133, 107)  # 1.0 mm onto about 0.75 mm
    part = copy_part(window, grid)
    whole = resample_volume(volume, grid)
    cut = resample_volume(volume, grid, part)
    assert cut.shape == (3, *part.shape) and part.shape[0] < grid.new_rows and part.shape[1] < grid.new_columns
    # probe 38: the part is the whole copy's values there, at the whole copy's points (a part resampled on its own
    # sampled the series at another phase, which a table or a speck far from the body moved)
    np.testing.assert_array_equal(cut.hu, whole.hu[:, part.j0:part.j1, part.i0:part.i1])
    assert cut.pixel_spacing == whole.pixel_spacing
    for k, i, j in ((0, 0, 0), (2, 5, 7)):
        np.testing.assert_allclose(cut.index_to_patient(np.array([k, i, j])),
                                   whole.index_to_patient(np.array([k, i + part.j0, j + part.i0])), atol=1e-9)
    # and back: what the part gives lands where the whole copy's would
    values = np.zeros(cut.shape, np.float32)
    values[1, 10:14, 12:15] = 1.0
    spread = np.zeros(whole.shape, np.float32)
    spread[:, part.j0:part.j1, part.i0:part.i1] = values
    np.testing.assert_array_equal(to_original(values, grid, np.float32, part), to_original(spread, grid))
    np.testing.assert_array_equal(mask_to_original(values.astype(np.uint8), grid, part),
                                  mask_to_original(spread.astype(np.uint8), grid))
    table = ComponentTable([None], np.zeros(1), np.array(["contrast"], object), np.zeros(1), np.zeros(1),
                           np.array([[1, 3, 4]]))
    moved = dataclasses.replace(table, peaks=np.array([[1, 3 + part.j0, 4 + part.i0]]))
    assert table_to_original(table, grid, part).peaks.tolist() == table_to_original(moved, grid).peaks.tolist()
    # a body across (nearly) the whole image, or none: the whole image
    assert body_window(dataclasses.replace(volume, hu=np.full(volume.shape, 40.0, np.float32))) is None
    assert body_window(dataclasses.replace(volume, hu=np.full(volume.shape, -1000.0, np.float32))) is None


def test_a_wide_field_of_view_finds_the_same_stones_from_the_bodys_part_as_from_the_whole_copy(
        resampling_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # 1.0 mm pixels, 512 of them: a 512 mm field of view, the body in its middle
    phantom = generate_phantom(92_020, pixel_spacing=1.0, n_stones=3, coverage=(0.6, 0.9),
                               stone_sites=("kidney",), small_stone_fraction=0.0)
    volume = phantom.to_volume()
    assert body_window(volume) is not None
    pipeline = Pipeline(resampling_model, cores=2)
    import inference.pipeline as pipeline_module

    noise_of: list[tuple[int, int, int]] = []
    find = pipeline_module.find_candidates

    def recording(copy: Volume, rule: CandidateRule, noise: Volume | None = None) -> object:
        noise_of.append(noise.shape if noise is not None else copy.shape)
        return find(copy, rule, noise)

    monkeypatch.setattr(pipeline_module, "find_candidates", recording)
    part = pipeline.run(volume)
    # the noise is measured on the whole series, as for the whole copy: not on the part, whose noise blocks
    # would sit elsewhere (white noise's candidates change steeply with the threshold)
    assert noise_of == [volume.shape]
    monkeypatch.setattr(pipeline_module, "body_window", lambda v: None)
    whole = pipeline.run(volume)
    # the part is cut from the whole copy: the same voxels, the same stones (probe 38: resampled on its own, it
    # sampled the series at another phase, and a stone's size moved by up to 1.3 mm with the part's bounds)
    np.testing.assert_array_equal(part.mask, whole.mask)
    assert len(part.stones) == len(whole.stones) >= 1
    assert [s.to_json() for s in part.stones] == [s.to_json() for s in whole.stones]


def test_a_finer_series_is_resampled_whole(resampling_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # its copy is smaller than the series: nothing to save by cutting it
    import inference.pipeline as pipeline_module

    def never(volume: Volume) -> None:
        raise AssertionError("a finer series' copy was cut to its body")

    monkeypatch.setattr(pipeline_module, "body_window", never)
    phantom = generate_phantom(92_030, pixel_spacing=0.55, slices=8, n_stones=1)
    pipeline = Pipeline(resampling_model, cores=2)
    pipeline.analyse(phantom.to_volume())
    assert "resample_s" in pipeline.last_timings  # it was resampled, whole
    # nor a copy finer on one axis only (its noise would otherwise be measured on the part)
    pipeline.analyse(dataclasses.replace(_volume(0.6), pixel_spacing=(1.0, 0.6)))
    assert "resample_s" in pipeline.last_timings


def test_a_small_body_is_not_cut_to_a_part_the_network_would_read_as_a_tight_crop(
        resampling_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A part under the card's mirror_below_px is mirrored beyond its edges where the whole copy is read
    with air: the network reads the two differently, so such a body is resampled whole."""
    import inference.pipeline as pipeline_module

    cuts: list[Part] = []
    resample = pipeline_module.resample_volume

    def recording(volume: Volume, grid: Grid, part: Part | None = None) -> Volume:
        if part is not None:
            cuts.append(part)
        return resample(volume, grid, part)

    monkeypatch.setattr(pipeline_module, "resample_volume", recording)
    pipeline = Pipeline(resampling_model, cores=1)
    assert pipeline.spec.mirror_below == 128
    rows = np.arange(512)[:, None]
    columns = np.arange(512)[None, :]
    for depth_mm, cut in ((70.0, False), (200.0, True)):
        body = ((rows - 256) / (depth_mm / 2)) ** 2 + ((columns - 256) / 135.0) ** 2 <= 1.0  # 1.0 mm pixels
        hu = np.where(body, 40.0, -1000.0).astype(np.float32)
        hu[256:259, 250:253] = 600.0
        cuts.clear()
        pipeline.analyse(image_volume(hu, f"small-body-{depth_mm}", pixel_mm=1.0))
        assert "resample_s" in pipeline.last_timings and bool(cuts) is cut


def test_a_card_s_tolerance_that_is_not_a_number_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    shutil.copytree(resolve_model_dir("default"), folder)
    card = json.loads((folder / "card.json").read_text())
    card["preprocessing"]["resample_tolerance"] = None
    (folder / "card.json").write_text(json.dumps(card))
    assert Pipeline(folder, cores=1).resample_tolerance == 0.05  # absent or null: the module's default
    card["preprocessing"]["resample_tolerance"] = "wide"
    (folder / "card.json").write_text(json.dumps(card))
    with pytest.raises(ModelError, match="not a number"):
        Pipeline(folder, cores=1)
