"""Real CT images with stones marked by boxes: reading, grouping, box supervision.

A folder in the YOLO layout, as object-detection exports write it:
``DIR/images/*.jpg|png`` with ``DIR/labels/<same stem>.txt``, or several such
folders below ``DIR`` (``train/``, ``valid/``, ...: Roboflow), or
``DIR/images/<split>/`` with ``DIR/labels/<split>/`` (Ultralytics), or, where no
image lies in an ``images`` folder, images with their label files beside them
(``label_file``); ``images`` and ``labels`` in any case (``Images/``, ``Labels/``). Hidden files and
folders and ``__MACOSX`` are left out. A label file (UTF-8, with or without a byte-order mark, or UTF-16
with one) holds one line per box, ``class cx cy w h`` normalised to the image (values up to
``LABEL_TOLERANCE`` outside [0, 1] are clipped). A JPEG's EXIF orientation is applied, as the labelling
tools show the image. Images of one set may share a file name in different folders: their ``name`` is then
their path in the set (``p1/images/slice1``). Which classes are
stones (``stone_classes``): those given (``--stone-classes``, which a
``data.yaml`` must name); else, where the folder or one up to three above it
has a ``data.yaml`` naming its classes, the classes whose names say urinary
stone (``is_stone_class``: stone, calculus, -lithiasis, urolith, nephrolith,
Turkish "Tas_Var"; not negated, "no stone", "stone-free", "Tas_Yok", and not a
mimic, "phlebolith", "gallstone"); else (no ``data.yaml``, or one that names
no class, or one class) every class. Boxes of other classes (a kidney, a cyst)
are not stones: a reported stone inside one is a false stone. A
``data.yaml`` that names several classes and none of them a stone, a name
that cannot say ("non-obstructing stone") and classes that keep none of the
set's boxes are errors, not guesses. An image without a label file, or with
an empty one, has no stone.

Images that carry Hounsfield units are read as such: a DICOM CT image
(``.dcm``, one slice in any plane, through ``inference.volume.load_volume``,
its pixel spacing from its header) and a 16-bit image (``read_hu16``: the
stored values of CT, HU + 1024, or HU + 32768 as DeepLesion writes them, told
apart by where the image's values lie; a 16-bit copy of a display image,
whose values reach the top of the range, or an 8-bit image saved in a 16-bit file, whose values are all
255 or less, is read as the 8-bit image it is).

8-bit images are in a display window nobody recorded. They become the
model's Hounsfield units through one assumed window, ``ASSUMED_WINDOW``
(level 40, width 400: the usual abdominal soft-tissue window), so grey 0 is
-160 HU and grey 255 is +240 HU; stones and bone are clipped alike at the
top. The model is trained over many other windows (``rewindow``) so that the
assumption need not be right, only plausible. An image that is clearly in a
wide (bone) window, where stones are grey, is read through the window its own
histogram shows instead (``estimate_window``, ``image_hu``).

Box supervision (``box_mask``): a box says where a stone is, not which pixels
are stone. Inside the box, the stone is the pixels at least half-way from the
box's own background (the median of the box's border pixels) to its
brightest pixel (a half-maximum rule, as CT sizes small dense objects); a
box may hold several such parts (fragments). It assumes that a stone is the brightest thing in its box and that the box's
border is background; a box whose brightest pixel stands less than
``MIN_BOX_CONTRAST`` grey levels above its border gives only its brightest
pixel.

Grouping (``exam_key``): the two copies of an augmented source image must
stay on the same side of a split (``source_key`` strips the export's
suffixes; qualified by its folder where images in different folders share a name, so that each
patient folder's ``slice1`` is its own), and so must the other images of the same examination: images whose
names are DICOM UIDs carrying a timestamp (as Philips writes them) and taken
within ``EXAM_GAP_S`` of each other are one examination. ``split_groups``
assigns whole examinations to a side by a hash of their key, so the split
never changes when images are added elsewhere.
"""

from __future__ import annotations

import codecs
import hashlib
import math
import posixpath
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from inference.errors import InferenceError
from inference.volume import CT_IMAGE_STORAGE, Volume, load_volume

DICOM_SUFFIXES = (".dcm", ".dicom")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", *DICOM_SUFFIXES)
ASSUMED_WINDOW = (40.0, 400.0)
"""(level, width) in HU that grey 0..255 is taken to span."""
ASSUMED_PIXEL_MM = 0.75
"""Pixel spacing assumed for images that carry none (coronal abdominal crops: 0.7-0.8 mm)."""
ASSUMED_SLICE_MM = 1.0
"""Slice thickness assumed for a lone image (only the candidate stage's volume rule reads it)."""
MIN_BOX_CONTRAST = 12.0
"""Grey levels a box's brightest pixel must stand above its border for the half-maximum rule."""
EXAM_GAP_S = 600.0
BODY_WIDTH_MM = 320.0
"""An adult abdomen's left-right width that ``estimate_pixel_mm`` takes (adults: about 260-400 mm)."""
BODY_HU = -130.0
"""Body where an image is above this (fat -100, air -1000 or, read through the assumed window, -160)."""
PIXEL_ESTIMATE_FACTOR = 1.5
"""``estimate_pixel_mm`` replaces the assumed pixel size only when this many times it, or its inverse."""
SOFT_TISSUE_HU = 30.0
"""Where ``estimate_window`` puts an image's soft-tissue peak (the training images' median under the assumed window)."""
FAT_HU = -100.0
WIDE_WINDOW_HU = 800.0
"""Widths from fat and soft tissue under this are not trusted (the peaks of a narrow window mislead)."""
NARROW_PEAK_GREY = 18
"""A wide window squeezes soft tissue into few grey levels: its peak's full width at half height, at most."""
MAX_SATURATED_SHARE = 0.006
"""Share of pixels at grey 250 or more above which an image is a soft-tissue window (bone white)."""

_ROBOFLOW = re.compile(r"(_(png|jpg|jpeg|bmp|tif|tiff))*\.rf\.[0-9a-f]+$", re.IGNORECASE)
_TICKS = re.compile(r"(?:^|[-/])(6\d{17})\d{5}(?:-|$)")
"""A .NET tick count (100 ns since year 1; 6xxx... is 2010-2030) inside a UID written with dashes (after
a folder where ``LabelledImage.source`` is qualified by one)."""


class ImageSetError(ValueError):
    """A folder of images that cannot be read: what and why."""


@dataclass(frozen=True)
class Box:
    """A marked stone, in pixels: columns x0..x1, rows y0..y1 (floats, x1/y1 exclusive)."""

    x0: float
    y0: float
    x1: float
    y1: float

    @property
    def width(self) -> float:
        return self.x1 - self.x0

    @property
    def height(self) -> float:
        return self.y1 - self.y0

    def grown(self, pixels: float) -> Box:
        return Box(self.x0 - pixels, self.y0 - pixels, self.x1 + pixels, self.y1 + pixels)

    def contains(self, row: float, column: float) -> bool:
        return self.y0 <= row + 0.5 <= self.y1 and self.x0 <= column + 0.5 <= self.x1


@dataclass(frozen=True, eq=False)
class LabelledImage:
    path: Path
    grey: np.ndarray
    """uint8 (rows, columns); for an image that carries HU, those HU shown in the assumed window."""
    boxes: tuple[Box, ...]
    hu: np.ndarray | None = None
    """float32 (rows, columns): the HU the file carries (DICOM, 16-bit), None for an 8-bit image."""
    pixel_mm: float = ASSUMED_PIXEL_MM
    """The pixel spacing: a DICOM image's own, else the one given for the set, else ``estimate_pixel_mm``'s."""
    study_uid: str | None = None
    """A DICOM image's StudyInstanceUID: its examination, for the split."""
    pixel_from: str = "assumed"
    """Where ``pixel_mm`` comes from: 'file' (DICOM), 'given' (for the set), 'body width' or 'assumed'."""
    has_label_file: bool = True
    """Whether a label file was found for it (without one it has no stone)."""
    unique_as: str = ""
    """Where another image of its set has the same file stem (``p1/images/slice1.jpg`` and
    ``p2/images/slice1.jpg``): its path relative to the set, without the suffix (``p1/images/slice1``; with
    it where only the suffix differs), which is then its ``name``; else ''."""

    def as_hu(self, window: str = "auto") -> np.ndarray:
        """The image in HU: the ones it carries, else its grey read through ``image_hu``."""
        return self.hu if self.hu is not None else image_hu(self.grey, window)

    @property
    def name(self) -> str:
        """Its file's stem, or where that is not unique in its set, ``unique_as``."""
        return self.unique_as or self.path.stem

    @property
    def source(self) -> str:
        """The image's source for the split: a DICOM image's study, else its stem without the export's
        suffixes, qualified by its folder where its stem is not unique in its set (``p1/images/slice1``)."""
        if self.study_uid:
            return f"study-{self.study_uid}"
        folder = posixpath.dirname(self.unique_as)
        return f"{folder}/{source_key(self.path.stem)}" if folder else source_key(self.path.stem)

    @property
    def own_spacing(self) -> bool:
        """Whether the file says its pixel spacing (a DICOM image)."""
        return self.study_uid is not None


def source_key(stem: str) -> str:
    """The source image an exported image was made from (the export's suffixes removed)."""
    return _ROBOFLOW.sub("", stem)


def exam_time_s(source: str) -> float | None:
    """Seconds (since year 1) of a timestamped UID in the name, or None."""
    m = _TICKS.search(source)
    return int(m.group(1)) / 1e7 if m else None


def exam_keys(sources: Iterable[str], gap_s: float = EXAM_GAP_S) -> dict[str, str]:
    """source key -> examination key: timestamped sources within ``gap_s`` of the previous one
    share the first one's key; others are their own examination."""
    keys: dict[str, str] = {}
    timed: list[tuple[float, str]] = []
    for s in set(sources):
        t = exam_time_s(s)
        if t is None:
            keys[s] = s
        else:
            timed.append((t, s))
    timed.sort()
    current, last = "", -np.inf
    for t, s in timed:
        if t - last > gap_s:
            current = s
        keys[s] = current
        last = t
    return keys


def split_of(key: str, fractions: Sequence[tuple[str, float]]) -> str:
    """The side of a split a group falls on: a stable hash of its key against cumulative fractions."""
    u = int(hashlib.sha256(key.encode()).hexdigest()[:12], 16) / float(1 << 48)
    acc = 0.0
    for name, fraction in fractions:
        acc += fraction
        if u < acc:
            return name
    return fractions[-1][0]


DEFAULT_SPLIT = (("train", 0.65), ("validation", 0.15), ("test", 0.20))
"""The split of the real images used for model 3: 20 % of examinations held out for the figures,
15 % for choosing thresholds, the rest to train on."""


def split_groups(images: Sequence[LabelledImage], fractions: Sequence[tuple[str, float]] = DEFAULT_SPLIT,
                 gap_s: float = EXAM_GAP_S) -> dict[str, list[LabelledImage]]:
    """The images by side of the split, whole examinations (and so both copies of a source) together."""
    keys = exam_keys((im.source for im in images), gap_s)
    out: dict[str, list[LabelledImage]] = {name: [] for name, _ in fractions}
    for im in images:
        out[split_of(keys[im.source], fractions)].append(im)
    return out


CLASS_FILES = ("data.yaml", "dataset.yaml")
"""Where a YOLO export names its classes (Roboflow and Ultralytics write data.yaml)."""
CLASS_FILE_LEVELS = 3
"""How many folders above the one given are searched for it (DIR/valid/images given: DIR's is found)."""
STONE_STEMS = ("stone", "calcul", "lithiasis", "urolith", "nephrolith", "ureterolith", "cystolith", "tasvar")
"""Words (or parts of words) that name a urinary stone; "tas var" (Turkish: stone present) is one too."""
MIMIC_STEMS = ("phlebo", "append", "fecal", "faecal", "copro", "gall", "chole", "sialo", "broncho", "pulp")
"""A stone word with one of these names a stone's mimic or another organ's stone: not a urinary stone."""
NEGATING_BEFORE = frozenset({"no", "non", "not", "without"})
NEGATING_AFTER = frozenset({"free", "negative", "absent", "yok"})
NEGATING_ELSEWHERE = NEGATING_BEFORE | NEGATING_AFTER | {"normal", "none"}


def is_stone_class(name: str) -> bool | None:
    """Whether a class name says urinary stone: True for 'kidney-stones', 'Calculus', 'Ureteral calculi',
    'nephrolithiasis', 'Tas_Var' / 'Taş Var' (Turkish, "stone present"); False for 'kidney', 'cyst',
    'phlebolith', 'gallstone', 'no_stone', 'NonStone', 'stone-free', 'Tas_Yok'; None where a negating word
    stands apart from the stone word ('non-obstructing stone', 'stone without hydronephrosis'): the name
    alone cannot say, so the set's classes must be given."""
    tokens: list[str] = []
    for t in re.findall(r"[a-z]+", _plain(name)):
        if t == "var" and tokens and tokens[-1] == "tas":
            tokens[-1] = "tasvar"
        else:
            tokens.append(t)
    if any(m in t for t in tokens for m in MIMIC_STEMS):
        return False
    stone_at = [i for i, t in enumerate(tokens) if any(s in t for s in STONE_STEMS)]
    if not stone_at:
        return False
    for i in stone_at:
        if tokens[i].startswith("no"):  # "nostone", "nonstone"
            return False
        if (i > 0 and tokens[i - 1] in NEGATING_BEFORE) or (i + 1 < len(tokens) and tokens[i + 1] in NEGATING_AFTER):
            return False
    if any(t in NEGATING_ELSEWHERE for t in tokens):
        return None
    return True


def _plain(name: str) -> str:
    """A class name in lower-case ASCII letters: accents dropped ('Taş' -> 'tas'), the dotless i read as i."""
    lower = name.lower().replace("ı", "i")
    return "".join(c for c in unicodedata.normalize("NFKD", lower) if not unicodedata.combining(c))


@dataclass(frozen=True)
class StoneClasses:
    """The box classes that are stones (None: every class) and why (``stone_classes``)."""

    classes: frozenset[int] | None
    how: str


def _class_names(path: Path) -> dict[int, str] | None:
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ImageSetError(f"{path}: not YAML: {exc}") from exc
    names = data.get("names") if isinstance(data, dict) else None
    if isinstance(names, list):
        return {i: str(v) for i, v in enumerate(names)}
    if isinstance(names, dict):
        try:
            return {int(k): str(v) for k, v in names.items()}
        except (TypeError, ValueError) as exc:
            raise ImageSetError(f"{path}: class numbers that are not integers: {list(names)}") from exc
    return None


def class_file(folder: Path) -> Path | None:
    """The ``data.yaml`` (or ``dataset.yaml``) of the image set at ``folder``: in it or up to
    ``CLASS_FILE_LEVELS`` folders above, the nearest."""
    here = Path(folder).resolve()
    for d in [here, *here.parents][: CLASS_FILE_LEVELS + 1]:
        for name in CLASS_FILES:
            if (d / name).is_file():
                return d / name
    return None


def stone_classes(folder: Path, given: Sequence[int] | None = None) -> StoneClasses:
    """Which box classes of the image set at ``folder`` are stones (the module's text)."""
    path = class_file(folder)
    names = _class_names(path) if path is not None else None
    where = f"{path.parent.name}/{path.name}" if path is not None else ""  # never an absolute path: cards hold it
    if given is not None:
        if not given or min(given) < 0:
            raise ImageSetError(f"--stone-classes {' '.join(map(str, given))}: class numbers, 0 or more")
        unknown = sorted(set(given) - set(names)) if names else []
        if unknown:
            raise ImageSetError(f"classes {unknown} given as stones, but {where} names only {sorted(names or {})}")
        return StoneClasses(frozenset(given), f"classes {', '.join(map(str, sorted(set(given))))} (given)")
    if path is None:
        return StoneClasses(None, "every class (no data.yaml names them)")
    if not names:
        return StoneClasses(None, f"every class ({where} names none)")
    listed = ", ".join(f"{k} {v!r}" for k, v in sorted(names.items()))
    verdicts = {k: is_stone_class(v) for k, v in names.items()}
    unclear = sorted(k for k, v in verdicts.items() if v is None)
    if unclear:
        raise ImageSetError(f"{where} names the classes {listed}; whether {', '.join(repr(names[k]) for k in unclear)} "
                            "is a stone its name does not say; say which classes are with --stone-classes")
    stones = sorted(k for k, v in verdicts.items() if v)
    if stones:
        return StoneClasses(frozenset(stones), f"classes {', '.join(f'{k} {names[k]!r}' for k in stones)} "
                                               f"(named so in {where})")
    if len(names) == 1:
        return StoneClasses(None, f"every class ({where} names one class, {listed})")
    raise ImageSetError(f"{where} names the classes {listed} and none of them as a stone; "
                        "say which are with --stone-classes")


LABEL_TOLERANCE = 1e-3
"""How far outside [0, 1] a label's normalised value may lie and be clipped to it, not refused."""


def read_boxes(text: str, rows: int, columns: int, where: str = "",
               classes: frozenset[int] | None = None) -> tuple[Box, ...]:
    """YOLO lines -> boxes in pixels of the ``classes`` (None: every one); a bad line raises ImageSetError.

    A line is a box, ``class cx cy w h`` (normalised; a sixth value, a detector's confidence, is ignored),
    or a polygon, ``class x1 y1 x2 y2 x3 y3 ...`` (three points or more, as segmentation exports write
    it), whose box is the points' bounds. Values within ``LABEL_TOLERANCE`` outside [0, 1] (a tool's
    rounding) are clipped to it."""
    boxes = []
    for n, line in enumerate(text.splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        try:
            kind = float(parts[0])
            values = [float(v) for v in parts[1:]]
        except ValueError as exc:
            raise ImageSetError(f"{where}:{n}: not numbers: {line.strip()!r}") from exc
        if not math.isfinite(kind) or kind != int(kind) or kind < 0:
            raise ImageSetError(f"{where}:{n}: the class is not a whole number: {line.strip()!r}")
        low, high = -LABEL_TOLERANCE, 1.0 + LABEL_TOLERANCE
        if len(values) in (4, 5):
            cx, cy, w, h = values[:4]
            if not (low <= cx <= high and low <= cy <= high and 0.0 < w <= high and 0.0 < h <= high):
                raise ImageSetError(f"{where}:{n}: box outside the image: {line.strip()!r}")
            cx, cy, w, h = (min(max(v, 0.0), 1.0) for v in (cx, cy, w, h))
            box = Box(max(0.0, (cx - w / 2) * columns), max(0.0, (cy - h / 2) * rows),
                      min(float(columns), (cx + w / 2) * columns), min(float(rows), (cy + h / 2) * rows))
        elif len(values) >= 6 and len(values) % 2 == 0:  # a polygon
            inside = all(low <= v <= high for v in values)
            values = [min(max(v, 0.0), 1.0) for v in values]
            xs, ys = values[0::2], values[1::2]
            if not inside or max(xs) <= min(xs) or max(ys) <= min(ys):
                raise ImageSetError(f"{where}:{n}: polygon outside the image or without area: {line.strip()!r}")
            box = Box(min(xs) * columns, min(ys) * rows, max(xs) * columns, max(ys) * rows)
        else:
            raise ImageSetError(f"{where}:{n}: expected 'class cx cy w h' (and a confidence) or a polygon "
                                f"('class x1 y1 x2 y2 x3 y3 ...'), got {line.strip()!r}")
        if classes is None or int(kind) in classes:
            boxes.append(box)
    return tuple(boxes)


SCALED_16BIT_MIN = 40_000
"""A 16-bit image whose values reach this is a display image scaled to 16 bits, not stored CT values:
CT's stored values stop near 4,095 + 1,024 (HU + 1024) or 3,071 + 32,768 (HU + 32768)."""
OFFSET_32768_MEDIAN = 16_384
"""Median at or above which a 16-bit CT image is taken as HU + 32768 (air alone is 31,768 there)."""


def read_hu16(values: np.ndarray, where: str = "") -> tuple[np.ndarray, np.ndarray | None]:
    """(grey, HU) of a 16-bit image: HU when it holds stored CT values (see the module's text), else
    (its 8-bit grey, None) for a display image scaled to 16 bits or an 8-bit image saved as 16 bits
    (every value 0-255: the grey levels themselves)."""
    if int(values.min()) >= 0 and int(values.max()) <= 255:
        return values.astype(np.uint8), None
    if values.dtype == np.int16 and int(values.min()) < 0:  # signed with negatives: the HU themselves
        hu = values.astype(np.float32)
    elif int(values.max()) >= SCALED_16BIT_MIN:
        return np.round(values.astype(np.float32) / 257.0).astype(np.uint8), None
    elif float(np.median(values)) >= OFFSET_32768_MEDIAN:
        hu = values.astype(np.float32) - 32768.0
    else:
        hu = values.astype(np.float32) - 1024.0
    if float(np.median(hu)) > 1500.0 or float(hu.max()) < -200.0:
        raise ImageSetError(f"{where}: 16-bit values that are not CT numbers under any known offset")
    return hu_to_grey(hu, ASSUMED_WINDOW), hu


def read_image(path: Path) -> tuple[np.ndarray, np.ndarray | None, float, str | None]:
    """(grey, HU or None, pixel mm, StudyInstanceUID or None) of an image file: 8-bit (colour averaged),
    16-bit, or a DICOM CT image of one slice in any plane (see the module's text)."""
    if path.suffix.lower() in DICOM_SUFFIXES:
        try:
            volume = load_volume([path])
        except InferenceError as exc:
            raise ImageSetError(f"{path}: {exc}") from exc
        if volume.shape[0] != 1:
            raise ImageSetError(f"{path}: {volume.shape[0]} frames; one slice per image")
        rows_mm, columns_mm = volume.pixel_spacing
        if abs(rows_mm - columns_mm) > 0.02 * max(rows_mm, columns_mm):
            raise ImageSetError(f"{path}: pixels of {rows_mm} x {columns_mm} mm; square pixels only")
        hu = volume.hu[0]
        return hu_to_grey(hu, ASSUMED_WINDOW), hu, float(rows_mm), volume.study_instance_uid or "unknown"
    import cv2

    # not IMREAD_UNCHANGED, which ignores a JPEG's EXIF orientation (labels are in the displayed frame);
    # these flags apply it and keep 16 bits (and an alpha channel's loss changes nothing: it is dropped)
    data = cv2.imread(str(path), cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR)
    if data is None:
        raise ImageSetError(f"{path}: not an image OpenCV can read")
    if data.ndim == 3:
        channels = data[..., :3]
        data = cv2.cvtColor(channels, cv2.COLOR_BGR2GRAY) if data.dtype == np.uint8 else channels.mean(axis=2)
        data = data.astype(channels.dtype)
    if data.dtype in (np.uint16, np.int16):
        grey, hu = read_hu16(data, str(path))
        return np.ascontiguousarray(grey), hu, ASSUMED_PIXEL_MM, None
    if data.dtype != np.uint8:
        raise ImageSetError(f"{path}: {data.dtype} pixels; 8-bit, 16-bit or DICOM images only")
    return np.ascontiguousarray(data), None, ASSUMED_PIXEL_MM, None


def label_file(image: Path) -> Path:
    """Where an image's YOLO label file is: the path with its last ``images`` folder read as ``labels`` and
    the suffix ``.txt`` (``DIR/images/a.jpg`` -> ``DIR/labels/a.txt``, as Roboflow writes it;
    ``DIR/images/train/a.jpg`` -> ``DIR/labels/train/a.txt``, as Ultralytics does), else beside the image
    (``a.jpg`` -> ``a.txt``) when only that one exists."""
    parts = image.parts
    beside = image.with_suffix(".txt")
    at = [i for i, part in enumerate(parts[:-1]) if part.lower() == "images"]
    if at:
        mapped = Path(*parts[: at[-1]], _labels_folder(Path(*parts[: at[-1]])), *parts[at[-1] + 1: -1],
                      image.stem + ".txt")
        if mapped.exists() or not beside.exists():
            return mapped
    return beside


def _labels_folder(parent: Path) -> str:
    """The name of ``parent``'s labels folder: ``labels``, else one so named in another case (``Labels``)."""
    if (parent / "labels").is_dir() or not parent.is_dir():
        return "labels"
    others = sorted(d.name for d in parent.iterdir() if d.name.lower() == "labels" and d.is_dir())
    return others[0] if others else "labels"


def read_label_text(path: Path) -> str:
    """A label file's text: UTF-16 where it starts with a UTF-16 byte-order mark (Windows PowerShell's ``>``),
    else UTF-8 with or without one (Notepad); ImageSetError where it is neither."""
    data = path.read_bytes()
    encoding = "utf-16" if data[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE) else "utf-8-sig"
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        raise ImageSetError(f"{path}: not text in UTF-8 or UTF-16: {exc}") from exc


def image_files(folder: Path) -> list[tuple[Path, Path]]:
    """(image, ``label_file``) pairs of every image below ``folder`` in an ``images`` folder (any case, at
    any depth), sorted; where none is (``folder`` is one, or a flat set), of every image below ``folder``.
    Hidden files and folders (``.ipynb_checkpoints``, macOS's ``._`` files) and ``__MACOSX`` (what unzipping
    a Finder zip leaves) are not part of the set."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ImageSetError(f"{folder} is not a folder")
    found = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES
                   and not any(part.startswith(".") or part == "__MACOSX" for part in p.relative_to(folder).parts)
                   and p.is_file())
    chosen = [p for p in found if any(part.lower() == "images" for part in p.relative_to(folder).parts[:-1])] or found
    if not chosen:
        raise ImageSetError(f"{folder} has no images ({', '.join(IMAGE_SUFFIXES)}) at or below it")
    return [(p, label_file(p)) for p in chosen]


def unique_names(images: Sequence[Path], folder: Path) -> list[str]:
    """``LabelledImage.unique_as`` of each image below ``folder``: '' where its stem is unique among
    ``images``, else its path relative to ``folder`` without its suffix, or with it where that is not
    unique either (``a.jpg`` and ``a.png`` in one folder)."""
    stems = Counter(p.stem for p in images)
    relative = [Path(p).relative_to(Path(folder)) for p in images]
    qualified = [r.with_suffix("").as_posix() if stems[p.stem] > 1 else "" for p, r in zip(images, relative, strict=True)]
    again = Counter(qualified)
    return [r.as_posix() if q and again[q] > 1 else q for q, r in zip(qualified, relative, strict=True)]


def read_image_set(folder: Path, pixel_mm: float | None = None, estimate_pixel: str = "off",
                   classes: Sequence[int] | None = None) -> list[LabelledImage]:
    """Every labelled image below ``folder`` (see the module's text); ``pixel_mm`` is the spacing of the
    images that carry none (default ``ASSUMED_PIXEL_MM``; with ``estimate_pixel`` 'both' or 'finer',
    ``estimate_pixel_mm``'s, 'finer' only where it says the pixels are smaller: docs/model.md, the
    thirteenth and fourteenth candidates); ``classes``: the box classes that are stones (default:
    ``stone_classes``' reading of the set's data.yaml)."""
    stones = stone_classes(folder, classes).classes
    if estimate_pixel not in ("off", "both", "finer"):
        raise ValueError(f"estimate_pixel {estimate_pixel!r}: 'off', 'both' or 'finer'")
    if pixel_mm is not None and not 0.05 <= pixel_mm <= 5.0:
        raise ImageSetError(f"a pixel spacing of {pixel_mm} mm is not a CT image's (0.05-5 mm)")
    out = []
    boxes_of_any_class = 0
    pairs = image_files(folder)
    unique = unique_names([image for image, _ in pairs], folder)
    for (image_path, label_path), unique_as in zip(pairs, unique, strict=True):
        grey, hu, own_mm, study_uid = read_image(image_path)
        text = read_label_text(label_path) if label_path.exists() else ""
        if stones is not None:
            boxes_of_any_class += len(read_boxes(text, grey.shape[0], grey.shape[1], str(label_path)))
        rows, columns = grey.shape
        if study_uid:
            mm, how = own_mm, "file"
        elif pixel_mm is not None:
            mm, how = pixel_mm, "given"
        elif estimate_pixel != "off":
            estimate = estimate_pixel_mm(hu if hu is not None else image_hu(grey), finer_only=estimate_pixel == "finer")
            mm, how = estimate.pixel_mm, estimate.how
        else:
            mm, how = ASSUMED_PIXEL_MM, "assumed"
        out.append(LabelledImage(image_path, grey, read_boxes(text, rows, columns, str(label_path), stones),
                                 hu=hu, pixel_mm=mm, study_uid=study_uid, pixel_from=how,
                                 has_label_file=label_path.exists(), unique_as=unique_as))
    if boxes_of_any_class and not any(im.boxes for im in out):
        raise ImageSetError(f"the label files hold {boxes_of_any_class} boxes and none of the classes counted as "
                            f"stones ({stone_classes(folder, classes).how}); say which are with --stone-classes")
    return out


def describe_set(folder: Path, images: Sequence[LabelledImage], classes: Sequence[int] | None = None) -> str:
    """What the figures of an image set counted: its stone classes, and how many images had a label file
    (one without is stone-free, so a layout whose labels were not found shows here)."""
    labelled = sum(im.has_label_file for im in images)
    return (f"boxes counted as stones: {stone_classes(folder, classes).how}; "
            f"{labelled} of {len(images)} images with a label file")


def grey_to_hu(grey: np.ndarray, window: tuple[float, float] = ASSUMED_WINDOW) -> np.ndarray:
    """8-bit grey -> HU under ``window`` (level, width)."""
    level, width = window
    return (level - width / 2 + grey.astype(np.float32) * (width / 255.0)).astype(np.float32)


@dataclass(frozen=True)
class WindowEstimate:
    """The window an image is read through, and why (``estimate_window``)."""

    level: float
    width: float
    how: str
    """'assumed' or 'fat and soft tissue' (estimated from those two peaks)."""

    @property
    def window(self) -> tuple[float, float]:
        return (self.level, self.width)


def _histogram_peaks(smoothed: np.ndarray, low: int, high: int, min_share: float) -> list[int]:
    top = float(smoothed[low:high + 1].max())
    return [g for g in range(low, high + 1)
            if smoothed[g] >= smoothed[g - 1] and smoothed[g] > smoothed[g + 1] and smoothed[g] >= min_share * top]


def estimate_window(grey: np.ndarray, assumed: tuple[float, float] = ASSUMED_WINDOW) -> WindowEstimate:
    """The display window an 8-bit CT image was most likely shown in, from its own histogram.

    Soft tissue is the brightest major peak of the grey histogram (clipped 0 and 255
    left out, peaks between grey 8 and 230); fat is a major darker peak with a valley
    between the two. Soft tissue is taken as ``SOFT_TISSUE_HU`` and fat as ``FAT_HU``.


    The estimate replaces the assumed window only when the image is clearly in a wide
    (bone-like) window: fat and soft tissue both seen, implying a width of at least
    ``WIDE_WINDOW_HU``, a narrow soft-tissue peak (a wide window squeezes soft tissue
    into few grey levels) and almost nothing saturated (in a soft-tissue window bone and
    stones are white; in a wide one they are grey). Read through the assumed window,
    such an image's stones would be grey, under the candidate threshold. Any other image
    keeps the assumed window: where its soft-tissue peak lies varies with the anatomy
    as much as with the window, and fitting a level to it moved images of the training
    set, all in one soft-tissue window, by up to 160 HU.
    """
    level0, width0 = assumed
    every = np.bincount(np.asarray(grey, dtype=np.uint8).ravel(), minlength=256).astype(np.float64)
    saturated = float(every[250:].sum() / max(every.sum(), 1.0))
    counts = every.copy()
    counts[0] = counts[255] = 0.0
    if counts.sum() < 1000:
        return WindowEstimate(level0, width0, "assumed")
    smoothed = ndimage.gaussian_filter1d(counts, 2.0)
    peaks = _histogram_peaks(smoothed, 8, 230, 0.15)
    if not peaks:
        return WindowEstimate(level0, width0, "assumed")
    soft = max(peaks)
    fat = next((g for g in sorted(peaks, key=lambda g: -smoothed[g])
                if 12 <= g <= soft - 10 and smoothed[g:soft].min() < 0.8 * min(smoothed[g], smoothed[soft])), None)
    if fat is not None and saturated <= MAX_SATURATED_SHARE:
        width = 255.0 * (SOFT_TISSUE_HU - FAT_HU) / (soft - fat)
        if width >= WIDE_WINDOW_HU and _peak_fwhm(ndimage.gaussian_filter1d(counts, 1.0), soft) <= NARROW_PEAK_GREY:
            width = min(width, 4000.0)
            return WindowEstimate(SOFT_TISSUE_HU + width / 2 - soft * width / 255.0, width, "fat and soft tissue")
    return WindowEstimate(level0, width0, "assumed")


def _peak_fwhm(smoothed: np.ndarray, at: int) -> int:
    half = smoothed[at] / 2
    lo, hi = at, at
    while lo > 0 and smoothed[lo] > half:
        lo -= 1
    while hi < 255 and smoothed[hi] > half:
        hi += 1
    return hi - lo


def image_hu(grey: np.ndarray, window: str = "auto") -> np.ndarray:
    """An 8-bit image as HU: through ``estimate_window`` ('auto') or the assumed window ('assumed')."""
    if window == "assumed":
        return grey_to_hu(grey)
    if window != "auto":
        raise ValueError(f"window {window!r}: 'auto' or 'assumed'")
    return grey_to_hu(grey, estimate_window(grey).window)


@dataclass(frozen=True)
class PixelEstimate:
    """The pixel size an image without one is read at, and why (``estimate_pixel_mm``)."""

    pixel_mm: float
    how: str
    """'assumed' or 'body width'."""
    body_width_px: int | None = None


def estimate_pixel_mm(hu: np.ndarray, assumed: float = ASSUMED_PIXEL_MM, finer_only: bool = False) -> PixelEstimate:
    """The pixel size of an image that states none, from its body's width when it shows a whole cross-section.

    An image file says nothing of its pixels, and the model reads it as ``assumed`` (0.75 mm: a 512-pixel
    axial slice of a 350-400 mm field of view, or the coronal crops it learned from). An export resized to
    half or double that loses most stones or doubles the false ones (docs/model.md). Where the image holds
    the body's whole cross-section (its largest region above ``BODY_HU`` once smoothed, holes filled, clear
    of every edge, at least a tenth of the image, nearly elliptical, no deeper than about wide (at most 1.05
    times), as an axial slice is), its width is taken as ``BODY_WIDTH_MM``; that estimate is used only when it is ``PIXEL_ESTIMATE_FACTOR`` times
    ``assumed`` or more, or that much less, so that the spread of adults' widths (about 260-400 mm) never
    moves an image exported at its own pixels. Crops (the body cut by an edge) and other views keep
    ``assumed``. A child's slice (a body under about 210 mm) or a very large adult's (over about 480 mm)
    exported at its own pixels is read at the wrong size. ``finer_only``: an estimate of larger pixels than
    ``assumed`` is not used (an export at a smaller matrix keeps ``assumed``; docs/model.md, fourteenth
    candidate)."""
    keep = PixelEstimate(assumed, "assumed")
    rows, columns = hu.shape
    if min(rows, columns) < 64:
        return keep
    # smoothed first: in a noisy slice fat's pixels fall below BODY_HU and would break the body apart
    body = ndimage.binary_opening(ndimage.gaussian_filter(np.asarray(hu, np.float32), 2.0) > BODY_HU,
                                  structure=np.ones((5, 5), bool))
    labels, n = ndimage.label(body)
    if n == 0:
        return keep
    sizes = np.bincount(labels.ravel())[1:]
    largest = labels == 1 + int(np.argmax(sizes))
    largest = ndimage.binary_fill_holes(largest)
    found = ndimage.find_objects(largest.astype(np.int32))[0]
    r0, r1, c0, c1 = found[0].start, found[0].stop, found[1].start, found[1].stop
    if r0 < 2 or c0 < 2 or r1 > rows - 2 or c1 > columns - 2:
        return keep  # cut by an edge: a crop, or a view taller than its field
    height, width = r1 - r0, c1 - c0
    area = float(largest.sum())
    if area < 0.1 * rows * columns or area < 0.75 * np.pi / 4 * height * width or not 0.45 <= height / width <= 1.05:
        return keep
    pixel_mm = BODY_WIDTH_MM / width
    if 1 / PIXEL_ESTIMATE_FACTOR < pixel_mm / assumed < PIXEL_ESTIMATE_FACTOR or (finer_only and pixel_mm > assumed):
        return PixelEstimate(assumed, "assumed", width)
    return PixelEstimate(pixel_mm, "body width", width)


def hu_to_grey(hu: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """HU -> the 8-bit grey a viewer shows in ``window`` (level, width): clipped and rounded."""
    level, width = window
    return np.clip(np.round((hu - (level - width / 2)) * (255.0 / width)), 0, 255).astype(np.uint8)


def rewindow(hu: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """What the model sees of ``hu`` once shown in ``window`` and read back under the assumed one."""
    return grey_to_hu(hu_to_grey(hu, window))


def box_mask(grey: np.ndarray, box: Box) -> np.ndarray:
    """bool (rows, columns): the stone pixels of one box (see the module's text)."""
    rows, columns = grey.shape
    r0, r1 = int(np.floor(box.y0)), min(rows, int(np.ceil(box.y1)))
    c0, c1 = int(np.floor(box.x0)), min(columns, int(np.ceil(box.x1)))
    out = np.zeros(grey.shape, dtype=bool)
    if r1 <= r0 or c1 <= c0:
        return out
    inside = grey[r0:r1, c0:c1].astype(np.float32)
    border = np.concatenate([inside[0], inside[-1], inside[:, 0], inside[:, -1]])
    background = float(np.median(border))
    peak = float(inside.max())
    at = np.unravel_index(int(np.argmax(inside)), inside.shape)
    if peak - background < MIN_BOX_CONTRAST:
        out[r0 + at[0], c0 + at[1]] = True
        return out
    # every part at or above the half-maximum counts: a box may hold fragments
    out[r0:r1, c0:c1] = inside >= (background + peak) / 2
    return out


def stone_mask(image: LabelledImage) -> np.ndarray:
    """bool (rows, columns): the union of its boxes' stone pixels."""
    mask = np.zeros(image.grey.shape, dtype=bool)
    for box in image.boxes:
        mask |= box_mask(image.grey, box)
    return mask


def image_volume(hu: np.ndarray, name: str, pixel_mm: float = ASSUMED_PIXEL_MM) -> Volume:
    """A lone image (HU, rows x columns) as a one-slice ``Volume`` with made-up, stable UIDs."""
    digest = int(hashlib.sha256(name.encode()).hexdigest()[:24], 16)
    root = f"2.25.{digest}"
    return Volume(
        hu=np.ascontiguousarray(hu[None].astype(np.float32)),
        positions=np.zeros((1, 3)),
        row_direction=(1.0, 0.0, 0.0),
        column_direction=(0.0, 0.0, -1.0),
        pixel_spacing=(pixel_mm, pixel_mm),
        slice_spacing=ASSUMED_SLICE_MM,
        frame_of_reference_uid=root + ".1",
        study_instance_uid=root + ".2",
        series_instance_uid=root + ".3",
        sop_class_uid=CT_IMAGE_STORAGE,
        sop_instance_uids=(root + ".4",),
        frame_numbers=(1,),
        source_paths=("",),
    )
