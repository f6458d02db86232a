"""Local-contrast candidates, the network's input channels, and the component-level decision."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from inference.candidates import CandidateRule, find_candidates
from inference.components import ComponentThresholds, component_table, kept_components, select_mask
from inference.network import InputSpec, cut_inputs, preprocess
from inference.volume import Volume
from lab.train import select_channels


def _volume(hu: np.ndarray) -> Volume:
    k = hu.shape[0]
    return Volume(
        hu=hu, positions=np.array([(0.0, 0.0, 1.5 * i) for i in range(k)]),
        row_direction=(1.0, 0.0, 0.0), column_direction=(0.0, 1.0, 0.0),
        pixel_spacing=(0.7, 0.7), slice_spacing=1.5,
        frame_of_reference_uid="1.2.3", study_instance_uid="1.2.4", series_instance_uid="1.2.5",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2", sop_instance_uids=tuple(f"1.2.6.{i}" for i in range(k)),
        frame_numbers=(1,) * k, source_paths=("",) * k,
    )


def _body_with(points: dict[tuple[int, int, int], float]) -> np.ndarray:
    hu = np.full((6, 96, 96), -1000.0, dtype=np.float32)
    yy, xx = np.mgrid[:96, :96]
    hu[:, (yy - 48) ** 2 + (xx - 48) ** 2 < 44 ** 2] = 40.0
    for (k, r, c), value in points.items():
        hu[k, r, c] = value
    return hu


def test_a_faint_dot_is_a_candidate_only_under_the_contrast_rule() -> None:
    volume = _volume(_body_with({(3, 40, 40): 110.0, (2, 60, 60): 900.0}))
    dense_only = find_candidates(volume, CandidateRule())
    assert dense_only.count == 1
    both = find_candidates(volume, CandidateRule(contrast_hu=60.0, contrast_min_hu=70.0))
    assert both.count == 2 and both.dense_count == 1
    assert both.labels[3, 40, 40] == 2 and both.labels[2, 60, 60] == 1
    # a broad plateau of 110 HU has no local contrast: not a candidate
    hu = _body_with({})
    hu[:, 30:60, 30:60] = 110.0
    assert find_candidates(_volume(hu), CandidateRule(contrast_hu=60.0, contrast_min_hu=70.0)).count == 0


def test_wide_views_are_block_averages_and_channels_can_be_narrowed() -> None:
    hu = np.random.default_rng(0).uniform(-1000, 1000, (7, 300, 300)).astype(np.float32)
    centres = np.array([[3, 150, 150], [0, 10, 290]])
    wide = InputSpec(context=2, wide=(2, 4))
    raw = cut_inputs(hu, centres, wide)
    assert raw.shape == (2, 64, 64, wide.raw_channels)
    assert np.isclose(raw[0, 0, 0, 5], hu[3, 86:88, 86:88].mean())
    assert np.isclose(raw[0, 0, 0, 6], hu[3, 22:26, 22:26].mean())
    assert preprocess(raw, wide).shape == (2, 64, 64, wide.channels)
    narrow = InputSpec(context=1)
    assert np.array_equal(select_channels(raw, wide, narrow), cut_inputs(hu, centres, narrow))


def test_components_are_kept_by_their_group_threshold_and_keep_their_densest_voxel() -> None:
    hu = _body_with({(3, 40, 40): 110.0, (2, 60, 60): 900.0})
    labels = np.zeros(hu.shape, np.int32)
    labels[3, 40, 40] = 2
    labels[2, 60, 60] = 1
    prob = np.zeros(hu.shape, np.float16)
    prob[2, 60, 60] = 0.2  # the U-Net draws the stone faintly
    owners = np.array([1, 2])
    table = component_table(labels, 2, 1, hu, prob, owners, np.array([0.95, 0.6]), small_voxels=15)
    assert list(table.groups) == ["dense_small", "contrast"]
    strict = ComponentThresholds(pixel=0.5, dense_small=0.9, dense_large=0.9, contrast=0.9)
    assert list(kept_components(table, strict)) == [1]
    mask = select_mask(labels, prob, table, strict)
    assert mask[2, 60, 60] == 1 and mask.sum() == 1
    lenient = ComponentThresholds(pixel=0.5, dense_small=0.9, dense_large=0.9, contrast=0.5)
    assert list(kept_components(table, lenient)) == [1, 2]
    # a card without a components block: the first model's rule, pixel probability >= threshold
    legacy = ComponentThresholds.from_card({}, 0.9)
    assert legacy.score == "pixel" and list(kept_components(table, legacy)) == []


def test_thresholds_are_chosen_per_group_in_the_middle_of_the_plateau() -> None:
    from lab.experiment import GRID, sweep

    # two small stones (one only a contrast candidate finds), one large stone, and noise
    records = {
        "groups": np.array(["dense_small", "dense_large", "contrast", "contrast", "dense_small"]),
        "classifier": np.array([0.9, 0.6, 0.995, 0.7, 0.4]),
        "pixel": np.zeros(5),
        "touches": [[0], [1], [2], [], []],
        "kinds": [None, None, None, "anatomy/other", "bowel_pellet"],
        "stone_bins": np.array(["<3 mm", ">5 mm", "<3 mm"]),
        "series": 10,
    }
    chosen = sweep(records, "classifier", fp_cap=0.0)
    assert chosen["sensitivity_<3mm"] == 1.0 and chosen["sensitivity_>=3mm"] == 1.0
    assert chosen["false_positives_per_series"] == 0.0
    t = chosen["thresholds"]
    assert 0.4 < t["dense_small"] <= 0.9 and t["dense_large"] <= 0.6 and 0.7 < t["contrast"] <= 0.995
    low, high = chosen["plateau"]["dense_small"]
    assert low == GRID[GRID > 0.4][0] and high == 0.9
    assert low < t["dense_small"] < high


def test_a_large_component_the_unet_is_sure_of_is_kept_whatever_the_head_says() -> None:
    hu = _body_with({})
    labels = np.zeros(hu.shape, np.int32)
    labels[1:4, 30:40, 30:40] = 1  # 300 voxels: a large stone the head scores low
    labels[1:4, 60:64, 60:64] = 2  # 48 voxels: large too, but below the override's size
    hu[labels > 0] = 800.0
    prob = np.zeros(hu.shape, np.float16)
    prob[labels > 0] = 0.97
    table = component_table(labels, 2, 2, hu, prob, np.array([1, 2]), np.array([0.05, 0.05]), small_voxels=15)
    assert list(table.groups) == ["dense_large", "dense_large"]
    head_only = ComponentThresholds(dense_small=0.75, dense_large=0.2, contrast=0.99)
    assert list(kept_components(table, head_only)) == []
    with_override = ComponentThresholds(dense_small=0.75, dense_large=0.2, contrast=0.99,
                                        override_pixel=0.9, override_voxels=100)
    assert list(kept_components(table, with_override)) == [1]
    assert list(kept_components(table, ComponentThresholds.from_card(
        {"components": with_override.card()}, 0.5))) == [1]  # the card carries it
    unsure = ComponentThresholds(dense_large=0.2, override_pixel=0.99, override_voxels=100)
    assert list(kept_components(table, unsure)) == []  # 0.97 is not sure enough


def test_a_grain_of_noise_is_held_back_and_a_small_stone_in_the_same_noise_is_not() -> None:
    """The significance rule: a component must stand out of its own surroundings' noise (inference.components)."""
    from inference.components import held_back, significance

    rng = np.random.default_rng(7)
    hu = _body_with({})
    # noise of 45 HU in the tissue, correlated over about a pixel as a smooth kernel makes it
    from scipy import ndimage
    noise = ndimage.gaussian_filter(rng.normal(0.0, 1.0, hu.shape), (0, 0.8, 0.8))
    hu = np.where(hu > 0, hu + noise * (45.0 / noise[hu > 0].std()), hu).astype(np.float32)
    grain = np.unravel_index(int(np.argmax(np.where(hu[3] > 0, hu[3], -np.inf)[20:76, 20:76])), (56, 56))
    grain = (grain[0] + 20, grain[1] + 20)
    assert hu[3][grain] > 40.0 + 3 * 45.0  # the noise's brightest grain stands out by more than 3 SD
    yy, xx = np.mgrid[:96, :96]
    stone = (yy - 30) ** 2 + (xx - 66) ** 2 <= 2  # a 3-pixel-wide (2 mm) stone of 400 HU
    hu[3][stone] = 400.0
    labels = np.zeros(hu.shape, np.int32)
    labels[3][grain] = 1
    labels[3][stone] = 2
    px = (0.7, 0.7)
    z_grain = significance(hu[3], labels[3] == 1, px)
    z_stone = significance(hu[3], labels[3] == 2, px)
    assert z_grain < 5.5 <= z_stone
    prob = np.zeros(hu.shape, np.float16)
    table = component_table(labels, 2, 2, hu, prob, np.array([1, 2]), np.array([0.9, 0.9]), small_voxels=15,
                            pixel_mm=px)
    assert table.significance is not None
    assert np.allclose(table.significance, [z_grain, z_stone], atol=1e-3)  # cropped as on the whole slice
    rule = ComponentThresholds(dense_small=0.5, min_significance=5.5)
    assert list(kept_components(table, rule)) == [2]
    assert list(kept_components(table, ComponentThresholds(dense_small=0.5))) == [1, 2]  # not required: both
    assert ComponentThresholds.from_card({"components": rule.card()}, 0.5).min_significance == 5.5
    # held back for counting on a grid: no threshold keeps the grain, the stone's score is untouched
    counted = held_back(table, rule)
    assert counted.classifier[0] < 0 and counted.classifier[1] == np.float32(0.9)
    assert held_back(table, ComponentThresholds()) is table
    # a component with no soft tissue around it (in air) is not measurable: never held back
    air = np.zeros((40, 40), bool)
    air[20, 20] = True
    assert significance(np.full((40, 40), -1000.0, np.float32), air, px) == float("inf")


def test_the_noise_grains_of_many_slices_are_held_back_and_their_stones_kept() -> None:
    """Not one lucky slice: over ten noise draws (45 HU, correlated over a pixel) the brightest grain of a
    56 x 56 pixel area stays under 5.5 noise SDs in nine or more, and a 2 mm stone of 400 HU is over it in all."""
    from scipy import ndimage

    from inference.components import significance

    yy, xx = np.mgrid[:96, :96]
    body = (yy - 48) ** 2 + (xx - 48) ** 2 < 44 ** 2
    stone = (yy - 30) ** 2 + (xx - 66) ** 2 <= 2
    held, kept = 0, 0
    for seed in range(10):
        noise = ndimage.gaussian_filter(np.random.default_rng(seed).normal(0.0, 1.0, body.shape), 0.8)
        hu = np.where(body, 40.0 + noise * (45.0 / noise[body].std()), -1000.0).astype(np.float32)
        area = np.full(body.shape, -np.inf)
        area[20:76, 20:76] = hu[20:76, 20:76]
        grain = np.zeros(body.shape, bool)
        grain[np.unravel_index(int(np.argmax(area)), body.shape)] = True
        held += significance(hu, grain, (0.7, 0.7)) < 5.5
        hu[stone] = 400.0
        kept += significance(hu, stone, (0.7, 0.7)) >= 5.5
    assert held >= 9 and kept == 10


def test_the_significance_is_measured_only_where_a_threshold_could_keep_the_component() -> None:
    from inference.components import SIGNIFICANCE_SCORE_FLOOR
    from inference.pipeline import Pipeline
    from lab.choose import GRID

    hu = _body_with({(2, 30, 30): 900.0, (2, 60, 60): 900.0})
    labels = np.zeros(hu.shape, np.int32)
    labels[2, 30, 30], labels[2, 60, 60] = 1, 2
    prob = np.zeros(hu.shape, np.float16)
    table = component_table(labels, 2, 2, hu, prob, np.array([1, 2]), np.array([0.9, 0.1]), small_voxels=15,
                            pixel_mm=(0.7, 0.7), significance_from=0.5)
    assert table.significance is not None
    assert table.significance[0] > 5.5 and np.isnan(table.significance[1])
    rule = ComponentThresholds(dense_small=0.5, min_significance=5.5)
    assert list(kept_components(table, rule)) == [1]
    # every threshold a choice counts is at or above the floor, so the grid sees every measured component
    assert min(GRID) >= SIGNIFICANCE_SCORE_FLOOR
    # one threshold given for every group keeps the card's significance and gas rules
    overridden, card = Pipeline("default", threshold=0.6).thresholds, Pipeline("default").thresholds
    assert overridden.min_significance == card.min_significance is not None
    assert overridden.max_gas_share == card.max_gas_share is not None


def test_a_pellet_in_a_gas_filled_loop_is_held_back_and_a_stone_beside_the_loop_is_not() -> None:
    """The gas rule (inference.components): the urinary tract holds no gas; dense content in bowel does."""
    from inference.components import GAS_REACH_MM, gas_share, held_back

    hu = _body_with({})
    yy, xx = np.mgrid[:96, :96]
    loop = (yy - 48) ** 2 + (xx - 30) ** 2 <= 8 ** 2  # a bowel loop of gas, 11 mm across
    hu[:, loop] = -900.0
    pellet = (yy - 48) ** 2 + (xx - 30) ** 2 <= 2  # a 2 mm pill of 800 HU in it
    # a stone of 600 HU in soft tissue, just beyond the rule's reach from the loop
    stone = (yy - 48) ** 2 + (xx - 45) ** 2 <= 2
    from scipy import ndimage
    gap_mm = ndimage.distance_transform_edt(~loop, sampling=(0.7, 0.7))[stone].min()
    assert GAS_REACH_MM < gap_mm < GAS_REACH_MM + 1.5
    hu[3][pellet], hu[3][stone] = 800.0, 600.0
    px = (0.7, 0.7)
    assert gas_share(hu[3], pellet, px) > 0.9
    assert gas_share(hu[3], stone, px) == 0.0
    # the same stone moved to touch the loop: some of its surroundings are gas, most are not
    touching = (yy - 48) ** 2 + (xx - 40) ** 2 <= 2
    assert 0.0 < gas_share(np.where(touching, 600.0, hu[3]), touching, px) < 0.5
    # noisy fat (-100 HU, 80 HU SD) is not gas
    fat = np.random.default_rng(3).normal(-100.0, 80.0, (40, 40)).astype(np.float32)
    dot = np.zeros((40, 40), bool)
    dot[20, 20] = True
    assert gas_share(fat, dot, px) == 0.0
    assert GAS_REACH_MM > 2 * px[0]

    labels = np.zeros(hu.shape, np.int32)
    labels[3][pellet], labels[3][stone] = 1, 2
    prob = np.zeros(hu.shape, np.float16)
    table = component_table(labels, 2, 2, hu, prob, np.array([1, 2]), np.array([0.9, 0.9]), small_voxels=15,
                            pixel_mm=px)
    assert table.gas is not None and table.gas[0] > 0.9 and table.gas[1] == 0.0
    rule = ComponentThresholds(dense_small=0.5, max_gas_share=0.1)
    assert rule.measures_surroundings
    assert list(kept_components(table, rule)) == [2]
    assert list(kept_components(table, ComponentThresholds(dense_small=0.5))) == [1, 2]  # not required: both
    assert ComponentThresholds.from_card({"components": rule.card()}, 0.5).max_gas_share == 0.1
    counted = held_back(table, rule)
    assert counted.classifier[0] < 0 and counted.classifier[1] == np.float32(0.9)
    assert held_back(table, ComponentThresholds()) is table
    # the significance's rule is not the gas rule's: a card with only one measures and applies only it
    assert held_back(table, ComponentThresholds(min_significance=5.5)) is table
    # not measured where no threshold could keep the component
    low = component_table(labels, 2, 2, hu, prob, np.array([1, 2]), np.array([0.1, 0.9]), small_voxels=15,
                          pixel_mm=px, significance_from=0.5)
    assert low.gas is not None and np.isnan(low.gas[0])
    assert list(kept_components(low, ComponentThresholds(dense_small=0.05, max_gas_share=0.1))) == [1, 2]
    assert held_back(low, rule).classifier[0] == np.float32(0.1)  # unmeasured: never held back
    only_gas = component_table(labels, 2, 2, hu, prob, np.array([1, 2]), np.array([0.9, 0.9]), small_voxels=15,
                               pixel_mm=px, measure_significance=False)
    assert only_gas.significance is None and only_gas.gas is not None


def test_a_card_with_only_the_gas_rule_measures_the_gas_and_holds_back_a_pellet_in_gas(tmp_path: Path) -> None:
    """The pipeline measures what its card's rules need, and ``uronode choose`` counts as it decides."""
    import json
    import shutil

    from inference.components import held_back
    from inference.pipeline import Pipeline

    folder = tmp_path / "gas-only"
    shutil.copytree(Path(__file__).resolve().parents[2] / "models" / "default", folder)
    card = json.loads((folder / "card.json").read_text())
    card["components"]["min_significance"] = None
    card["components"]["max_gas_share"] = 0.1
    # every component is then measured and kept by its score, whatever the network makes of this drawing
    card["components"].update(dense_small=0.0, dense_large=0.0, contrast=0.0)
    (folder / "card.json").write_text(json.dumps(card))
    pipeline = Pipeline(folder)
    hu = _body_with({})
    yy, xx = np.mgrid[:96, :96]
    hu[:, (yy - 48) ** 2 + (xx - 30) ** 2 <= 8 ** 2] = -900.0  # a gas-filled loop
    hu[:, (yy - 48) ** 2 + (xx - 30) ** 2 <= 2] = 900.0  # a dense pellet in it, on every slice
    hu[:, (yy - 48) ** 2 + (xx - 66) ** 2 <= 2] = 900.0  # and the same in soft tissue
    table = pipeline.analyse(_volume(hu))[2]
    assert table.significance is None and table.gas is not None
    assert not np.isnan(table.gas).any()
    in_gas = table.peaks[:, 2] < 48
    assert in_gas.sum() == 1 and (~in_gas).sum() == 1
    assert table.gas[in_gas][0] > 0.5 and table.gas[~in_gas][0] == 0.0
    assert list(kept_components(table, pipeline.thresholds)) == [int(np.nonzero(~in_gas)[0][0]) + 1]
    counted = held_back(table, pipeline.thresholds)
    assert counted.classifier[in_gas][0] < 0 <= counted.classifier[~in_gas][0]


def test_an_8bit_image_in_a_soft_tissue_window_cannot_show_gas_and_one_in_a_wide_window_can() -> None:
    """Read back through the assumed soft-tissue window, gas and fat are both its bottom (-160 HU): the gas
    rule never fires; read back through a wide (bone) window, black is below -400 HU and it does."""
    from inference.components import gas_share
    from lab.realimages import grey_to_hu

    grey = np.zeros((40, 40), np.uint8)  # black: gas or fat, the image cannot say
    grey[20, 20] = 255
    dot = grey == 255
    assert gas_share(grey_to_hu(grey), dot, (0.75, 0.75)) == 0.0
    assert gas_share(grey_to_hu(grey, (300.0, 1500.0)), dot, (0.75, 0.75)) == 1.0


def _axial_body(size: int = 400, px: float = 0.75) -> np.ndarray:
    """An axial slice of a 240 x 180 mm body of soft tissue in air, a gas-filled loop and a lung-like
    region inside it, and noise of 20 HU."""
    yy, xx = np.mgrid[:size, :size]
    hu = np.full((size, size), -1000.0, dtype=np.float32)
    c = size / 2
    hu[((yy - c) * px / 90.0) ** 2 + ((xx - c) * px / 120.0) ** 2 <= 1.0] = 40.0
    hu[(yy - c) ** 2 + (xx - c + 60) ** 2 <= 15 ** 2] = -950.0  # bowel gas, 11 mm from the centre's left
    hu[(yy - c + 70) ** 2 + (xx - c - 60) ** 2 <= 25 ** 2] = -850.0  # a lung base
    return hu + np.random.default_rng(5).normal(0.0, 20.0, hu.shape).astype(np.float32)


def test_the_depth_in_the_body_is_measured_from_the_skin_and_gas_inside_is_body() -> None:
    """``body_depth``: the distance to the outside seen on the slice, in mm; enclosed gas and lung are body."""
    from inference.components import body_depth

    px = (0.75, 0.75)
    hu = _axial_body()
    depth, parts = body_depth(hu, px)
    c = 200
    # the body's centre lies 90 mm under its front and back skin, within a pixel and the smoothing
    assert 88.0 < depth[c, c] < 92.0
    # beside the gas-filled loop and in the lung base: as deep as the body there, not 0
    assert depth[c, c - 60] > 60.0 and depth[c - 70, c + 60] > 20.0
    # 8 mm under the front skin, and outside
    assert 6.5 < depth[c - 120 + 11, c] < 9.5
    assert depth[5, 5] == 0.0
    assert parts[c, c] > 0 and parts[5, 5] == 0
    # the same slice read back from an 8-bit soft-tissue window: its black (-160 HU) may be fat, no outside
    assert np.isinf(body_depth(np.clip(hu, -160.0, 240.0), px)[0]).all()


def test_the_depth_is_not_measured_where_the_slice_does_not_show_the_body_whole() -> None:
    """A crop whose body fills it, and a slice cut at its top and bottom (coronal, sagittal), have no
    outside to measure from: infinite depth. A body the field of view cuts a little keeps its depth."""
    from inference.components import BODY_MAX_EDGE_SHARE, body_depth

    px = (0.75, 0.75)
    hu = _axial_body()
    crop, parts = body_depth(hu[120:280, 120:280], px)  # a 120 mm crop inside the body, the lung cut by its edge
    assert (crop[parts == 0] == 0.0).all() and (parts == 0).any()  # the lung is what it takes for outside
    assert np.isinf(crop[parts > 0]).all()  # but the body touches the edge all round: not measured
    band = hu.copy()
    band[:, :] = -1000.0
    band[:, 100:300] = 40.0  # cut at the top and the bottom: 400 of the 1,596 edge pixels
    cut, _ = body_depth(band, px)
    assert np.isinf(cut[200, 200]) and cut[200, 50] == 0.0
    assert 400 / 1596 > BODY_MAX_EDGE_SHARE
    # the field of view cuts the body's flanks a little: still measured, and the edge counts as body
    flanks = np.full((400, 400), -1000.0, np.float32)
    yy, xx = np.mgrid[:400, :400]
    flanks[((yy - 200) / 120.0) ** 2 + ((xx - 200) / 205.0) ** 2 <= 1.0] = 40.0  # cut over ~70 rows a side
    touching = int(np.count_nonzero(flanks[:, 0] > 0) + np.count_nonzero(flanks[:, -1] > 0))
    assert 0 < touching <= BODY_MAX_EDGE_SHARE * 1596
    measured, _ = body_depth(flanks, px)
    assert np.isfinite(measured[200, 200]) and 85.0 < measured[200, 200] < 92.0  # to the front and back skin
    # at the cut edge the body is 2 x 20 mm high: its depth is to the skin above and below, not 1.5 mm to the edge
    assert 18.0 < measured[200, 2] < 23.0


def test_a_card_with_the_depth_rule_holds_back_a_dense_dot_under_the_skin_and_keeps_one_deep_in_the_body(
        tmp_path: Path) -> None:
    """The pipeline measures the depth its card asks for, ``kept_components`` and ``held_back`` apply it, and
    a card without it measures nothing of it."""
    import json
    import shutil

    from inference.components import held_back
    from inference.pipeline import Pipeline

    folder = tmp_path / "depth"
    shutil.copytree(Path(__file__).resolve().parents[2] / "models" / "default", folder)
    card = json.loads((folder / "card.json").read_text())
    card["components"].update(min_significance=None, max_gas_share=None, min_depth_mm=15.0,
                              dense_small=0.0, dense_large=0.0, contrast=0.0)
    (folder / "card.json").write_text(json.dumps(card))
    pipeline = Pipeline(folder)
    assert pipeline.thresholds.min_depth_mm == 15.0
    assert ComponentThresholds.from_card({"components": pipeline.thresholds.card()}, 0.5).min_depth_mm == 15.0
    hu = _body_with({})  # a disc of 30.8 mm radius (0.7 mm pixels)
    yy, xx = np.mgrid[:96, :96]
    hu[:, (yy - 48) ** 2 + (xx - 9) ** 2 <= 2] = 900.0  # 3 mm under the skin
    hu[:, (yy - 48) ** 2 + (xx - 52) ** 2 <= 2] = 900.0  # 28 mm under it
    table = pipeline.analyse(_volume(hu))[2]
    assert table.significance is None and table.gas is None and table.depth is not None
    shallow = table.peaks[:, 2] < 30
    assert shallow.sum() == 1 and (~shallow).sum() == 1
    assert table.depth[shallow][0] < 5.0 and table.depth[~shallow][0] > 25.0
    deep_id = int(np.nonzero(~shallow)[0][0]) + 1
    assert list(kept_components(table, pipeline.thresholds)) == [deep_id]
    counted = held_back(table, pipeline.thresholds)
    assert counted.classifier[shallow][0] < 0 and counted.classifier[~shallow][0] >= 0
    # the same components without the rule: both kept
    assert len(kept_components(table, dataclasses.replace(pipeline.thresholds, min_depth_mm=None))) == 2
    # a card without the rule measures no depth
    card["components"]["min_depth_mm"] = None
    (folder / "card.json").write_text(json.dumps(card))
    assert Pipeline(folder).analyse(_volume(hu))[2].depth is None
