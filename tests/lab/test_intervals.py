"""95 % intervals of the evaluation's figures: the bootstrap over units, and where each scorer uses it."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from inference.volume import Volume
from lab.evaluate import evaluate
from lab.imageeval import ImageTally, score_images, score_slices
from lab.intervals import paired_difference, poisson_rate, ratio_interval, wilson, with_interval
from lab.realimages import Box, LabelledImage
from lab.synth import Phantom, generate_phantom

UID = "1-3-46-670589-33-1-{ticks}00001-{n}_png_jpg.rf.a"
MINUTE_TICKS = 60 * 10_000_000


def test_the_interval_holds_the_figure_and_is_the_same_every_time() -> None:
    rng = np.random.default_rng(1)
    stones = rng.integers(1, 6, size=40)
    found = np.minimum(stones, rng.integers(0, 6, size=40))
    figure = found.sum() / stones.sum()
    low, high = ratio_interval(found, stones) or (np.nan, np.nan)
    assert low < figure < high
    assert ratio_interval(found, stones) == [low, high]
    assert ratio_interval(found, stones, seed=7) != [low, high]


def test_more_units_give_a_narrower_interval() -> None:
    few = ratio_interval([1, 0] * 5, [1] * 10)
    many = ratio_interval([1, 0] * 500, [1] * 1000)
    assert few is not None and many is not None
    assert many[1] - many[0] < (few[1] - few[0]) / 5
    assert many[0] < 0.5 < many[1]


def test_an_observed_all_or_nothing_gets_the_wilson_interval_not_certainty() -> None:
    assert wilson(20, 20) == pytest.approx([0.8389, 1.0], abs=1e-4)
    assert ratio_interval([5, 5, 10], [5, 5, 10]) == wilson(20, 20)
    assert ratio_interval([0, 0], [3, 4]) == wilson(0, 7)
    # a rate (false stones per image) observed at 0 gets the exact Poisson bound, not [0, 0]
    assert ratio_interval([0, 0, 0], [1, 1, 1], proportion=False) == poisson_rate(0, 3)
    assert poisson_rate(0, 3) == pytest.approx([0.0, 1.2296], abs=1e-4)
    # one unit holding the whole denominator: nothing to resample, the pooled counts' interval
    assert ratio_interval([3, 0, 0], [5, 0, 0]) == wilson(3, 5)
    assert ratio_interval([3, 0, 0], [5, 0, 0], proportion=False) == poisson_rate(3, 5)


def test_nothing_to_count_has_no_interval_and_bad_input_is_refused() -> None:
    assert ratio_interval([], []) is None
    assert ratio_interval([0, 0], [0, 0]) is None
    assert wilson(0, 0) is None
    with pytest.raises(ValueError):
        ratio_interval([1, 2], [3])
    assert with_interval(0.8125, [0.7712, 0.8521]) == "0.812 (0.771-0.852)"
    assert with_interval(None, None) == "-"


def _tally(units: list[str], found_pattern: list[bool]) -> ImageTally:
    tally = ImageTally(pixel_mm=0.75)
    box = Box(40.0, 40.0, 50.0, 50.0)
    hit = np.zeros((100, 100), np.uint8)
    hit[44:46, 44:46] = 1
    for k, (unit, found) in enumerate(zip(units, found_pattern, strict=True)):
        tally.add(f"image {k}", [box], hit if found else np.zeros_like(hit), unit=unit)
    return tally


def test_images_of_one_examination_are_resampled_together() -> None:
    # 10 examinations of 4 images each; an examination's images are all found or all missed
    pattern = [exam % 2 == 0 for exam in range(10) for _ in range(4)]
    by_exam = _tally([f"exam {k // 4}" for k in range(40)], pattern).as_dict()
    by_image = _tally([f"image {k}" for k in range(40)], pattern).as_dict()
    assert by_exam["stone_sensitivity"] == by_image["stone_sensitivity"] == 0.5
    assert by_exam["interval_units"] == "examinations (10)"
    assert by_image["interval_units"] == "examinations (40)"
    exam_ci, image_ci = by_exam["intervals"]["stone_sensitivity"], by_image["intervals"]["stone_sensitivity"]
    assert exam_ci is not None and image_ci is not None
    assert exam_ci[1] - exam_ci[0] > 1.5 * (image_ci[1] - image_ci[0])
    assert by_exam["intervals"]["sensitivity 5-10 mm"] == exam_ci
    assert by_exam["intervals"]["image_specificity"] is None  # every image holds a stone


def test_score_images_groups_images_taken_minutes_apart_as_one_examination() -> None:
    grey = np.full((64, 64), 100, np.uint8)
    names = [UID.format(ticks=637007007498655107 + k * MINUTE_TICKS, n=k) for k in range(3)]
    names.append(UID.format(ticks=637007007498655107 + 600 * MINUTE_TICKS, n=9))  # ten hours later
    images = [LabelledImage(Path(n + ".jpg"), grey, (Box(10.0, 10.0, 14.0, 14.0),)) for n in names]
    result = score_images(images, lambda im: np.zeros((64, 64), np.uint8))
    assert result["stone_sensitivity"] == 0.0
    assert result["interval_units"] == "examinations (2)"
    assert result["intervals"]["stone_sensitivity"] == wilson(0, 4)


def test_lone_slices_are_resampled_in_blocks_of_neighbours() -> None:
    false = np.zeros((32, 32), np.uint8)
    false[10:12, 10:12] = 1
    clean = np.zeros_like(false)
    together = score_slices([false] * 10 + [clean] * 20, block=10)
    spread = score_slices([false if k % 3 == 0 else clean for k in range(30)], block=10)
    assert together["slices_with_a_false_stone"] == spread["slices_with_a_false_stone"] == 10
    assert together["interval_units"] == "blocks of 10 consecutive slices (3), one CT"
    assert together["per_unit"]["block 0"] == {"slices": 10, "with_false": 10, "false_stones": 10}
    a, b = together["intervals"]["share_with_a_false_stone"], spread["intervals"]["share_with_a_false_stone"]
    assert a is not None and b is not None
    assert a[0] == 0.0 and a[1] >= 2 / 3  # one block holds them all: it may be drawn never or twice
    assert b[1] - b[0] < (a[1] - a[0]) / 2


def _paints(phantoms: list[Phantom], mirrored: list[bool]) -> Callable[[Volume], np.ndarray]:
    """A predictor called once per series in order: the series' own stones, or them mirrored (all
    missed, and false positives where they land)."""
    calls = iter(zip(phantoms, mirrored, strict=True))

    def predict(volume: Volume) -> np.ndarray:
        phantom, mirror = next(calls)
        return (phantom.stone_labels[:, ::-1] if mirror else phantom.stone_labels) > 0

    return predict


def test_generated_series_get_intervals_per_series() -> None:
    phantoms = [generate_phantom(seed, rows=128, slice_spacing=2.5, slices=8, coverage=(0.7, 0.85), n_stones=3)
                for seed in (3, 4, 5)]
    mirrored = [False, False, True]
    result = evaluate(phantoms, {"m": _paints(phantoms, mirrored)})["m"]
    alone = [evaluate([p], {"m": _paints([p], [m])})["m"] for p, m in zip(phantoms, mirrored, strict=True)]
    assert result["interval_units"] == "series (3)"
    assert set(result["per_unit"]) == {"seed 3", "seed 4", "seed 5"}  # named by what made them, not by order
    assert 0 < (result["sensitivity_3mm_and_more"] or 0) < 1 and result["false_positives"] > 0
    ge3 = ("3-5 mm", ">5 mm")
    stones = [sum(r["stones_by_size"][n] for n in ge3) for r in alone]
    found = [round(sum((r["sensitivity_by_size"][n] or 0) * r["stones_by_size"][n] for n in ge3)) for r in alone]
    assert result["intervals"]["sensitivity_3mm_and_more"] == ratio_interval(found, stones)
    assert result["intervals"]["false_positives_per_series"] == ratio_interval(
        [r["false_positives"] for r in alone], [1, 1, 1], proportion=False)


def test_a_paired_difference_cancels_what_both_find_hard() -> None:
    # 30 examinations of very different difficulty; B misses one more stone than A in 10 of them
    rng = np.random.default_rng(3)
    stones = rng.integers(2, 12, size=30)
    found_b = rng.integers(0, 2, size=30) * stones  # each examination all found or all missed
    found_b[:10] = 0
    found_a = np.minimum(stones, found_b + (np.arange(30) < 10))
    a = {f"e{k}": {"found": int(f), "stones": int(s)} for k, (f, s) in enumerate(zip(found_a, stones, strict=True))}
    b = {f"e{k}": {"found": int(f), "stones": int(s)} for k, (f, s) in enumerate(zip(found_b, stones, strict=True))}
    paired = paired_difference(a, b, "found", "stones")
    assert paired is not None
    difference, (low, high) = paired
    assert difference == pytest.approx((found_a.sum() - found_b.sum()) / stones.sum(), abs=1e-4)
    assert 0 < low <= difference <= high
    # unpaired, each model's own interval is far wider than the difference
    alone_a = ratio_interval(found_a, stones)
    assert alone_a is not None and alone_a[1] - alone_a[0] > 3 * (high - low)
    with pytest.raises(ValueError, match="not the same units"):
        paired_difference(a, {**b, "e99": {"found": 1, "stones": 1}}, "found", "stones")
    # the same names holding other stones are other sets (another seed, another pixel size)
    with pytest.raises(ValueError, match="another number of stones"):
        paired_difference(a, {**b, "e0": {"found": 0, "stones": int(stones[0]) + 1}}, "found", "stones")
    # one unit with stones: nothing to resample
    one = {"e0": {"found": 1, "stones": 2}, "e1": {"found": 0, "stones": 0}}
    assert paired_difference(one, one, "found", "stones") is None


def _summary(found_by_exam: list[int], false_by_slice_block: list[int]) -> dict[str, object]:
    tally = ImageTally(pixel_mm=0.75)
    box = Box(40.0, 40.0, 50.0, 50.0)
    hit = np.zeros((100, 100), np.uint8)
    hit[44:46, 44:46] = 1
    for exam, found in enumerate(found_by_exam):
        for k in range(3):
            tally.add(f"e{exam}-{k}", [box], hit if k < found else np.zeros_like(hit), unit=f"exam {exam}")
    false = np.zeros((32, 32), np.uint8)
    false[3:5, 3:5] = 1
    slices = [false if k % 10 < n else np.zeros_like(false) for k, n in
              ((k, false_by_slice_block[k // 10]) for k in range(10 * len(false_by_slice_block)))]
    return {"image_results": {"real_images": {"model": tally.as_dict()}, "lone_slices": score_slices(slices)}}


def test_uronode_compare_pairs_two_results_and_refuses_different_sets(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from lab.cli import cmd_compare
    from lab.compare import CompareError, compare

    better = _summary([3] * 20, [1] * 6)
    worse = _summary([2] * 20, [4] * 6)
    rows = {(r["set"], r["figure"]): r for r in compare(better, worse)}
    sens = rows[("real_images", "stone_sensitivity")]
    assert (sens["a"], sens["b"], sens["difference"]) == (1.0, pytest.approx(0.6667, abs=1e-4), pytest.approx(0.3333, abs=1e-4))
    assert sens["shown"]
    lone = rows[("lone_slices", "share_with_a_false_stone")]
    assert lone["difference"] == pytest.approx(-0.3) and lone["shown"]
    # the same figures on half the examinations each way: not shown
    mixed = _summary([3] * 10 + [2] * 10, [1] * 6)
    swapped = _summary([2] * 10 + [3] * 10, [1] * 6)
    assert not {(r["set"], r["figure"]): r for r in compare(mixed, swapped)}[("real_images", "stone_sensitivity")]["shown"]
    with pytest.raises(CompareError, match="different sets"):
        compare(better, _summary([3] * 21, [1] * 6))
    with pytest.raises(CompareError, match="different sets"):
        compare({**better, "real_images_set": {"split": "test", "window": "auto"}},
                {**worse, "real_images_set": {"split": "test", "window": "assumed"}})
    with pytest.raises(CompareError, match="no set in common"):
        compare(better, {"results": {}})

    paths = []
    for name, summary in (("a.json", better), ("card.json", {"name": "x", "metrics": worse})):
        (tmp_path / name).write_text(json.dumps(summary))
        paths.append(tmp_path / name)
    assert cmd_compare(argparse.Namespace(results=paths, names=["new", "old"])) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("| real_images | stone_sensitivity |"))
    assert line.startswith("| real_images | stone_sensitivity | 1.000 | 0.667 | +0.333") and line.endswith("| yes |")
    assert cmd_compare(argparse.Namespace(results=[paths[0], tmp_path / "lone.json"], names=None)) == 2
    (tmp_path / "lone.json").write_text(json.dumps({"image_results": {"lone_slices": better["image_results"]
                                                                       ["lone_slices"]}}))  # type: ignore[index]
    assert cmd_compare(argparse.Namespace(results=[paths[0], tmp_path / "lone.json"], names=None)) == 0
    assert "not compared, measured by one of them only: real_images (A only)" in capsys.readouterr().out
    (tmp_path / "bad.json").write_text("{not json")
    assert cmd_compare(argparse.Namespace(results=[paths[0], tmp_path / "bad.json"], names=None)) == 2
    assert "cannot read" in capsys.readouterr().err
