"""Which box classes of a YOLO image set are stones (lab.realimages.stone_classes, read_boxes' classes)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import astuple
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from lab.realimages import (
    ImageSetError,
    describe_set,
    image_files,
    is_stone_class,
    read_boxes,
    read_image_set,
    split_groups,
    stone_classes,
)
from lab.synth import shared_data_dir
from uronode.app.cli import build_parser

TWO_KINDS = "0 0.5 0.5 0.8 0.8\n1 0.25 0.25 0.1 0.1\n"  # a large box (a kidney, say) and a small one


@pytest.mark.parametrize("name", ["kidney-stones", "Tas_Var", "Taş Var", "TasVar", "Calculus", "urolithiasis",
                                  "nephrolithiasis", "KidneyStone", "Ureteral calculi", "stone", "obstructing stone"])
def test_names_that_say_stone(name: str) -> None:
    assert is_stone_class(name)


@pytest.mark.parametrize("name", ["Kidney", "cyst", "tumor", "no_stone", "NonStone", "nostone", "stone-free",
                                  "Normal", "Tas_Yok", "0", "object", "phlebolith", "Phleboliths",
                                  "appendicolith", "gallstone", "cholelithiasis"])
def test_names_that_do_not(name: str) -> None:
    assert is_stone_class(name) is False


@pytest.mark.parametrize("name", ["non-obstructing stone", "stone without hydronephrosis", "normal or stone"])
def test_names_that_cannot_say(name: str) -> None:
    assert is_stone_class(name) is None


def test_only_the_stone_classes_boxes_are_read() -> None:
    assert len(read_boxes(TWO_KINDS, 100, 100)) == 2  # every class
    (box,) = read_boxes(TWO_KINDS, 100, 100, classes=frozenset({1}))
    assert astuple(box) == pytest.approx((20.0, 20.0, 30.0, 30.0))
    assert read_boxes(TWO_KINDS, 100, 100, classes=frozenset({2})) == ()
    for kind in ("0.5", "nan", "inf", "-1"):
        with pytest.raises(ImageSetError, match="lab.txt:1: the class is not a whole number"):
            read_boxes(f"{kind} 0.5 0.5 0.1 0.1", 10, 10, where="lab.txt")


def _image_set(root: Path, yaml_text: str | None) -> Path:
    (root / "valid" / "images").mkdir(parents=True)
    (root / "valid" / "labels").mkdir()
    cv2.imwrite(str(root / "valid" / "images" / "a.png"), np.full((100, 100), 90, np.uint8))
    (root / "valid" / "labels" / "a.txt").write_text(TWO_KINDS)
    if yaml_text is not None:
        (root / "data.yaml").write_text(yaml_text)
    return root


@pytest.mark.parametrize("yaml_text", ["names:\n  0: kidney\n  1: kidney_stone\n",
                                       "nc: 2\nnames: ['Kidney', 'Stone']\n",
                                       "names:\n- normal\n- calculus\n"])
def test_a_data_yaml_that_names_a_stone_class_keeps_its_boxes_only(tmp_path: Path, yaml_text: str) -> None:
    root = _image_set(tmp_path, yaml_text)
    classes = stone_classes(root)
    assert classes.classes == frozenset({1}) and "data.yaml" in classes.how and str(tmp_path) not in classes.how
    (image,) = read_image_set(root)
    assert [astuple(b) for b in image.boxes] == [pytest.approx((20.0, 20.0, 30.0, 30.0))]
    # the folders below the data.yaml read it too, down to a split's images folder; classes given override it
    assert [len(im.boxes) for im in read_image_set(root / "valid")] == [1]
    assert [len(im.boxes) for im in read_image_set(root / "valid" / "images")] == [1]
    assert [len(im.boxes) for im in read_image_set(root, classes=[0, 1])] == [2]
    assert describe_set(root, read_image_set(root)).endswith("; 1 of 1 images with a label file")


def test_classes_given_must_be_the_sets_own(tmp_path: Path) -> None:
    root = _image_set(tmp_path, "names: ['kidney', 'stone']\n")
    with pytest.raises(ImageSetError, match=r"classes \[2\] given as stones, but \S*data.yaml names only \[0, 1\]"):
        read_image_set(root, classes=[2])
    with pytest.raises(ImageSetError, match="0 or more"):
        stone_classes(root, [-1])


def test_a_class_filter_that_keeps_no_box_is_an_error(tmp_path: Path) -> None:
    root = _image_set(tmp_path, None)  # no data.yaml: any class may be given
    with pytest.raises(ImageSetError, match="hold 2 boxes and none of the classes counted as stones"):
        read_image_set(root, classes=[5])


def test_a_name_that_cannot_say_is_an_error_not_a_guess(tmp_path: Path) -> None:
    root = _image_set(tmp_path, "names: ['kidney', 'non-obstructing stone']\n")
    with pytest.raises(ImageSetError, match="'non-obstructing stone' is a stone its name does not say"):
        read_image_set(root)
    assert [len(im.boxes) for im in read_image_set(root, classes=[1])] == [1]


def test_without_a_data_yaml_or_with_one_class_every_box_is_a_stone(tmp_path: Path) -> None:
    assert [len(im.boxes) for im in read_image_set(_image_set(tmp_path / "a", None))] == [2]
    assert stone_classes(tmp_path / "a").classes is None
    assert [len(im.boxes) for im in read_image_set(_image_set(tmp_path / "b", "names: ['object']\n"))] == [2]


def test_several_classes_none_a_stone_is_an_error_that_says_what_to_do(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _image_set(tmp_path, "names: ['kidney', 'cyst', 'tumor']\n")
    with pytest.raises(ImageSetError, match="none of them as a stone; say which are with --stone-classes"):
        read_image_set(root)
    args = build_parser().parse_args(["evaluate", "--images", str(root), "--split", "all", "--series", "0"])
    assert args.func(args) == 2
    assert "--stone-classes" in capsys.readouterr().err
    assert [len(im.boxes) for im in read_image_set(root, classes=[1])] == [1]
    (tmp_path / "data.yaml").write_text("names: [kidney\n")
    with pytest.raises(ImageSetError, match="not YAML"):
        stone_classes(root)


def test_the_real_stones_set_counts_both_its_named_classes() -> None:
    classes = stone_classes(shared_data_dir() / "real-stones")
    assert classes.classes == frozenset({0, 1})  # 'kidney-stones' and 'Tas_Var' ("stone present")


def test_evaluate_counts_only_the_stone_class_of_another_sites_export(tmp_path: Path) -> None:
    """Three real validation images laid out as Ultralytics writes a set, each stone's box as class 1 of
    ['kidney', 'kidney stone'] and a large kidney box as class 0: the figures count the stones only."""
    real = shared_data_dir() / "real-stones"
    images = [im for im in split_groups(read_image_set(real))["validation"] if im.boxes][:3]
    pairs = dict(image_files(real))
    root = tmp_path / "site"
    (root / "images" / "val").mkdir(parents=True)
    (root / "labels" / "val").mkdir(parents=True)
    for im in images:
        shutil.copy(im.path, root / "images" / "val" / im.path.name)
        boxes = [line.split(maxsplit=1)[1] for line in pairs[im.path].read_text().splitlines() if line.strip()]
        (root / "labels" / "val" / f"{im.path.stem}.txt").write_text(
            "0 0.5 0.5 0.6 0.6\n" + "".join(f"1 {b}\n" for b in boxes))
    (root / "data.yaml").write_text("path: .\ntrain: images/train\nval: images/val\nnames:\n  0: kidney\n  1: kidney stone\n")
    stones = sum(len(im.boxes) for im in images)

    def evaluate(*extra: str) -> tuple[dict[str, Any], str]:
        out = tmp_path / f"figures{len(extra)}.json"
        done = subprocess.run([sys.executable, "-m", "uronode", "evaluate", "--images", str(root), "--split", "all",
                               "--series", "0", "--out", str(out), *extra], capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        return json.loads(out.read_text()), done.stdout

    figures, stdout = evaluate()
    assert figures["image_results"]["real_images"]["model"]["stones"] == stones
    assert "classes 1 'kidney stone' (named so in site/data.yaml); 3 of 3 images with a label file" in stdout
    assert figures["real_images_set"]["stone_classes"] == "classes 1 'kidney stone' (named so in site/data.yaml)"
    every, _ = evaluate("--stone-classes", "0", "1")
    assert every["image_results"]["real_images"]["model"]["stones"] == stones + 3  # the kidneys counted too
