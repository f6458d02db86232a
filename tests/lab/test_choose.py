"""Choosing component thresholds on labelled images (``uronode choose``): the grid rule and the command."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from inference.components import ComponentTable
from inference.volume import Volume
from lab.choose import ComponentRow, choose, component_rows, count
from lab.realimages import Box, LabelledImage, image_files, read_image_set, split_groups
from lab.standins import Case, CaseRow, false_per_case_at_most, stone_free_share_at_most
from lab.synth import shared_data_dir
from tests.factory import write_series

REAL = shared_data_dir() / "real-stones"
ROWS = [
    # two images, three boxes: a strong stone, a weaker one, a weak small one in a contrast component
    ComponentRow(0, "dense_large", 0.95, (0,)),
    ComponentRow(0, "dense_small", 0.75, (1,)),
    ComponentRow(0, "dense_small", 0.65, ()),  # a false stone that a 0.6 threshold lets through
    ComponentRow(1, "contrast", 0.55, (0,)),
    ComponentRow(1, "contrast", 0.85, ()),  # a confident false stone
    ComponentRow(1, "dense_large", 0.3, ()),
]


def test_count_finds_a_box_once_and_calls_the_rest_false() -> None:
    everything = {"dense_small": 0.0, "dense_large": 0.0, "contrast": 0.0}
    doubled = [*ROWS, ComponentRow(0, "dense_large", 0.9, (0,))]  # a second component on box 0
    assert count(doubled, everything, boxes=3, images=2) == (1.0, 1.5)
    assert count(ROWS, {"dense_small": 0.7, "dense_large": 0.9, "contrast": 0.9}, 3, 2) == (2 / 3, 0.0)


def test_the_rule_most_boxes_within_the_false_stone_bound() -> None:
    strict = choose(ROWS, boxes=3, images=2, max_false=0.0)
    assert strict is not None
    assert strict.sensitivity == 2 / 3 and strict.false_per_image == 0.0
    assert strict.thresholds["contrast"] == 0.9  # the confident false stone is kept out
    loose = choose(ROWS, boxes=3, images=2, max_false=1.0)
    assert loose is not None and loose.sensitivity == 1.0  # the contrast stone at 0.55 needs 0.5
    assert loose.thresholds["contrast"] == 0.5 and loose.false_per_image == 0.5
    assert loose.thresholds["dense_small"] >= 0.7  # ties go to fewer false stones
    assert choose([ComponentRow(0, "contrast", 0.99, ())], 1, 1, max_false=0.5) is None


def test_a_bound_from_elsewhere_narrows_the_choice() -> None:
    """``allowed`` (the stone-free CT's bound in the command) removes thresholds the images alone would take."""
    loose = choose(ROWS, boxes=3, images=2, max_false=1.0, allowed=lambda t: t["contrast"] >= 0.6)
    assert loose is not None and loose.thresholds["contrast"] >= 0.6
    assert loose.sensitivity == 2 / 3  # the contrast stone at 0.55 is given up for the bound
    assert choose(ROWS, boxes=3, images=2, max_false=1.0, allowed=lambda t: False) is None


def test_the_generated_series_bound_narrows_the_choice() -> None:
    """``choose --series-max-false``: a confident false stone in a generated series (contrast, 0.85) rules out the
    thresholds the images alone would take; a bound it fits within leaves the choice alone."""
    cases = [Case("70000", {1: 4.0}), Case("70001", {})]
    series = [CaseRow("70000", "dense_small", 0.95, 1), CaseRow("70001", "contrast", 0.85, 0),
              CaseRow("70000", "dense_large", 0.65, 0), CaseRow("70001", "dense_large", 0.62, 0)]
    none_allowed = false_per_case_at_most(cases, series, 0.0)
    assert none_allowed({"dense_small": 0.9, "dense_large": 0.7, "contrast": 0.9})
    assert not none_allowed({"dense_small": 0.9, "dense_large": 0.7, "contrast": 0.8})
    assert not none_allowed({"dense_small": 0.9, "dense_large": 0.6, "contrast": 0.9})
    one_allowed = false_per_case_at_most(cases, series, 0.5)  # one false stone in two series
    assert one_allowed({"dense_small": 0.9, "dense_large": 0.7, "contrast": 0.8})
    assert not one_allowed({"dense_small": 0.9, "dense_large": 0.6, "contrast": 0.8})
    free = choose(ROWS, boxes=3, images=2, max_false=1.0)
    bound = choose(ROWS, boxes=3, images=2, max_false=1.0, allowed=none_allowed)
    assert free is not None and bound is not None
    assert free.thresholds["contrast"] == 0.5 and free.sensitivity == 1.0
    assert bound.thresholds["contrast"] == 0.9 and bound.thresholds["dense_large"] >= 0.7
    assert bound.sensitivity == 2 / 3  # the images' contrast stone at 0.55 is given up for the series
    assert choose(ROWS, boxes=3, images=2, max_false=1.0,
                  allowed=false_per_case_at_most(cases, series, 10.0)) == free
    low = {"dense_small": 0.5, "dense_large": 0.5, "contrast": 0.5}
    hundred = [Case(str(i), {}) for i in range(100)]
    # 0.29 x 100 is 28.999999999999996 in floating point: 29 false stones in 100 series are within 0.29
    assert false_per_case_at_most(hundred, [CaseRow(str(i), "contrast", 0.99, 0) for i in range(29)], 0.29)(low)
    assert not false_per_case_at_most(hundred, [CaseRow(str(i), "contrast", 0.99, 0) for i in range(30)], 0.29)(low)


def test_the_stone_free_bound_counts_slices_not_false_stones() -> None:
    """``choose --stone-free``: the share of the stone-free slices with a false stone, however many each has."""
    slices = [Case(str(i), {}) for i in range(100)]
    rows = [CaseRow(str(i), "contrast", 0.99, 0) for i in range(29) for _ in range(3)]  # 29 slices, 3 each
    low = {"dense_small": 0.5, "dense_large": 0.5, "contrast": 0.5}
    assert stone_free_share_at_most(slices, rows, 0.29)(low)
    assert not stone_free_share_at_most(slices, rows, 0.28)(low)
    assert stone_free_share_at_most(slices, rows, 0.0)({**low, "contrast": 0.995})  # above every score


def test_rows_place_each_component_by_its_densest_pixel() -> None:
    hu = np.full((40, 40), -50.0, np.float32)
    image = LabelledImage(Path("x.png"), np.zeros((40, 40), np.uint8), (Box(10, 10, 14, 14),), hu=hu, pixel_mm=1.0)

    def analyse(volume: Volume) -> ComponentTable:
        assert volume.hu.shape == (1, 40, 40)
        return ComponentTable(boxes=[(slice(0, 1), slice(10, 13), slice(10, 13)), None,
                                     (slice(0, 1), slice(30, 33), slice(30, 33))],
                              voxels=np.array([9, 0, 9]), groups=np.array(["dense_small", "dense_large", "contrast"]),
                              classifier=np.array([0.9, 0.0, 0.4]), pixel=np.zeros(3, np.float32),
                              peaks=np.array([[0, 15, 15], [0, 0, 0], [0, 31, 31]]))

    rows = component_rows([image], analyse, margin_mm=2.0)
    # the first peak is a pixel outside the box but within 2 mm of it; the missing component is skipped
    assert rows == [ComponentRow(0, "dense_small", 0.9, (0,)), ComponentRow(0, "contrast", 0.4, ())]


def test_two_images_with_one_name_have_their_boxes_counted_apart() -> None:
    """``p1/images/slice1.jpg`` and ``p2/images/slice1.jpg``: each image's box 0 is a box of its own."""
    hu = np.full((40, 40), -50.0, np.float32)
    images = [LabelledImage(Path(folder, "images", "slice1.jpg"), np.zeros((40, 40), np.uint8), (Box(10, 10, 14, 14),),
                            hu=hu, pixel_mm=1.0) for folder in ("p1", "p2")]

    def analyse(volume: Volume) -> ComponentTable:
        return ComponentTable(boxes=[(slice(0, 1), slice(10, 13), slice(10, 13))], voxels=np.array([9]),
                              groups=np.array(["dense_small"]), classifier=np.array([0.9]),
                              pixel=np.zeros(1, np.float32), peaks=np.array([[0, 12, 12]]))

    rows = component_rows(images, analyse, margin_mm=0.0)
    assert count(rows, {"dense_small": 0.5, "dense_large": 0.5, "contrast": 0.5}, boxes=2, images=2) == (1.0, 0.0)
    assert [r.image for r in rows] == [0, 1]


def test_the_command_on_real_validation_images(tmp_path: Path) -> None:
    """A few validation images of ``real-stones`` copied into a set of their own; thresholds into a model copy."""
    validation = split_groups(read_image_set(REAL))["validation"][:6]
    pairs = dict(image_files(REAL))
    (tmp_path / "set" / "images").mkdir(parents=True)
    (tmp_path / "set" / "labels").mkdir()
    for im in validation:
        shutil.copy(im.path, tmp_path / "set" / "images" / im.path.name)
        shutil.copy(pairs[im.path], tmp_path / "set" / "labels" / f"{im.path.stem}.txt")
    write_series(tmp_path / "ct", 3, size=64)  # a stand-in for a real stone-free CT: three noise slices
    write_series(tmp_path / "screen", 2, size=64)  # and for a screen: measured, never chosen on
    model = tmp_path / "model"
    shutil.copytree(Path(__file__).resolve().parents[2] / "models" / "default", model)
    done = subprocess.run([sys.executable, "-m", "uronode", "choose", "--model", str(model), "--images",
                           str(tmp_path / "set"), "--split", "all", "--max-false", "0.5", "--write-card",
                           "--series", "1", "--coarse-slices", "1", "--plane-slices", "1", "--crops", "60",
                           "--scales", "0.5", "--exports", "2", "--export-phantoms", "1",
                           "--stone-free", str(tmp_path / "ct"),
                           "--stone-free-max-slices", "1.0", "--series-max-false", "0",
                           "--screen", str(tmp_path / "screen")],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    boxes = sum(len(im.boxes) for im in validation)
    assert (f"6 images (all side), {boxes} boxes (boxes counted as stones: every class (no data.yaml names them); "
            "6 of 6 images with a label file)") in done.stdout
    # the whole-CT stand-ins, at the chosen thresholds and at the card's (lab/standins.py)
    assert "generated validation phantoms 70000-70000, series:" in done.stdout
    assert "generated validation phantoms 70000-70000, lone slices:" in done.stdout
    assert "generated validation phantoms 70000-70000, coronal and sagittal planes:" in done.stdout
    assert done.stdout.count("; stone-free coronal and sagittal planes with a false stone: ") == 2
    assert "the same images cut to 60 mm squares around each box, alone:" in done.stdout
    assert done.stdout.count("false stones per crop (") == 2
    assert "the same images resized by 0.5, their pixel size told:" in done.stdout
    assert "the same images resized by 0.5, their pixel size not told:" in done.stdout
    assert done.stdout.count("false stones per image (") == 4  # told and not, at both thresholds
    # whole slices exported at twice the matrix: the generated phantom's and the stone-free CT's, each read at
    # the assumed pixel size and at the estimate, at both thresholds
    assert "whole slices (generated phantoms 70000-70000) as 8-bit images resized by 2, read at the assumed" in done.stdout
    assert done.stdout.count("as 8-bit images resized by 2, read at the pixel size estimated from the body's width:") == 2
    assert done.stdout.count("false stones per slice (") == 8
    # the stone-free CT: the series whole, its three slices alone, resized to 0.75 mm and as 8-bit images,
    # at both thresholds
    assert done.stdout.count("real stone-free CT (") == 4
    assert done.stdout.count(f"screen, not chosen on ({tmp_path / 'screen'}), ") == 4
    assert done.stdout.count("false stones per series (") == 6  # generated, real and screen, twice each
    assert done.stdout.count("; stone-free lone slices with a false stone: ") == 6  # coarse, real, screen
    assert done.stdout.count("; stone-free lone slices resized to 0.75 mm with a false stone: ") == 4
    assert done.stdout.count("; stone-free the same as 8-bit 400/40 images with a false stone: ") == 4
    # the screen's two slices alone, resized and 8-bit, at both thresholds; it bounds nothing
    screen = done.stdout.split(f"screen, not chosen on ({tmp_path / 'screen'}), lone slices:")[1]
    assert sum(line.rstrip().endswith(" of 2") for line in screen.splitlines() if "stone-free" in line) == 6
    assert "screen" not in done.stdout.split("generated validation phantoms 70000-70000, series:")[0]
    # no stones to count: the stone-free CT's slices (alone, resized, 8-bit) and its exports (assumed and
    # estimated), at both thresholds
    assert sum(line.rstrip().endswith(" of 3") for line in done.stdout.splitlines()) == 10
    assert ("and a false stone on at most 100% of the stone-free CT's lone slices and at most 0 false stones per "
            "generated validation series on average:") in done.stdout
    # the series bound held: no false stone on the generated series at the chosen thresholds
    chosen_series = done.stdout.split("generated validation phantoms 70000-70000, series:\n")[1].splitlines()[0]
    assert chosen_series.startswith("  at the chosen thresholds") and "false stones per series (0 in 1)" in chosen_series
    components = json.loads((model / "card.json").read_text())["components"]
    assert {components[g] for g in ("dense_small", "dense_large", "contrast")} <= {0.5, 0.6, 0.7, 0.8, 0.9}
    assert "stone-free CT's lone slices" in components["chosen_on"]
    assert "uronode choose" in components["chosen_on"] and components["score"] == "classifier"


def test_the_series_bound_needs_the_series(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "uronode", "choose", "--images", str(tmp_path),
                           "--series-max-false", "0.3"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert "--series-max-false needs --series N" in done.stderr


def test_a_screen_that_is_not_a_ct_is_refused(tmp_path: Path) -> None:
    """``choose --screen`` and ``--stone-free`` name real stone-free CT; a folder without a DICOM series, or one
    that is not there, is a clear error (no traceback), given before any image or series is scored."""
    (tmp_path / "empty").mkdir()
    write_series(tmp_path / "ct", 2, size=64)
    for flags, said in ((["--screen", str(tmp_path / "ct"), str(tmp_path / "empty")], "no DICOM series in"),
                        (["--stone-free", str(tmp_path / "ct"), str(tmp_path / "empty")], "no DICOM series in"),
                        (["--screen", str(tmp_path / "missing")], "")):
        done = subprocess.run([sys.executable, "-m", "uronode", "choose", "--images", str(tmp_path), *flags],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 2, done.stderr[-1000:]
        assert f"uronode choose: {flags[0]}: {said}" in done.stderr and "Traceback" not in done.stderr
    assert "missing" in done.stderr
