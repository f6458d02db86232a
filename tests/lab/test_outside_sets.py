"""Image folders from outside the project, as other sites and tools write them (lab.realimages).

Each test is a way another site's export was misread or refused as a whole: an 8-bit conversion of the
whole CT range, signed HU written unsigned, class names in obj.names or classes.txt or in another
language, labels that were not found, other file kinds, one odd file in a set, and what the reader left
out or assumed without saying so.
"""

from __future__ import annotations

import functools
import shutil
from collections.abc import Callable
from dataclasses import astuple
from pathlib import Path

import cv2
import numpy as np
import pytest
from pydicom.uid import CTImageStorage, SecondaryCaptureImageStorage

from lab.realimages import (
    ASSUMED_PIXEL_MM,
    ImageSetError,
    estimate_window,
    grey_to_hu,
    hu_to_grey,
    image_hu,
    is_stone_class,
    looks_inverted,
    parse_window,
    read_image_set,
    stone_classes,
)
from lab.synth import read_nifti, shared_data_dir
from tests.factory import ct_slice, uid

STONE_HU = 1200.0


@functools.lru_cache(maxsize=1)
def _axial_slice() -> tuple[np.ndarray, np.ndarray]:
    """(HU, stone mask): an axial slice of the example CT, three times its size (1 mm pixels), with a
    1200 HU stone of 9 pixels across put into its soft tissue."""
    ct = read_nifti(shared_data_dir() / "example_ct.nii.gz").astype(np.float32)
    hu = cv2.resize(ct[:, :, 50].T[::-1], None, fx=3, fy=3, interpolation=cv2.INTER_LINEAR)
    rows, columns = np.mgrid[: hu.shape[0], : hu.shape[1]]
    soft = (hu > 20) & (hu < 60)
    r, c = np.argwhere(soft)[np.argmin(np.abs(np.argwhere(soft) - np.array(hu.shape) / 2).sum(axis=1))]
    stone = (rows - r) ** 2 + (columns - c) ** 2 <= 4**2
    hu = np.where(stone, STONE_HU, hu).astype(np.float32)
    return hu, stone


def _yolo(mask: np.ndarray) -> str:
    """The YOLO line of the box round ``mask``'s pixels."""
    rows, columns = np.nonzero(mask)
    h, w = mask.shape
    x0, x1, y0, y1 = columns.min(), columns.max() + 1, rows.min(), rows.max() + 1
    return f"0 {(x0 + x1) / 2 / w:.6f} {(y0 + y1) / 2 / h:.6f} {(x1 - x0) / w:.6f} {(y1 - y0) / h:.6f}\n"


def _write(root: Path, name: str, write: np.ndarray | Callable[[Path], object], label: str | None) -> Path:
    """``root/images/name`` written by ``write(path)`` (or cv2.imwrite of an array) and its label file."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(exist_ok=True)
    path = root / "images" / name
    if isinstance(write, np.ndarray):
        assert cv2.imwrite(str(path), write)
    else:
        write(path)
    if label is not None:
        (root / "labels" / (Path(name).stem + ".txt")).write_text(label)
    return path


def _real_images(count: int) -> list[tuple[Path, str]]:
    """(image, label text) of the first ``count`` images of the real set's valid/ folder with a stone."""
    real = shared_data_dir() / "real-stones" / "valid"
    out = []
    for image in sorted((real / "images").glob("*.jpg")):
        text = (real / "labels" / f"{image.stem}.txt").read_text()
        if text.strip():
            out.append((image, text))
        if len(out) == count:
            return out
    raise AssertionError("the real set has too few images with a stone")


# 2: the whole range of CT numbers in 8 bits, and a window stated

@pytest.mark.parametrize("mapping", ["full-range", "min-max"])
def test_an_8_bit_image_of_the_whole_ct_range_reads_its_stones_as_dense(tmp_path: Path, mapping: str) -> None:
    """-1024..3071 HU (or the image's own minimum..maximum) as grey 0..255, as DICOM-to-PNG conversions
    write it: fat and soft tissue lie 9 grey levels apart, and through the assumed 400/40 window the
    stone read as about 80 HU and soft tissue 90 HU low."""
    hu, stone = _axial_slice()
    low, high = (-1024.0, 3071.0) if mapping == "full-range" else (float(hu.min()), float(hu.max()))
    grey = np.round((np.clip(hu, low, high) - low) / (high - low) * 255).astype(np.uint8)
    _write(tmp_path, "a.png", grey, _yolo(stone))
    (image,) = read_image_set(tmp_path)
    assert estimate_window(image.grey).how == "air and soft tissue"
    read = image.as_hu("auto")
    assert read[stone].max() > 800.0
    soft = (hu > 0) & (hu < 80) & ~stone
    assert abs(float(np.median(read[soft] - hu[soft]))) < 60.0
    assert (read[(hu < -900)] < -800).mean() > 0.9  # air is air


@pytest.mark.parametrize("window", [(40, 400), (50, 350), (60, 600), (300, 1500)])
@pytest.mark.parametrize("quality", [None, 90])
def test_the_same_slice_in_a_window_that_clips_air_keeps_the_other_estimates(
        window: tuple[int, int], quality: int | None) -> None:
    """Air piled at black says nothing of the window: a soft-tissue window stays assumed, also as a JPEG."""
    hu, _ = _axial_slice()
    grey = hu_to_grey(hu, window)
    if quality is not None:
        decoded = cv2.imdecode(cv2.imencode(".jpg", grey, [cv2.IMWRITE_JPEG_QUALITY, quality])[1], cv2.IMREAD_GRAYSCALE)
        assert decoded is not None
        grey = decoded
    how = estimate_window(grey).how
    assert how != "air and soft tissue"
    if window[1] <= 600:
        assert how == "assumed"


def test_a_window_stated_for_the_set_is_read_exactly(tmp_path: Path) -> None:
    hu, stone = _axial_slice()
    grey = hu_to_grey(hu, (1024.0, 4096.0))  # -1024..3072 HU
    _write(tmp_path, "a.png", grey, _yolo(stone))
    (image,) = read_image_set(tmp_path)
    exact = (-1024.0 + grey.astype(np.float32) * (4096.0 / 255.0)).astype(np.float32)
    np.testing.assert_allclose(image.as_hu((1024.0, 4096.0)), exact, atol=1e-3)
    np.testing.assert_allclose(image_hu(grey, parse_window("1024/4096")), exact, atol=1e-3)
    np.testing.assert_array_equal(image_hu(grey, (40.0, 400.0)), image_hu(grey, "assumed"))
    np.testing.assert_array_equal(image_hu(grey, (-600.0, 1500.0)), grey_to_hu(grey, (-600.0, 1500.0)))
    with pytest.raises(ValueError, match="above 0"):
        image_hu(grey, (40.0, 0.0))


@pytest.mark.parametrize(("text", "window"), [("auto", "auto"), ("assumed", "assumed"), (" Auto ", "auto"),
                                              ("40/400", (40.0, 400.0)), ("1024/4096", (1024.0, 4096.0)),
                                              ("-600 / 1500", (-600.0, 1500.0)), ("35.5/350", (35.5, 350.0))])
def test_parse_window_reads_a_name_or_level_and_width(text: str, window: object) -> None:
    assert parse_window(text) == window


@pytest.mark.parametrize("text", ["bone", "40", "40/", "/400", "40/0", "40/-400", "40/400/2", "nan/400", ""])
def test_parse_window_refuses_anything_else_clearly(text: str) -> None:
    with pytest.raises(ValueError, match="window"):
        parse_window(text)


# 3: signed HU written into an unsigned 16-bit file

def test_signed_hu_written_as_unsigned_16_bits_are_read_as_the_hu_they_are(tmp_path: Path) -> None:
    """``cv2.imwrite(p, hu.astype(np.uint16))`` of negative HU: air near 64,500, the body under a few
    thousand. Read as a display image, the stone was -151 HU."""
    hu, stone = _axial_slice()
    stored = np.round(hu).astype(np.int16)
    _write(tmp_path, "a.png", stored.view(np.uint16), _yolo(stone))
    (image,) = read_image_set(tmp_path)
    assert image.hu is not None
    np.testing.assert_array_equal(image.hu, stored.astype(np.float32))
    assert image.as_hu()[stone].min() == STONE_HU


# 4: class names in obj.names (darknet, CVAT) or classes.txt (LabelImg)

def _kidney_and_stones(text: str) -> str:
    """A label file's stones as class 1, with a large kidney box as class 0 before them."""
    return "0 0.5 0.5 0.6 0.6\n" + "".join(f"1 {line.split(maxsplit=1)[1]}\n" for line in text.splitlines() if line.strip())


@pytest.mark.parametrize("layout", ["cvat", "labelimg"])
def test_class_names_in_obj_names_or_classes_txt_say_which_boxes_are_stones(tmp_path: Path, layout: str) -> None:
    root = tmp_path / "site"
    images = _real_images(2)
    if layout == "cvat":  # CVAT's YOLO 1.1: obj.names, obj.data and obj_train_data/ with images and labels
        (root / "obj_train_data").mkdir(parents=True)
        (root / "obj.names").write_text("kidney\nstone\n")
        (root / "obj.data").write_text("classes = 2\nnames = data/obj.names\ntrain = data/train.txt\n")
        (root / "train.txt").write_text("".join(f"data/obj_train_data/{im.name}\n" for im, _ in images))
        for image, text in images:
            shutil.copy(image, root / "obj_train_data" / image.name)
            (root / "obj_train_data" / f"{image.stem}.txt").write_text(_kidney_and_stones(text))
    else:  # LabelImg: classes.txt saved with the labels
        (root / "images").mkdir(parents=True)
        (root / "labels").mkdir()
        (root / "labels" / "classes.txt").write_text("Böbrek\r\nTaş\r\n")
        for image, text in images:
            shutil.copy(image, root / "images" / image.name)
            (root / "labels" / f"{image.stem}.txt").write_text(_kidney_and_stones(text))
    stones = sum(len([line for line in text.splitlines() if line.strip()]) for _, text in images)
    classes = stone_classes(root)
    assert classes.classes == frozenset({1})
    assert ("obj.names" if layout == "cvat" else "classes.txt") in classes.how
    notes: list[str] = []
    read = read_image_set(root, notes=notes)
    assert sum(len(im.boxes) for im in read) == stones
    assert not any("match no image" in note for note in notes)  # classes.txt is not a label file
    # a data.yaml, where there is one, still says
    (root / "data.yaml").write_text("names: ['stone', 'kidney']\n")
    assert stone_classes(root).classes == frozenset({0})


# 5: labels not found

def test_a_set_in_which_no_image_has_a_label_file_is_refused_with_where_they_were_looked_for(tmp_path: Path) -> None:
    """Every image was scored as stone-free (2.6 false stones an image, specificity 0) where the labels
    lay in a folder the reader did not look in."""
    hu, _ = _axial_slice()
    for name in ("a.png", "b.png"):
        _write(tmp_path / "set", name, hu_to_grey(hu, (40.0, 400.0)), None)
    (tmp_path / "set" / "labels").rmdir()
    (tmp_path / "set" / "voc").mkdir()
    (tmp_path / "set" / "voc" / "a.xml").write_text("<annotation/>")
    with pytest.raises(ImageSetError, match="none of the 2 images") as info:
        read_image_set(tmp_path / "set")
    message = str(info.value)
    assert str(tmp_path / "set" / "labels" / "a.txt") in message  # where it looked
    assert "a stone-free image takes an empty NAME.txt" in message
    assert "Pascal VOC" in message
    # one empty label file is enough: the set is then read, its other image stone-free
    (tmp_path / "set" / "labels").mkdir()
    (tmp_path / "set" / "labels" / "a.txt").write_text("")
    assert [im.has_label_file for im in read_image_set(tmp_path / "set")] == [True, False]


@pytest.mark.parametrize("layout", ["upper-case-beside", "annotations-folder", "Annotations-upper-TXT"])
def test_label_files_in_upper_case_or_in_an_annotations_folder_are_found(tmp_path: Path, layout: str) -> None:
    images = _real_images(2)
    for image, text in images:
        if layout == "upper-case-beside":
            shutil.copy(image, tmp_path / image.name)
            (tmp_path / f"{image.stem}.TXT").write_text(text)
        else:
            folder = "annotations" if layout == "annotations-folder" else "Annotations"
            (tmp_path / "images").mkdir(exist_ok=True)
            (tmp_path / folder).mkdir(exist_ok=True)
            shutil.copy(image, tmp_path / "images" / image.name)
            suffix = ".txt" if layout == "annotations-folder" else ".TXT"
            (tmp_path / folder / f"{image.stem}{suffix}").write_text(text)
    read = read_image_set(tmp_path)
    assert all(im.has_label_file for im in read)
    assert [len(im.boxes) for im in read] == [len([x for x in t.splitlines() if x.strip()]) for _, t in images]


# 6 and 13: class names

@pytest.mark.parametrize("name", ["StoneFree", "Stonefree", "stone free", "stonenegative", "StoneAbsent", "tas_yok",
                                  "Taş Yok", "TasYok", "stones_free", "Steinfrei", "kein Stein", "sin cálculo",
                                  "sans calcul", "no stone", "gallstone", "Gallenstein", "safra taşı",
                                  "colelitiasis", "cálculo biliar", "metastasis", "Tas_Yok"])
def test_names_of_no_stone_or_of_another_organs_stone_are_not_stones(name: str) -> None:
    assert is_stone_class(name) is False


@pytest.mark.parametrize("name", ["taş", "Tas", "TAŞ", "böbrek taşı", "Böbrek Taşı", "taşlar", "Stein", "Nierenstein",
                                  "Harnleiterstein", "litiasis", "Urolitiasis", "nefrolitiasis", "litíase", "cálculo",
                                  "Calculo renal", "calcolo", "calcul", "calcul rénal", "Tas_Var"])
def test_stone_names_in_other_languages_are_stones(name: str) -> None:
    assert is_stone_class(name) is True


def test_a_turkish_set_names_its_stone_class(tmp_path: Path) -> None:
    """Refused before: 'tas' and 'bobrek', and none of them a stone."""
    (image, text), = _real_images(1)
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    shutil.copy(image, tmp_path / "images" / image.name)
    (tmp_path / "labels" / f"{image.stem}.txt").write_text(_kidney_and_stones(text))
    (tmp_path / "data.yaml").write_text("names: ['böbrek', 'taş']\n", encoding="utf-8")
    assert stone_classes(tmp_path).classes == frozenset({1})


# 7: other file kinds

def _dicom(path: Path, hu: np.ndarray, *, modality: str = "CT", sop_class: str = CTImageStorage) -> None:
    ds = ct_slice(uid("study", path), uid("series", path), 0, spacing=0.8, modality=modality, sop_class=sop_class)
    ds.Rows, ds.Columns = hu.shape
    ds.PixelData = np.clip(np.round(hu) + 1024, 0, 4095).astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)


def test_webp_images_and_dicom_files_without_a_dicom_suffix_are_read(tmp_path: Path) -> None:
    """PACS and CD exports name DICOM files ``IM000001``, ``1.2.840...`` or ``*.IMA``; they and a .webp
    were left out of the set without a word (``uronode predict`` reads such DICOM files)."""
    hu, stone = _axial_slice()
    small = cv2.resize(hu, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)
    small_stone = cv2.resize(stone.astype(np.uint8), None, fx=0.5, fy=0.5, interpolation=cv2.INTER_NEAREST) > 0
    label = _yolo(small_stone)
    _write(tmp_path, "a.webp", lambda p: cv2.imwrite(str(p), hu_to_grey(small, (40.0, 400.0)),
                                                     [cv2.IMWRITE_WEBP_QUALITY, 101]), label)
    for name, label_name in (("IM000001", "IM000001.txt"), ("b.IMA", "b.txt"), ("1.2.840.1", "1.2.840.1.txt")):
        _write(tmp_path, name, lambda p: _dicom(p, small), None)
        (tmp_path / "labels" / label_name).write_text(label)
    (tmp_path / "images" / "notes.bin").write_bytes(b"\x00" * 200)  # neither image nor DICOM
    read = {im.path.name: im for im in read_image_set(tmp_path)}
    assert sorted(read) == ["1.2.840.1", "IM000001", "a.webp", "b.IMA"]
    for name in ("IM000001", "b.IMA", "1.2.840.1"):
        im = read[name]
        assert im.hu is not None and im.pixel_mm == pytest.approx(0.8) and len(im.boxes) == 1
        np.testing.assert_array_equal(im.hu, np.clip(np.round(small), -1024, 3071).astype(np.float32))
    np.testing.assert_array_equal(read["a.webp"].grey, hu_to_grey(small, (40.0, 400.0)))  # lossless
    assert len(read["a.webp"].boxes) == 1


# 11: one odd file or line

def test_an_unreadable_file_or_a_screenshot_is_left_out_and_said_not_the_whole_set_refused(tmp_path: Path) -> None:
    hu, stone = _axial_slice()
    grey = hu_to_grey(hu, (40.0, 400.0))
    _write(tmp_path, "good.png", grey, _yolo(stone))
    _write(tmp_path, "empty.jpg", lambda p: p.write_bytes(b""), "")
    _write(tmp_path, "broken.png", lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64), "")
    _write(tmp_path, "screenshot.dcm", lambda p: _dicom(p, hu[:64, :64], modality="OT",
                                                         sop_class=SecondaryCaptureImageStorage), "")
    notes: list[str] = []
    read = read_image_set(tmp_path, notes=notes)
    assert [im.name for im in read] == ["good"]
    (line,) = [note for note in notes if "cannot be read" in note]
    assert line.startswith("left out 3 of 4 image files that cannot be read: ")
    assert "images/broken.png" in line and "images/empty.jpg (an empty file)" in line
    assert "images/screenshot.dcm" in line and "Modality OT" in line
    # nothing left to read: refused, with the reasons
    (tmp_path / "images" / "good.png").unlink()
    with pytest.raises(ImageSetError, match="no image of .* can be read: .*empty file"):
        read_image_set(tmp_path)


def test_a_box_of_no_width_or_height_is_left_out_and_said(tmp_path: Path) -> None:
    hu, stone = _axial_slice()
    _write(tmp_path, "a.png", hu_to_grey(hu, (40.0, 400.0)), _yolo(stone) + "0 0.5 0.5 0.0 0.01\n0 0.4 0.4 0.02 0\n")
    notes: list[str] = []
    (image,) = read_image_set(tmp_path, notes=notes)
    assert len(image.boxes) == 1
    assert "left out 2 box lines of no width or height: labels/a.txt:2, labels/a.txt:3" in notes
    # a box outside the image is still refused: its line is wrong, not empty
    (tmp_path / "labels" / "a.txt").write_text("0 1.5 0.5 0.1 0.1\n")
    with pytest.raises(ImageSetError, match="box outside the image"):
        read_image_set(tmp_path)


def test_a_floating_point_tiff_of_hu_is_read_as_hu(tmp_path: Path) -> None:
    hu, stone = _axial_slice()
    _write(tmp_path, "a.tif", hu.astype(np.float32), _yolo(stone))
    (image,) = read_image_set(tmp_path)
    assert image.hu is not None
    np.testing.assert_array_equal(image.hu, hu)
    np.testing.assert_array_equal(image.grey, hu_to_grey(hu, (40.0, 400.0)))
    # floats that are no HU (0-1) say nothing of the window: still refused
    assert cv2.imwrite(str(tmp_path / "images" / "a.tif"), (hu_to_grey(hu, (40.0, 400.0)) / 255.0).astype(np.float32))
    with pytest.raises(ImageSetError, match="not HU"):
        read_image_set(tmp_path)


# 15, 8, 9: what the reader left out or assumed, said

def test_notes_say_what_the_reader_passed_over_and_assumed(tmp_path: Path) -> None:
    hu, stone = _axial_slice()
    grey = hu_to_grey(hu, (40.0, 400.0))
    for name in ("a.png", "b.png"):
        _write(tmp_path, name, grey, _yolo(stone) + _yolo(stone).replace("0 ", "2 ", 1))
    (tmp_path / "labels" / "c.txt").write_text(_yolo(stone))  # no image c
    (tmp_path / "normal").mkdir()
    for name in ("n1.png", "n2.png"):  # stone-free images beside the images folder
        assert cv2.imwrite(str(tmp_path / "normal" / name), grey)
    (tmp_path / "data.yaml").write_text("names: ['stone', 'kidney']\n")
    notes: list[str] = []
    read = read_image_set(tmp_path, notes=notes)
    assert [len(im.boxes) for im in read] == [1, 1]
    assert "1 .txt file in the label folders or beside the images matches no image (not read): labels/c.txt" in notes
    assert ("ignored 2 images outside the images folders, as the set has images folders: normal/n1.png, "
            "normal/n2.png") in notes
    assert any(note.startswith("not counted as stones: 2 boxes of class 2, which ") and
               note.endswith("data.yaml does not name (it names 0, 1): labels/a.txt:2, labels/b.txt:2") for note in notes)
    assert (f"2 of 2 images carry no pixel size and were read at the assumed {ASSUMED_PIXEL_MM} mm "
            "(say it with --pixel-mm where it is known)") in notes
    given: list[str] = []
    read_image_set(tmp_path, pixel_mm=0.6, notes=given)
    assert "2 of 2 images carry no pixel size and were read at the 0.6 mm given" in given
    # a set with nothing to say says nothing of the kinds above, only the pixel size
    clean = tmp_path / "clean"
    _write(clean, "a.png", grey, _yolo(stone))
    quiet: list[str] = []
    read_image_set(clean, notes=quiet)
    assert len(quiet) == 1 and "pixel size" in quiet[0]


# 18: a data.yaml in a Windows code page

def test_a_data_yaml_in_a_turkish_windows_code_page_is_read(tmp_path: Path) -> None:
    hu, stone = _axial_slice()
    _write(tmp_path, "a.png", hu_to_grey(hu, (40.0, 400.0)), _yolo(stone).replace("0 ", "1 ", 1))
    (tmp_path / "data.yaml").write_bytes("names: ['böbrek', 'Taş Var', 'Taş Yok']\n".encode("cp1254"))
    classes = stone_classes(tmp_path)
    assert classes.classes == frozenset({1}) and "'Taş Var'" in classes.how
    (image,) = read_image_set(tmp_path)
    assert [astuple(b) for b in image.boxes] and len(image.boxes) == 1


# 17: inverted grey (white air, black bone)

@pytest.mark.parametrize("window", [(40, 400), (300, 1500), "full-range"])
def test_an_inverted_image_is_said_and_an_upright_one_in_any_window_is_not(tmp_path: Path, window: object) -> None:
    """White air and black bone (a MONOCHROME1 display, an inverting export): read as they are, the stones
    are black; the notes say so and name the images. The same slice upright, and real crops inside the body,
    are not taken for inverted."""
    hu, stone = _axial_slice()
    upright = (np.round((np.clip(hu, -1024, 3071) + 1024) / 4095 * 255).astype(np.uint8) if window == "full-range"
               else hu_to_grey(hu, (float(window[0]), float(window[1]))) if isinstance(window, tuple) else None)
    assert upright is not None
    _write(tmp_path / "set", "upright.png", upright, _yolo(stone))
    _write(tmp_path / "set", "inverted.png", (255 - upright).astype(np.uint8), _yolo(stone))
    for image, text in _real_images(3):
        shutil.copy(image, tmp_path / "set" / "images" / image.name)
        (tmp_path / "set" / "labels" / f"{image.stem}.txt").write_text(text)
    notes: list[str] = []
    read = read_image_set(tmp_path / "set", notes=notes)
    assert len(read) == 5
    said = [note for note in notes if "look inverted" in note]
    assert said == ["1 of 5 images look inverted (white around the body, black bone, as a MONOCHROME1 display "
                    "shows CT): read as they are, their stones show black and are not found; invert them "
                    "(255 - grey) to measure them: images/inverted.png"]
    assert {im.path.stem: looks_inverted(im.grey) for im in read if im.hu is None} == {
        "inverted": True, "upright": False, **{image.stem: False for image, _ in _real_images(3)}}
