"""``uronode evaluate --images DIR`` on a folder from outside (probe 11).

By default (``--split auto``) a folder is scored whole unless it holds one of the model's training images,
which the model's card records by their pixels (``lab/trainingset.py``); then only the test side of the
split by examination is scored, as for the project's own set. The output and the JSON say which images
were scored, of how many read, and why. Without ``--series``, ``--images`` (or ``--real``,
``--lone-slices``) runs no generated series. ``--window`` takes a level and width.

Nothing here loads TensorFlow: the model is a stand-in (``_FakePipeline``) that finds nothing, so the
figures are the baselines' and the commands' choices and words are what is tested.
"""

from __future__ import annotations

import argparse
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from inference.runtime import ModelCard, resolve_model_dir
from inference.volume import Volume
from lab import realimages
from lab.cli import ImageSide, _images_on_side
from lab.realimages import (
    DEFAULT_SPLIT,
    LabelledImage,
    read_image_set,
    source_key,
    split_groups,
    split_of,
)
from lab.synth import shared_data_dir
from lab.trainingset import (
    DIGEST_HOW,
    auto_side,
    images_record,
    inherited_record,
    pixel_digest,
    trained_on,
)
from uronode.app.cli import build_parser, main

REAL = shared_data_dir() / "real-stones"
SHIPPED_WITH_RECORD = ("default", "cascade-3.2.0", "cascade-3.5.0", "cascade-3.6.0", "cascade-3.7.0",
                       "cascade-3.7.1", "cascade-3.8.0")


@pytest.fixture(scope="module")
def real_sides() -> dict[str, list[LabelledImage]]:
    return split_groups(read_image_set(REAL))


def _card(model: str) -> dict[str, Any]:
    return ModelCard.read(resolve_model_dir(model)).raw


class _Found:
    def __init__(self, mask: np.ndarray) -> None:
        self.mask = mask


class _FakePipeline:
    """The model's stand-in: the default model's card, and no stone found anywhere."""

    def __init__(self, model: str | None = None, threshold: float | None = None, **_: object) -> None:
        self.name, self.version, self.threshold = "stand-in", "0", threshold or 0.5

    def run(self, volume: Volume) -> _Found:
        return _Found(np.zeros(volume.hu.shape, np.uint8))


@pytest.fixture
def stand_in(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("inference.pipeline.Pipeline", _FakePipeline)


def _copy(images: Sequence[LabelledImage], folder: Path, names: Sequence[str] | None = None) -> Path:
    """The images (and their label files) as a flat folder, under ``names`` (default: their own)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(images):
        stem = names[i] if names else im.path.stem
        shutil.copy(im.path, folder / f"{stem}{im.path.suffix}")
        label = realimages.label_file(im.path)
        if label.exists():
            shutil.copy(label, folder / f"{stem}.txt")
    return folder


def _names(count_test: int, count_other: int) -> list[str]:
    """New names, ``count_test`` of them falling on the test side of the split and ``count_other`` not."""
    test: list[str] = []
    other: list[str] = []
    k = 0
    while len(test) < count_test or len(other) < count_other:
        name = f"renamed-{k:03d}"
        on_test = split_of(source_key(name), DEFAULT_SPLIT) == "test"
        if on_test and len(test) < count_test:
            test.append(name)
        elif not on_test and len(other) < count_other:
            other.append(name)
        k += 1
    return test + other


def _side(folder: Path, *extra: str, model: str = "default") -> ImageSide | None:
    args = build_parser().parse_args(["evaluate", "--images", str(folder), *extra])
    return _images_on_side(args, trained_on(_card(model)))


# --- the record of the training images in the cards -------------------------------------------------------

@pytest.mark.parametrize("model", SHIPPED_WITH_RECORD)
def test_each_card_of_a_model_trained_on_real_stones_records_its_train_side(
        model: str, real_sides: dict[str, list[LabelledImage]]) -> None:
    card = _card(model)
    assert "the train side of the split by examination of real-stones" in card["training"]["data"]
    record = card["training"]["images"]
    train = real_sides["train"]
    assert (record["set"], record["side"], record["count"]) == ("real-stones", "train", len(train)) == (
        "real-stones", "train", 751)
    assert record["digest"] == DIGEST_HOW
    assert record["digests"] == sorted({pixel_digest(im.grey) for im in train})
    assert len(record["digests"]) == 751  # no two training images have the same pixels
    (only,) = trained_on(card)
    assert only.describe() == "751 images of real-stones (train side)"


def test_a_model_trained_on_generated_series_only_records_no_images() -> None:
    card = _card("cascade-2.1.0")
    assert "Generated phantoms only" in card["training"]["data"]
    assert trained_on(card) == []


def test_the_digest_is_of_the_pixels_not_the_name_or_the_file(tmp_path: Path,
                                                             real_sides: dict[str, list[LabelledImage]]) -> None:
    im = real_sides["train"][0]
    folder = _copy([im], tmp_path / "copy", ["another-name"])
    import cv2

    cv2.imwrite(str(folder / "as-png.png"), im.grey)  # the same pixels in another kind of file
    copies = read_image_set(folder)
    assert {pixel_digest(c.grey) for c in copies} == {pixel_digest(im.grey)}
    assert pixel_digest(im.grey) != pixel_digest(im.grey.T.copy())  # the shape counts
    changed = im.grey.copy()
    changed[0, 0] ^= 1
    assert pixel_digest(changed) != pixel_digest(im.grey)
    assert len(pixel_digest(im.grey)) == 16


# --- --split auto -----------------------------------------------------------------------------------------

def test_auto_scores_exactly_the_test_side_of_real_stones(real_sides: dict[str, list[LabelledImage]]) -> None:
    auto = _side(REAL)
    test = _side(REAL, "--split", "test")
    assert auto is not None and test is not None
    assert [im.path for im in auto.images] == [im.path for im in test.images] == [
        im.path for im in real_sides["test"]]
    assert len(auto.images) == 232 and auto.read == test.read == 1177
    assert auto.split == "test"
    assert auto.why.startswith("--split auto: 751 of its images are the model's training images (751 images of "
                               "real-stones (train side))")
    assert auto.training_images == test.training_images == 0
    every = _side(REAL, "--split", "all")
    assert every is not None and len(every.images) == 1177 and every.training_images == 751


def test_auto_scores_the_test_side_of_a_folder_of_renamed_training_images(
        tmp_path: Path, real_sides: dict[str, list[LabelledImage]]) -> None:
    """Renamed copies of training images: recognised by their pixels, so the folder is the model's own set
    and only its test side (by the new names) is scored; the copies it scores are said to be training images."""
    names = _names(2, 4)
    folder = _copy(real_sides["train"][:6], tmp_path / "renamed", names)
    side = _side(folder)
    assert side is not None
    assert side.split == "test" and side.read == 6
    assert sorted(im.path.stem for im in side.images) == sorted(names[:2])
    assert "6 of its images are the model's training images" in side.why
    assert side.training_images == 2


def test_auto_scores_a_folder_of_test_images_alone_whole(tmp_path: Path,
                                                        real_sides: dict[str, list[LabelledImage]]) -> None:
    folder = _copy(real_sides["test"][:5], tmp_path / "tests-alone")
    assert len(split_groups(read_image_set(folder))["test"]) == 5  # their own names: all on the test side
    renamed = _copy(real_sides["test"][:5], tmp_path / "tests-renamed", _names(1, 4))
    for where in (folder, renamed):
        side = _side(where)
        assert side is not None
        assert side.split == "all" and len(side.images) == side.read == 5
        assert side.why.startswith("--split auto: none of its images is one of the model's training images")
        assert side.training_images == 0


def test_auto_scores_the_whole_folder_for_a_model_with_no_training_images(
        tmp_path: Path, real_sides: dict[str, list[LabelledImage]]) -> None:
    folder = _copy(real_sides["train"][:4], tmp_path / "train-copies")
    side = _side(folder, model="cascade-2.1.0")
    assert side is not None and side.split == "all" and len(side.images) == 4
    assert "records no training images (trained on generated data only)" in side.why
    assert auto_side([], []).side == "all"


def test_the_explicit_sides_are_as_before(real_sides: dict[str, list[LabelledImage]]) -> None:
    for split in ("train", "validation", "test"):
        side = _side(REAL, "--split", split)
        assert side is not None and [im.path for im in side.images] == [im.path for im in real_sides[split]]
        assert side.why == f"--split {split}"
    assert build_parser().parse_args(["evaluate"]).split == "auto"
    assert build_parser().parse_args(["choose", "--images", "x"]).split == "validation"
    assert build_parser().parse_args(["train"]).split == "train"


def test_an_empty_side_is_refused_with_a_pointer_to_split_all(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        real_sides: dict[str, list[LabelledImage]]) -> None:
    """Probe 11, finding 14: the refusal did not say how to score the folder."""
    def reached(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded: the empty side was not refused first")

    monkeypatch.setattr("inference.pipeline.Pipeline", reached)
    folder = _copy(real_sides["train"][:3], tmp_path / "off-test", _names(0, 3))
    assert main(["evaluate", "--images", str(folder)]) == 2
    err = capsys.readouterr().err
    assert f"no image of {folder} falls on the test side of the split by examination" in err
    assert "3 of its images are the model's training images" in err and "3 images read" in err
    assert "score the whole folder with --split all" in err
    assert main(["evaluate", "--images", str(folder), "--split", "test"]) == 2
    assert "score the whole folder with --split all" in capsys.readouterr().err


# --- what evaluate prints and records -----------------------------------------------------------------------

def _evaluate(argv: list[str], out: Path, capsys: pytest.CaptureFixture[str]) -> tuple[dict[str, Any], str]:
    assert main(["evaluate", *argv, "--out", str(out)]) == 0
    return json.loads(out.read_text()), capsys.readouterr().out


def test_evaluate_says_and_records_what_it_scored_of_what_it_read(
        tmp_path: Path, stand_in: None, capsys: pytest.CaptureFixture[str],
        real_sides: dict[str, list[LabelledImage]]) -> None:
    """Probe 11, findings 1 and 20: 1 of 10 images was scored and nothing said so, in the output or the JSON."""
    names = _names(1, 3)
    folder = _copy(real_sides["train"][:4], tmp_path / "site", names)
    summary, out = _evaluate(["--images", str(folder)], tmp_path / "own.json", capsys)
    assert "real images (site, the test side of the split by examination; " in out
    assert ("scored 1 of 4 images read (--split auto: 4 of its images are the model's training images (751 images "
            "of real-stones (train side)), so only the test side of the split by examination is held out)") in out
    assert "1 of the scored images are the model's training images" in out
    read = summary["real_images_read"]
    assert read["path"] == str(folder) and read["split_asked"] == "auto" and read["split"] == "test"
    assert (read["images_read"], read["images_scored"], read["training_images_scored"]) == (4, 1, 1)
    assert read["why"].startswith("--split auto: 4 of its images")
    assert isinstance(read["notes"], list)
    assert summary["real_images_set"]["split"] == "test"
    assert summary["image_results"]["real_images"]["model"]["images"] == 1

    outside = _copy(real_sides["test"][:3], tmp_path / "outside")
    summary, out = _evaluate(["--images", str(outside)], tmp_path / "outside.json", capsys)
    assert "real images (outside, the whole folder; " in out
    assert "scored 3 of 3 images read (--split auto: none of its images is one of the model's training images" in out
    assert "training images (their pixels" not in out
    assert summary["real_images_set"]["split"] == "all"
    assert summary["real_images_read"]["images_scored"] == summary["image_results"]["real_images"]["model"][
        "images"] == 3

    summary, out = _evaluate(["--images", str(outside), "--split", "all"], tmp_path / "all.json", capsys)
    assert "scored 3 of 3 images read (--split all)" in out
    assert summary["real_images_read"]["split_asked"] == "all" and summary["real_images_read"]["why"] == "--split all"


def test_evaluate_prints_and_records_the_readers_notes(
        tmp_path: Path, stand_in: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        real_sides: dict[str, list[LabelledImage]]) -> None:
    """The list evaluate passes the reader (``read_image_set(..., notes=)``) is printed under the set's
    description and kept in the JSON (the reader stands in for itself here: its notes are tested below)."""
    real_read = realimages.read_image_set

    def reader(folder: Path, *args: Any, notes: list[str] | None = None, **kwargs: Any) -> list[LabelledImage]:
        assert notes is not None
        notes.append("2 files skipped: not images")
        try:
            return real_read(folder, *args, **{**kwargs, "notes": notes})
        except TypeError:  # before the reader takes notes
            return real_read(folder, *args, **kwargs)

    monkeypatch.setattr("lab.realimages.read_image_set", reader)
    folder = _copy(real_sides["test"][:2], tmp_path / "noted")
    summary, out = _evaluate(["--images", str(folder)], tmp_path / "noted.json", capsys)
    lines = out.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("real images (noted"))
    assert lines[at + 1].startswith("scored 2 of 2 images read")
    assert "note: 2 files skipped: not images" in lines[at + 2:]
    assert summary["real_images_read"]["notes"][0] == "2 files skipped: not images"


def test_the_readers_own_notes_reach_the_output_and_the_json(
        tmp_path: Path, stand_in: None, capsys: pytest.CaptureFixture[str],
        real_sides: dict[str, list[LabelledImage]]) -> None:
    """Needs the reader's ``notes`` (lab.realimages.read_image_set): a label file that matches no image is
    one of the things it notes."""
    folder = _copy(real_sides["test"][:2], tmp_path / "orphan")
    (folder / "ghost.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    summary, out = _evaluate(["--images", str(folder)], tmp_path / "orphan.json", capsys)
    notes = summary["real_images_read"]["notes"]
    assert any("ghost" in note for note in notes), notes
    for note in notes:
        assert f"note: {note}" in out


def test_write_card_records_the_folder_name_not_a_path(
        tmp_path: Path, stand_in: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        real_sides: dict[str, list[LabelledImage]]) -> None:
    model = tmp_path / "model"
    shutil.copytree(resolve_model_dir("default"), model, ignore=shutil.ignore_patterns("*.keras"))

    class WithCard(_FakePipeline):
        def __init__(self, name: str | None = None, threshold: float | None = None, **_: object) -> None:
            super().__init__(name, threshold)
            self.model = argparse.Namespace(card=ModelCard.read(model), folder=model)

    monkeypatch.setattr("inference.pipeline.Pipeline", WithCard)
    folder = _copy(real_sides["test"][:2], tmp_path / "carded")
    assert main(["evaluate", "--model", str(model), "--images", str(folder), "--write-card"]) == 0
    card = json.loads((model / "card.json").read_text())
    assert card["metrics"]["real_images_read"]["path"] == "carded"
    assert card["training"]["images"] == _card("default")["training"]["images"]  # the record stays


# --- generated series only when asked for, or when nothing else is (finding 19) ---------------------------

class _Generated(Exception):
    pass


class _Inserted(Exception):
    pass


class _Lone(Exception):
    pass


@pytest.fixture
def sentinels(monkeypatch: pytest.MonkeyPatch, stand_in: None) -> None:
    def raiser(kind: type[Exception]) -> Any:
        def reached(*args: object, **kwargs: object) -> None:
            raise kind

        return reached

    monkeypatch.setattr("lab.synth.generate_phantom", raiser(_Generated))
    monkeypatch.setattr("lab.synth.real_anatomy_phantom", raiser(_Inserted))
    monkeypatch.setattr("lab.cli._lone_ct_slices", raiser(_Lone))


def test_images_real_or_lone_slices_alone_run_no_generated_series(
        tmp_path: Path, sentinels: None, capsys: pytest.CaptureFixture[str],
        real_sides: dict[str, list[LabelledImage]]) -> None:
    folder = _copy(real_sides["test"][:2], tmp_path / "few")
    summary, out = _evaluate(["--images", str(folder)], tmp_path / "few.json", capsys)
    assert summary["results"] == {} and summary["generated_set"] is None
    assert "generated" not in out
    with pytest.raises(_Inserted):
        main(["evaluate", "--real", "1"])
    with pytest.raises(_Lone):
        main(["evaluate", "--lone-slices"])
    with pytest.raises(_Lone):
        main(["evaluate", "--lone-slices", "--images", str(folder)])


def test_series_given_or_nothing_else_given_runs_them(tmp_path: Path, sentinels: None) -> None:
    assert build_parser().parse_args(["evaluate"]).series == 40
    assert build_parser().parse_args(["evaluate", "--images", "x"]).series_given is False
    assert build_parser().parse_args(["evaluate", "--series", "40"]).series_given is True
    with pytest.raises(_Generated):
        main(["evaluate"])
    with pytest.raises(_Generated):
        main(["evaluate", "--series", "3", "--real", "1"])
    with pytest.raises(_Generated):
        main(["evaluate", "--series", "2", "--images", str(REAL)])


def test_the_reproduce_commands_of_the_docs_give_their_series() -> None:
    """Every `uronode evaluate` line of the docs that measures generated series says how many."""
    docs = (Path(__file__).parents[2] / "docs" / "model.md").read_text()
    text = " ".join(docs.split())
    for marker in ("--series 30 --real 8 --images ../shared/data/real-stones --split test --lone-slices",
                   "uronode evaluate --model default --series 30 --real 8 --write-card"):
        assert marker in text


# --- --window LEVEL/WIDTH ---------------------------------------------------------------------------------

def test_window_takes_a_level_and_width_through_the_readers_parser(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def parse(text: str) -> str | tuple[float, float]:
        if text == "40/400":
            return (40.0, 400.0)
        raise ValueError(f"window {text!r}: auto, assumed or LEVEL/WIDTH")

    monkeypatch.setattr(realimages, "parse_window", parse, raising=False)
    parser = build_parser()
    assert parser.parse_args(["evaluate", "--window", "40/400"]).window == (40.0, 400.0)
    assert parser.parse_args(["evaluate"]).window == "auto"
    assert parser.parse_args(["evaluate", "--window", "assumed"]).window == "assumed"
    with pytest.raises(SystemExit) as info:
        parser.parse_args(["evaluate", "--window", "wide"])
    assert info.value.code == 2
    assert "argument --window: window 'wide': auto, assumed or LEVEL/WIDTH" in capsys.readouterr().err


def test_the_window_given_reaches_every_image_and_the_json(
        tmp_path: Path, stand_in: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        real_sides: dict[str, list[LabelledImage]]) -> None:
    monkeypatch.setattr(realimages, "parse_window", lambda text: (1024.0, 4096.0), raising=False)
    seen = []

    def as_hu(image: LabelledImage, window: Any = "auto") -> np.ndarray:
        seen.append(window)
        return realimages.grey_to_hu(image.grey, window)

    monkeypatch.setattr(LabelledImage, "as_hu", as_hu)
    folder = _copy(real_sides["test"][:2], tmp_path / "windowed")
    summary, _ = _evaluate(["--images", str(folder), "--window", "1024/4096"], tmp_path / "w.json", capsys)
    assert seen and set(seen) == {(1024.0, 4096.0)}
    assert summary["real_images_set"]["window"] == "1024/4096"


def test_window_level_width_with_the_readers_own_parser(capsys: pytest.CaptureFixture[str]) -> None:
    """Needs ``lab.realimages.parse_window``."""
    parser = build_parser()
    assert parser.parse_args(["evaluate", "--window", "40/400"]).window == (40.0, 400.0)
    assert parser.parse_args(["evaluate", "--window", "1024/4096"]).window == (1024.0, 4096.0)
    with pytest.raises(SystemExit):
        parser.parse_args(["evaluate", "--window", "40-400"])
    assert "argument --window" in capsys.readouterr().err


# --- training writes the record ---------------------------------------------------------------------------

def test_train_images_records_the_images_it_trains_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, real_sides: dict[str, list[LabelledImage]]) -> None:
    got: dict[str, Any] = {}

    def train_mixed(data: object, out: Path, **kwargs: Any) -> tuple[None, dict[str, Any]]:
        got.update(kwargs)
        return None, {"architecture": {"parameters": 1}}

    monkeypatch.setattr("lab.train.train_mixed", train_mixed)
    folder = _copy(real_sides["test"][:3], tmp_path / "mine")
    assert main(["train", "--images", str(folder), "--split", "all", "--phantoms", "0",
                 "--out", str(tmp_path / "m")]) == 0
    record = got["training_images"]
    assert record == images_record(read_image_set(folder), "mine", "all")
    assert record["count"] == 3 and len(record["digests"]) == 3


def test_a_fine_tuned_model_keeps_its_bases_training_images() -> None:
    base = _card("default")
    own = {"set": "mine", "side": "train", "count": 2, "digest": DIGEST_HOW, "digests": ["a" * 16, "b" * 16]}
    tuned = inherited_record(base, own)
    assert tuned is not None
    sets = trained_on({"training": {"images": tuned}})
    assert [(t.set, t.side, t.count) for t in sets] == [("mine", "train", 2), ("real-stones", "train", 751)]
    assert sets[1].via == f"the base model uronode-stone-cascade {base['version']}"
    assert sets[1].digests == frozenset(base["training"]["images"]["digests"])
    alone = inherited_record(base)  # fine-tuned on no image of its own (train --data, or --init)
    assert alone is not None
    assert [(t.set, t.count, t.via) for t in trained_on({"training": {"images": alone}})] == [
        ("real-stones", 751, f"the base model uronode-stone-cascade {base['version']}")]
    assert inherited_record(_card("cascade-2.1.0")) is None
    assert inherited_record(_card("cascade-2.1.0"), own) == own
    # a soup's card lists its runs' trainings: their images are its own
    soup = {"training": {"ingredients": [{"folder": "cascade-3.6.0", "training": base["training"]}]}}
    assert [t.via for t in trained_on(soup)] == ["the soup's run cascade-3.6.0"]


def test_train_mixed_writes_the_record_and_keeps_the_starting_models(tmp_path: Path) -> None:
    from inference.candidates import DEFAULT_RULE
    from inference.network import InputSpec
    from lab.train import train_mixed
    from tests.lab.test_hard_examples import _tiny_set

    spec = InputSpec(context=1, wide=(), patch=32)
    first = {"set": "one", "side": "train", "count": 1, "digest": DIGEST_HOW, "digests": ["1" * 16]}
    _, card = train_mixed(_tiny_set(spec), tmp_path / "start", spec=spec, rule=DEFAULT_RULE, base=4, epochs=1,
                          batch=16, progress=False, training_images=first)
    assert json.loads((tmp_path / "start" / "card.json").read_text())["training"]["images"] == first
    second = {"set": "two", "side": "all", "count": 1, "digest": DIGEST_HOW, "digests": ["2" * 16]}
    _, card = train_mixed(_tiny_set(spec), tmp_path / "tuned", spec=spec, rule=DEFAULT_RULE, epochs=1, batch=16,
                          progress=False, initial_model=tmp_path / "start" / "model.keras", training_images=second)
    assert [(t.set, t.via) for t in trained_on(card)] == [("two", ""), ("one", f"the base model {card['name']} 3.0.0")]
