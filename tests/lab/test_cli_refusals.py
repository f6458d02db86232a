"""The lab's commands refuse a mistake before any heavy work, in one line (a probe of the command line
found each of these running minutes of generation or scoring first, then ending in a traceback, or
running and reporting nothing). Nothing here generates a phantom or loads TensorFlow: what would
start the heavy work is replaced by a stand-in that fails the test when it is reached."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from inference.errors import ModelError
from lab import experiment
from lab.compare import compare, holds_figures
from lab.dataset import PatchSet, PatchSetError
from lab.imageeval import score_slices
from lab.realimages import read_image_set, split_groups
from lab.soup import make_soup
from uronode.app.cli import build_parser, main


def _forbid(monkeypatch: pytest.MonkeyPatch, target: str) -> None:
    """``target`` (module.name) fails the test when called: the mistake was not refused before it."""
    def reached(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"{target} was reached: the mistake was not refused first")

    monkeypatch.setattr(target, reached)


def _refused(argv: list[str], flag: str, capsys: pytest.CaptureFixture[str]) -> str:
    """``argv`` refused while the line is read (argparse's error, exit 2), naming ``flag``."""
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(argv)
    assert info.value.code == 2, argv
    err = capsys.readouterr().err
    assert f"error: argument {flag}" in err, (argv, err)
    return err


@pytest.mark.parametrize("argv", [
    ["synth", "--out", "x", "--count", "0"], ["synth", "--out", "x", "--count", "-3"],
    ["synth", "--out", "x", "--rows", "0"], ["synth", "--out", "x", "--rows", "-8"],
    ["synth", "--out", "x", "--rows", "1"], ["synth", "--out", "x", "--rows", "100000"],
    ["synth", "--out", "x", "--slices", "0"], ["synth", "--out", "x", "--slices", "-4"],
    ["synth", "--out", "x", "--seed", "-1"], ["synth", "--out", "x", "--count", "two"],
    ["train", "--epochs", "0"], ["train", "--epochs", "-1"], ["train", "--base", "0"],
    ["train", "--phantoms", "-1"], ["train", "--first-seed", "-1"], ["train", "--sampling-seed", "-1"],
    ["evaluate", "--series", "-1"], ["evaluate", "--real", "-2"], ["evaluate", "--slices", "0"],
    ["evaluate", "--rows", "0"], ["evaluate", "--seed", "-1"], ["evaluate", "--slice-mm", "0.1"],
    ["evaluate", "--slice-mm", "12"], ["evaluate", "--slice-mm", "nan"],
    ["choose", "--images", "x", "--series", "-1"], ["choose", "--images", "x", "--coarse-slices", "-1"],
    ["choose", "--images", "x", "--plane-slices", "-1"], ["choose", "--images", "x", "--export-phantoms", "-1"],
    ["choose", "--images", "x", "--export-seed", "-1"],
    ["choose", "--images", "x", "--crops", "0"], ["choose", "--images", "x", "--crops", "60", "-5"],
    ["choose", "--images", "x", "--crops", "nan"], ["choose", "--images", "x", "--crops", "inf"],
    ["experiment", "--out", "x", "--train", "abc"], ["experiment", "--out", "x", "--train", "1001:1000"],
    ["experiment", "--out", "x", "--train", "5:5"], ["experiment", "--out", "x", "--train=-1:5"],
    ["experiment", "--out", "x", "--train", "1:2:3"], ["experiment", "--out", "x", "--val", "5"],
    ["experiment", "--out", "x", "--workers", "0"], ["experiment", "--out", "x", "--batch", "0"],
    ["experiment", "--out", "x", "--loader-workers", "0"], ["experiment", "--out", "x", "--epochs", "-1"],
])
def test_a_count_size_seed_or_range_out_of_bounds_is_refused_while_the_line_is_read(
        argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    _refused(argv, next(a for a in reversed(argv) if a.startswith("--")).split("=")[0], capsys)


def test_the_defaults_and_valid_values_read_as_before() -> None:
    parser = build_parser()
    synth = parser.parse_args(["synth", "--out", "x"])
    assert (synth.count, synth.seed, synth.rows, synth.slices) == (1, 1, 512, None)  # None: a whole abdomen
    assert parser.parse_args(["synth", "--out", "x", "--slices", "6", "--rows", "64", "--seed", "0"]).slices == 6
    train = parser.parse_args(["train"])
    assert (train.epochs, train.base, train.phantoms, train.out) == (12, 12, 200, Path("models/default"))
    assert parser.parse_args(["train", "--images", "x", "--phantoms", "0"]).phantoms == 0
    evaluate = parser.parse_args(["evaluate"])
    assert (evaluate.series, evaluate.real, evaluate.rows, evaluate.slices, evaluate.out) == (40, 0, 512, None, None)
    assert evaluate.slice_mm is None and parser.parse_args(["evaluate", "--slice-mm", "0.625"]).slice_mm == 0.625
    choose = parser.parse_args(["choose", "--images", "x", "--crops", "60", "12.5", "--series", "0"])
    assert (choose.crops, choose.series, choose.export_phantoms, choose.export_seed) == ([60.0, 12.5], 0, 12, None)
    run = parser.parse_args(["experiment", "--out", "x"])
    assert (run.train, run.val, run.epochs, run.batch, run.loader_workers) == (
        range(1000, 1480), range(60000, 60048), 0, 128, 1)
    assert parser.parse_args(["experiment", "--out", "x", "--train", "0:1"]).train == range(0, 1)


def test_a_file_where_a_folder_is_written_is_refused_and_a_folder_where_a_file_is(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    afile = tmp_path / "afile"
    afile.write_text("")
    for argv in (["synth", "--out", str(afile)], ["soup", "--models", "a", "b", "--out", str(afile), "--version", "1"],
                 ["train", "--out", str(afile)], ["experiment", "--out", str(afile)],
                 ["fetch-stone-free", "--out", str(afile)], ["evaluate", "--pictures", str(afile)]):
        err = _refused(argv, argv[argv.index(str(afile)) - 1], capsys)
        assert f"{afile} is a file, not a folder" in err
    with pytest.raises(ModelError, match="is a file, not a folder"):  # the library refuses it too, first
        make_soup(["not", "read"], afile, version="1")
    err = _refused(["evaluate", "--out", str(tmp_path)], "--out", capsys)
    assert f"{tmp_path} is a folder, not a file" in err
    # a folder there already, or not yet there, is what they take
    assert build_parser().parse_args(["synth", "--out", str(tmp_path)]).out == tmp_path
    assert build_parser().parse_args(["evaluate", "--out", str(tmp_path / "figures.json")]).out.name == "figures.json"


def test_train_finds_its_init_model_before_any_phantom(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    _forbid(monkeypatch, "inference.runtime.configure_threads")  # TensorFlow
    _forbid(monkeypatch, "lab.train.build_training_patches")
    assert main(["train", "--out", str(tmp_path / "m"), "--phantoms", "1", "--init", "nosuch"]) == 2
    err = capsys.readouterr().err
    assert "uronode: model 'nosuch' not found" in err and "Traceback" not in err
    assert main(["train", "--out", str(tmp_path / "m"), "--init", str(tmp_path / "missing.keras")]) == 2
    assert f"no model file {tmp_path / 'missing.keras'}" in capsys.readouterr().err
    assert main(["train", "--out", str(tmp_path / "m"), "--phantoms", "0"]) == 2
    assert "uronode train: --phantoms 0 and no --patches: nothing to train on" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_a_file_that_is_not_a_patch_set_is_named(tmp_path: Path) -> None:
    saved = PatchSet(np.zeros((2, 4, 4, 1), np.float16), np.zeros((2, 4, 4), np.uint8), np.array([True, False]),
                     np.array([1, 2]))
    saved.save(tmp_path / "set.npz")
    loaded = PatchSet.load(tmp_path / "set.npz")
    assert len(loaded) == 2 and loaded.centre_stone is None and loaded.has_stone.tolist() == [True, False]
    (tmp_path / "notes.txt").write_text("not a patch set\n")
    (tmp_path / "empty.npz").write_bytes(b"")
    (tmp_path / "broken.npz").write_bytes((tmp_path / "set.npz").read_bytes()[:100])
    np.save(tmp_path / "one.npy", np.zeros(3))
    np.savez(tmp_path / "other.npz", patches=np.zeros(3))
    for name, said in (("notes.txt", "is not a saved patch set"), ("empty.npz", "is not a saved patch set"),
                       ("broken.npz", "is not a saved patch set"), ("one.npy", "holds one array"),
                       ("other.npz", "lacks targets, has_stone, seeds")):
        with pytest.raises(PatchSetError, match=said) as info:
            PatchSet.load(tmp_path / name)
        assert str(tmp_path / name) in str(info.value)


def test_experiment_refuses_an_unknown_variant_or_model_before_the_pool(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    _forbid(monkeypatch, "multiprocessing.get_context")  # the pool that generates the series
    out = tmp_path / "ex"
    assert main(["experiment", "--out", str(out), "--variants", "c1-cls-b8,nosuch", "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert f"uronode experiment: unknown variant 'nosuch' (known: {', '.join(experiment.VARIANTS)})" in err
    assert main(["experiment", "--out", str(out), "--train-seconds", "60,soon"]) == 2
    assert "--train-seconds takes seconds separated by commas, not '60,soon'" in capsys.readouterr().err
    assert main(["experiment", "--out", str(out), "--validate", "nosuch", "--val", "60000:60001"]) == 2
    assert "uronode: model 'nosuch' not found" in capsys.readouterr().err
    assert not out.exists()


def test_choose_checks_the_resize_factors_before_any_image(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    _forbid(monkeypatch, "inference.pipeline.Pipeline")
    for flag, factor in (("--scales", "0"), ("--scales", "-1"), ("--exports", "20")):
        # the images are never read: their folder is not there
        assert main(["choose", "--images", str(tmp_path / "not-there"), flag, "0.5", factor]) == 2
        err = capsys.readouterr().err
        assert f"uronode choose: {flag}: a resize factor of {float(factor)} is not one an export makes" in err
        assert "cannot read" not in err


def test_evaluate_refuses_nothing_to_measure_and_an_empty_side(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    _forbid(monkeypatch, "inference.pipeline.Pipeline")
    assert main(["evaluate", "--series", "0"]) == 2
    assert ("uronode evaluate: nothing to measure (--series 0 and no --real/--images/--lone-slices)"
            in capsys.readouterr().err)
    (tmp_path / "set" / "images").mkdir(parents=True)
    (tmp_path / "set" / "labels").mkdir()
    Image.fromarray(np.full((64, 64), 90, np.uint8)).save(tmp_path / "set" / "images" / "one.png")
    (tmp_path / "set" / "labels" / "one.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    side = next(name for name, images in split_groups(read_image_set(tmp_path / "set")).items() if images)
    empty = "train" if side != "train" else "test"
    assert main(["evaluate", "--series", "0", "--images", str(tmp_path / "set"), "--split", empty]) == 2
    assert f"no image of {tmp_path / 'set'} falls on the {empty} side of the split" in capsys.readouterr().err


def test_compare_names_a_file_that_holds_no_figures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lone = score_slices([np.zeros((8, 8), np.uint8)] * 30)
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"image_results": {"lone_slices": lone}}))
    for name, content in (("findings.json", {"model": {"name": "x"}, "series": [], "rejected": []}),
                          ("card.json", {"name": "x", "metrics": {"note": "not evaluated"}}),
                          ("mstr.json", {"metrics": "none"}), ("oops.json", {"results": {"generated": "oops"}}),
                          ("list.json", [1, 2]), ("empty.json", {})):
        (tmp_path / name).write_text(json.dumps(content))
        assert main(["compare", str(good), str(tmp_path / name)]) == 2, name
        err = capsys.readouterr().err
        assert f"uronode compare: {tmp_path / name} holds no figures" in err, err
    # entries that are not JSON objects are no sets; the sets beside them are compared
    junk = {"results": {"generated": "oops", "real_anatomy": {"model": [1]}},
            "image_results": {"real_images": {"model": "x"}, "lone_slices": lone, "lone_slices_8bit": 3}}
    assert holds_figures(junk) and not holds_figures({"image_results": {"real_images": []}})
    assert {r["set"] for r in compare(junk, {"image_results": {"lone_slices": lone}})} <= {"lone_slices"}
