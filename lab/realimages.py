"""Real CT images with stones marked by boxes: reading, grouping, box supervision.

A folder in the YOLO layout, as object-detection exports write it:
``DIR/images/*.jpg|png`` with ``DIR/labels/<same stem>.txt``, or several such
folders below ``DIR`` (``train/``, ``valid/``, ...: Roboflow), or
``DIR/images/<split>/`` with ``DIR/labels/<split>/`` (Ultralytics), or, where no
image lies in an ``images`` folder, images with their label files beside them
(``label_file``); ``images`` and ``labels`` in any case (``Images/``, ``Labels/``), an ``annotations``
folder of YOLO files where there is no ``labels`` one, and a label file's ``.txt`` in any case (``.TXT``).
Hidden files and
folders and ``__MACOSX`` are left out. A label file (UTF-8, with or without a byte-order mark, or UTF-16
with one) holds one line per box, ``class cx cy w h`` normalised to the image (values up to
``LABEL_TOLERANCE`` outside [0, 1] are clipped). A JPEG's EXIF orientation is applied, as the labelling
tools show the image. Images of one set may share a file name in different folders: their ``name`` is then
their path in the set (``p1/images/slice1``). Which classes are
stones (``stone_classes``): those given (``--stone-classes``, which a
``data.yaml`` must name); else, where the folder or one up to three above it
has a ``data.yaml`` naming its classes (or, without one, a ``classes.txt`` as LabelImg writes it or an
``obj.names`` as darknet and CVAT do, one name a line, there or beside the images), the classes whose
names say urinary
stone (``is_stone_class``: stone, calculus, -lithiasis, urolith, nephrolith,
Turkish "taş", "Tas_Var", German "Stein", Spanish "litiasis", "cálculo"; not negated, "no stone",
"stone-free", "StoneFree", "Tas_Yok", and not a
mimic, "phlebolith", "gallstone"); else (no class file, or one that names
no class, or one class) every class. Boxes of other classes (a kidney, a cyst)
are not stones: a reported stone inside one is a false stone. A
class file that names several classes and none of them a stone, a name
that cannot say ("non-obstructing stone") and classes that keep none of the
set's boxes are errors, not guesses. An image without a label file, or with
an empty one, has no stone; a set in which no image has a label file is refused, as its labels were
surely not found.

What one odd file or line would otherwise cost the whole set is left out and said instead
(``read_image_set``'s ``notes``): an image that cannot be read (an empty or broken file, a DICOM object
that is not a CT image, such as a screenshot) and a box of no width or height. So is what the reader
passed over or assumed: label files that match no image, images outside the ``images`` folders of a set
that has them, boxes of a class the class file does not name, and images read at a pixel size nobody
stated.

Images that carry Hounsfield units are read as such: a DICOM CT image
(``.dcm``, or any file that starts as DICOM does, ``DICM`` at byte 128: ``.IMA`` and the suffix-less
names of PACS exports; one slice in any plane, through ``inference.volume.load_volume``,
its pixel spacing from its header), a 16-bit image (``read_hu16``: the
stored values of CT, HU + 1024, or HU + 32768 as DeepLesion writes them, or signed HU written into an
unsigned file, told
apart by where the image's values lie; a 16-bit copy of a display image,
whose values reach the top of the range, or an 8-bit image saved in a 16-bit file, whose values are all
255 or less, is read as the 8-bit image it is), and a floating-point image whose values are HU (a
research export's TIFF: its minimum below ``FLOAT_HU_MIN``).

8-bit images are in a display window nobody recorded. They become the
model's Hounsfield units through one assumed window, ``ASSUMED_WINDOW``
(level 40, width 400: the usual abdominal soft-tissue window), so grey 0 is
-160 HU and grey 255 is +240 HU; stones and bone are clipped alike at the
top. The model is trained over many other windows (``rewindow``) so that the
assumption need not be right, only plausible. An image that is clearly in a
wide (bone) window, where stones are grey, or that maps the whole range of CT numbers to 8 bits, is
read through the window its own histogram shows instead (``estimate_window``, ``image_hu``); a window
known for a set can be stated (``parse_window``).

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
import logging
import math
import posixpath
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from inference.errors import InferenceError
from inference.volume import CT_IMAGE_STORAGE, Volume, load_volume

logger = logging.getLogger(__name__)

DICOM_SUFFIXES = (".dcm", ".dicom")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", *DICOM_SUFFIXES)
NOT_SNIFFED_SUFFIXES = (".txt", ".yaml", ".yml", ".json", ".xml", ".csv", ".md", ".names", ".data")
"""Files of these kinds are never opened to see whether they are DICOM (``is_dicom_file``)."""
ASSUMED_WINDOW = (40.0, 400.0)
"""(level, width) in HU that grey 0..255 is taken to span."""
Window = str | tuple[float, float]
"""How an 8-bit image becomes HU (``image_hu``): 'auto', 'assumed', or a (level, width) in HU."""
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
AIR_HU = -1000.0
AIR_MAX_GREY = 40
"""The darkest greys where ``estimate_window`` looks for air that its window did not clip to black."""
MIN_AIR_SHARE = 0.02
"""Share of an image's pixels its air must hold to be taken as air (an axial slice holds far more)."""
AIR_WIDTHS = (1500.0, 8000.0)
"""Widths from air and soft tissue outside these are not trusted (a full-range map is 4,096 wide)."""
MIN_BODY_SHARE = 0.85
"""Share of the body's pixels (those above the air) a wide map squeezes between fat and soft tissue."""

_ROBOFLOW = re.compile(r"(_(png|jpg|jpeg|bmp|tif|tiff))*\.rf\.[0-9a-f]+$", re.IGNORECASE)
_TICKS = re.compile(r"(?:^|[-/])(6\d{17})\d{5}(?:-|$)")
"""A .NET tick count (100 ns since year 1; 6xxx... is 2010-2030) inside a UID written with dashes (after
a folder where ``LabelledImage.source`` is qualified by one)."""


class ImageSetError(ValueError):
    """A folder of images that cannot be read: what and why."""


class UnreadableImage(ImageSetError):
    """One file of a set that is no image the reader can take (empty, broken, a DICOM object that is not a
    CT image): ``read_image_set`` leaves it out and says so, where the rest of the set can be read."""


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

    def as_hu(self, window: Window = "auto") -> np.ndarray:
        """The image in HU: the ones it carries, else its grey read through ``image_hu`` (a window names
        what an 8-bit image's grey means; the HU a file carries need none)."""
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
NAME_FILES = ("classes.txt", "obj.names")
"""Where other YOLO tools name them, one name a line (LabelImg: classes.txt; darknet and CVAT: obj.names):
read only where no data.yaml is found."""
CLASS_FILE_LEVELS = 3
"""How many folders above the one given are searched for it (DIR/valid/images given: DIR's is found)."""
STONE_STEMS = ("stone", "calcul", "calcol", "lithiasis", "litiasi", "litiase", "urolith", "nephrolith",
               "ureterolith", "cystolith", "stein", "tasvar")
"""Words (or parts of words) that name a urinary stone, in English, German ("Nierenstein"), Spanish,
Portuguese, Italian and French ("litiasis", "cálculo", "calcolo", "calcul"); "tas var" (Turkish: stone
present) is one too."""
STONE_WORDS = frozenset({"tas", "tasi", "taslar", "taslari"})
"""Turkish "taş" (stone), "böbrek taşı" (kidney stone), "taşları" (its stones): whole words only, as other
words hold the letters ("metastasis")."""
MIMIC_STEMS = ("phlebo", "append", "fecal", "faecal", "copro", "gall", "chole", "sialo", "broncho", "pulp",
               "bilia", "colelit", "safra", "speichel")
"""A stone word with one of these names a stone's mimic or another organ's stone: not a urinary stone
(Spanish "colelitiasis", "cálculo biliar", Turkish "safra taşı" and German "Gallenstein" are gallstones)."""
NEGATING_BEFORE = frozenset({"no", "non", "not", "without", "kein", "keine", "keinen", "ohne", "sin", "sans",
                             "senza", "sem"})
NEGATING_AFTER = frozenset({"free", "negative", "absent", "yok", "frei"})
"""Words that negate a stone word after it, also glued to it ("StoneFree", "Stonefree", "steinfrei")."""
NEGATING_ELSEWHERE = NEGATING_BEFORE | NEGATING_AFTER | {"normal", "none"}


def is_stone_class(name: str) -> bool | None:
    """Whether a class name says urinary stone: True for 'kidney-stones', 'Calculus', 'Ureteral calculi',
    'nephrolithiasis', 'Tas_Var' / 'Taş Var' / 'taş' / 'böbrek taşı' (Turkish), 'Nierenstein' (German),
    'litiasis', 'cálculo'; False for 'kidney', 'cyst', 'phlebolith', 'gallstone', 'no_stone', 'NonStone',
    'stone-free', 'StoneFree', 'stonenegative', 'Tas_Yok'; None where a negating word stands apart from the
    stone word ('non-obstructing stone', 'stone without hydronephrosis'): the name alone cannot say, so
    the set's classes must be given."""
    tokens: list[str] = []
    for t in re.findall(r"[a-z]+", _plain(name)):
        if t == "var" and tokens and tokens[-1] == "tas":
            tokens[-1] = "tasvar"
        else:
            tokens.append(t)
    if any(m in t for t in tokens for m in MIMIC_STEMS):
        return False
    stone_at = [i for i, t in enumerate(tokens) if t in STONE_WORDS or any(s in t for s in STONE_STEMS)]
    if not stone_at:
        return False
    for i in stone_at:
        if tokens[i].startswith("no"):  # "nostone", "nonstone"
            return False
        if any(tokens[i].endswith(w) and tokens[i] != w for w in NEGATING_AFTER):  # "stonefree", "steinfrei"
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
    names: dict[int, str] | None = field(default=None, hash=False)
    """The classes the set's class file names (None where it has none, or it names none)."""
    where: str = ""
    """The class file, as its folder and name (``set/data.yaml``), or ''."""


def read_text_file(path: Path) -> str:
    """A small text file written by any tool: UTF-16 where it starts with a UTF-16 byte-order mark, else UTF-8
    with or without one, else Windows' Turkish code page (cp1254) or, failing that, Latin-1, which never
    fails: a class file saved by a Turkish Windows program is read, not refused."""
    data = path.read_bytes()
    if data[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError:
            pass
    for encoding in ("utf-8-sig", "cp1254"):
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    return data.decode("latin-1")


def _class_names(path: Path) -> dict[int, str] | None:
    if path.name.lower() in NAME_FILES:
        lines = read_text_file(path).splitlines()
        while lines and not lines[-1].strip():
            lines.pop()
        return {i: line.strip() for i, line in enumerate(lines)} or None
    import yaml

    try:
        data = yaml.safe_load(read_text_file(path))
    except yaml.YAMLError as exc:
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


def _visible(path: Path, folder: Path) -> bool:
    """Whether a path below ``folder`` is part of the set: not hidden, not in a hidden folder or ``__MACOSX``."""
    return not any(part.startswith(".") or part == "__MACOSX" for part in path.relative_to(folder).parts)


def class_file(folder: Path) -> Path | None:
    """The ``data.yaml`` (or ``dataset.yaml``) of the image set at ``folder``: in it or up to
    ``CLASS_FILE_LEVELS`` folders above, the nearest; without one, a ``classes.txt`` or ``obj.names``
    (``NAME_FILES``) there, else below ``folder`` beside the images or their labels (the shallowest).
    ImageSetError where several of those below say different names."""
    here = Path(folder).resolve()
    above = [here, *here.parents][: CLASS_FILE_LEVELS + 1]
    for names in (CLASS_FILES, NAME_FILES):
        for d in above:
            for name in names:
                if (d / name).is_file():
                    return d / name
    if not here.is_dir():
        return None
    below = sorted((p for p in here.rglob("*") if p.name.lower() in NAME_FILES and p.is_file() and _visible(p, here)),
                   key=lambda p: (len(p.parts), str(p)))
    if not below:
        return None
    differ = [p for p in below[1:] if _class_names(p) != _class_names(below[0])]
    if differ:
        raise ImageSetError(f"{below[0].relative_to(here)} and {differ[0].relative_to(here)} name different "
                            "classes; say which are stones with --stone-classes, or keep one class file")
    return below[0]


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
        return StoneClasses(frozenset(given), f"classes {', '.join(map(str, sorted(set(given))))} (given)", names, where)
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
                                               f"(named so in {where})", names, where)
    if len(names) == 1:
        return StoneClasses(None, f"every class ({where} names one class, {listed})", names, where)
    raise ImageSetError(f"{where} names the classes {listed} and none of them as a stone; "
                        "say which are with --stone-classes")


LABEL_TOLERANCE = 1e-3
"""How far outside [0, 1] a label's normalised value may lie and be clipped to it, not refused."""


def read_boxes(text: str, rows: int, columns: int, where: str = "",
               classes: frozenset[int] | None = None, skipped: list[str] | None = None) -> tuple[Box, ...]:
    """YOLO lines -> boxes in pixels of the ``classes`` (None: every one); a bad line raises ImageSetError.

    A line is a box, ``class cx cy w h`` (normalised; a sixth value, a detector's confidence, is ignored),
    or a polygon, ``class x1 y1 x2 y2 x3 y3 ...`` (three points or more, as segmentation exports write
    it), whose box is the points' bounds. Values within ``LABEL_TOLERANCE`` outside [0, 1] (a tool's
    rounding) are clipped to it. A box of no width or height (a stray click) marks nothing: given a
    ``skipped`` list, its line's place is added to it and the line left out, else it is refused too."""
    return tuple(box for kind, box, _ in box_lines(text, rows, columns, where, skipped)
                 if classes is None or kind in classes)


def box_lines(text: str, rows: int, columns: int, where: str = "",
              skipped: list[str] | None = None) -> list[tuple[int, Box, int]]:
    """(class, box in pixels, line number) of every box line of a label file (``read_boxes``)."""
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
            if (w == 0.0 or h == 0.0) and low <= cx <= high and low <= cy <= high and w <= high and h <= high:
                if skipped is None:
                    raise ImageSetError(f"{where}:{n}: box of no width or height: {line.strip()!r}")
                skipped.append(f"{where}:{n}")
                continue
            if not (low <= cx <= high and low <= cy <= high and 0.0 < w <= high and 0.0 < h <= high):
                raise ImageSetError(f"{where}:{n}: box outside the image: {line.strip()!r}")
            cx, cy, w, h = (min(max(v, 0.0), 1.0) for v in (cx, cy, w, h))
            box = Box(max(0.0, (cx - w / 2) * columns), max(0.0, (cy - h / 2) * rows),
                      min(float(columns), (cx + w / 2) * columns), min(float(rows), (cy + h / 2) * rows))
        elif len(values) >= 6 and len(values) % 2 == 0:  # a polygon
            inside = all(low <= v <= high for v in values)
            values = [min(max(v, 0.0), 1.0) for v in values]
            xs, ys = values[0::2], values[1::2]
            if inside and (max(xs) <= min(xs) or max(ys) <= min(ys)) and skipped is not None:
                skipped.append(f"{where}:{n}")
                continue
            if not inside or max(xs) <= min(xs) or max(ys) <= min(ys):
                raise ImageSetError(f"{where}:{n}: polygon outside the image or without area: {line.strip()!r}")
            box = Box(min(xs) * columns, min(ys) * rows, max(xs) * columns, max(ys) * rows)
        else:
            raise ImageSetError(f"{where}:{n}: expected 'class cx cy w h' (and a confidence) or a polygon "
                                f"('class x1 y1 x2 y2 x3 y3 ...'), got {line.strip()!r}")
        boxes.append((int(kind), box, n))
    return boxes


SCALED_16BIT_MIN = 40_000
"""A 16-bit image whose values reach this is a display image scaled to 16 bits, not stored CT values:
CT's stored values stop near 4,095 + 1,024 (HU + 1024) or 3,071 + 32,768 (HU + 32768)."""
OFFSET_32768_MEDIAN = 16_384
"""Median at or above which a 16-bit CT image is taken as HU + 32768 (air alone is 31,768 there)."""
WRAPPED_GAP = (8_192, 57_344)
"""An unsigned 16-bit image with values at both ends and none between these holds signed HU
(``hu.astype(np.uint16)``: -1000 becomes 64,536, +40 stays 40); a display image has greys between."""
FLOAT_HU_MIN = -500.0
"""A floating-point image whose minimum lies below this holds HU (air); other floats (0-1) say nothing."""


def read_hu16(values: np.ndarray, where: str = "") -> tuple[np.ndarray, np.ndarray | None]:
    """(grey, HU) of a 16-bit image: HU when it holds stored CT values or signed HU written unsigned (see
    the module's text), else (its 8-bit grey, None) for a display image scaled to 16 bits or an 8-bit image
    saved as 16 bits (every value 0-255: the grey levels themselves)."""
    if int(values.min()) >= 0 and int(values.max()) <= 255:
        return values.astype(np.uint8), None
    if values.dtype == np.int16 and int(values.min()) < 0:  # signed with negatives: the HU themselves
        hu = values.astype(np.float32)
    elif values.dtype == np.uint16 and int(values.max()) >= WRAPPED_GAP[1] and int(values.min()) < WRAPPED_GAP[0] \
            and not ((values >= WRAPPED_GAP[0]) & (values < WRAPPED_GAP[1])).any():
        hu = values.view(np.int16).astype(np.float32)  # negatives wrapped round: the HU themselves
    elif int(values.max()) >= SCALED_16BIT_MIN:
        return np.round(values.astype(np.float32) / 257.0).astype(np.uint8), None
    elif float(np.median(values)) >= OFFSET_32768_MEDIAN:
        hu = values.astype(np.float32) - 32768.0
    else:
        hu = values.astype(np.float32) - 1024.0
    _check_hu(hu, f"{where}: 16-bit values")
    return hu_to_grey(hu, ASSUMED_WINDOW), hu


def _check_hu(hu: np.ndarray, what: str) -> None:
    if float(np.median(hu)) > 1500.0 or float(hu.max()) < -200.0:
        raise ImageSetError(f"{what} that are not CT numbers under any known offset")


def is_dicom_file(path: Path) -> bool:
    """Whether a file starts as a DICOM file does (``DICM`` at byte 128), whatever its name: PACS and CD
    exports name their files ``IM000001``, ``1.2.840...`` or ``*.IMA``."""
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:] == b"DICM"
    except OSError:
        return False


def read_image(path: Path) -> tuple[np.ndarray, np.ndarray | None, float, str | None]:
    """(grey, HU or None, pixel mm, StudyInstanceUID or None) of an image file: 8-bit (colour averaged),
    16-bit, floating-point HU, or a DICOM CT image of one slice in any plane (see the module's text).
    UnreadableImage for a file that is no image it can read (empty, broken, not DICOM, or a DICOM object
    that is not a CT image); ImageSetError for an image it could only misread."""
    suffix = path.suffix.lower()
    if suffix in DICOM_SUFFIXES or (suffix not in IMAGE_SUFFIXES and is_dicom_file(path)):
        try:
            volume = load_volume([path])
        except InferenceError as exc:
            raise UnreadableImage(f"{path}: {exc}") from exc
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
        size = path.stat().st_size if path.exists() else 0
        raise UnreadableImage(f"{path}: " + ("an empty file" if size == 0 else "not an image OpenCV can read"))
    if data.ndim == 3:
        channels = data[..., :3]
        data = cv2.cvtColor(channels, cv2.COLOR_BGR2GRAY) if data.dtype == np.uint8 else channels.mean(axis=2)
        data = data.astype(channels.dtype)
    if data.dtype in (np.uint16, np.int16):
        grey, hu = read_hu16(data, str(path))
        return np.ascontiguousarray(grey), hu, ASSUMED_PIXEL_MM, None
    if data.dtype.kind == "f":
        if not np.isfinite(data).all() or float(data.min()) >= FLOAT_HU_MIN:
            raise ImageSetError(f"{path}: {data.dtype} pixels that are not HU (no air below {FLOAT_HU_MIN:g}, or "
                                "values that are not numbers); 8-bit, 16-bit, HU or DICOM images only")
        hu = data.astype(np.float32)
        _check_hu(hu, f"{path}: {data.dtype} values")
        return hu_to_grey(hu, ASSUMED_WINDOW), np.ascontiguousarray(hu), ASSUMED_PIXEL_MM, None
    if data.dtype != np.uint8:
        raise ImageSetError(f"{path}: {data.dtype} pixels; 8-bit, 16-bit, HU or DICOM images only")
    return np.ascontiguousarray(data), None, ASSUMED_PIXEL_MM, None


LABEL_FOLDERS = ("labels", "annotations")
"""What an ``images`` folder's sibling holding its label files is called, by preference (any case)."""


def label_file(image: Path, listings: dict[Path, list[str]] | None = None) -> Path:
    """Where an image's YOLO label file is: the path with its last ``images`` folder read as ``labels`` and
    the suffix ``.txt`` (``DIR/images/a.jpg`` -> ``DIR/labels/a.txt``, as Roboflow writes it;
    ``DIR/images/train/a.jpg`` -> ``DIR/labels/train/a.txt``, as Ultralytics does; ``annotations`` where
    there is no ``labels`` folder), else beside the image (``a.jpg`` -> ``a.txt``) when only that one
    exists. The ``.txt`` may be in any case (``a.TXT``); a file taken as DICOM by its content, whose name
    may hold dots (``1.2.840.1``), has its label at ``1.2.840.1.txt`` or ``1.2.840.txt``. Where none
    exists, the path where it was looked for first. ``listings`` caches the folders' contents over many
    images."""
    parts = image.parts
    stems = [image.stem] if image.suffix.lower() in IMAGE_SUFFIXES else [image.name, image.stem]
    beside = _existing_txt(image.parent, stems, listings)
    at = [i for i, part in enumerate(parts[:-1]) if part.lower() == "images"]
    if at:
        folder = Path(*parts[: at[-1]], _labels_folder(Path(*parts[: at[-1]])), *parts[at[-1] + 1: -1])
        mapped = _existing_txt(folder, stems, listings)
        if mapped is not None or beside is None:
            return mapped if mapped is not None else folder / (stems[-1] + ".txt")
    return beside if beside is not None else image.parent / (stems[-1] + ".txt")


def _existing_txt(folder: Path, stems: Sequence[str], listings: dict[Path, list[str]] | None) -> Path | None:
    """``folder/STEM.txt`` for the first of ``stems`` that has one, the exact name first, then in any case."""
    for stem in stems:
        if (folder / (stem + ".txt")).exists():
            return folder / (stem + ".txt")
    if listings is None:
        listings = {}
    if folder not in listings:
        listings[folder] = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    for stem in stems:
        wanted = (stem + ".txt").lower()
        match = [name for name in listings[folder] if name.lower() == wanted]
        if match:
            return folder / match[0]
    return None


def _labels_folder(parent: Path) -> str:
    """The name of ``parent``'s labels folder: ``labels``, else one so named in another case (``Labels``), else
    an ``annotations`` folder (in any case), else ``labels``."""
    if (parent / "labels").is_dir() or not parent.is_dir():
        return "labels"
    folders = sorted(d.name for d in parent.iterdir() if d.is_dir())
    for wanted in LABEL_FOLDERS:
        match = [name for name in folders if name.lower() == wanted]
        if match:
            return match[0]
    return "labels"


def read_label_text(path: Path) -> str:
    """A label file's text: UTF-16 where it starts with a UTF-16 byte-order mark (Windows PowerShell's ``>``),
    else UTF-8 with or without one (Notepad); ImageSetError where it is neither."""
    data = path.read_bytes()
    encoding = "utf-16" if data[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE) else "utf-8-sig"
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        raise ImageSetError(f"{path}: not text in UTF-8 or UTF-16: {exc}") from exc


@dataclass(frozen=True)
class _Scan:
    """What ``_scan`` finds below a set's folder."""

    pairs: list[tuple[Path, Path]]
    """(image, ``label_file``) of every image of the set."""
    passed_over: list[Path]
    """Images outside the ``images`` folders of a set that has them: not part of it."""
    files: list[Path]
    """Every file below the folder that is part of it (hidden ones and ``__MACOSX`` left out), sorted."""


def _scan(folder: Path) -> _Scan:
    folder = Path(folder)
    if not folder.is_dir():
        raise ImageSetError(f"{folder} is not a folder")
    files = sorted(p for p in folder.rglob("*") if _visible(p, folder) and p.is_file())
    found = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES
             or (p.suffix.lower() not in NOT_SNIFFED_SUFFIXES and is_dicom_file(p))]
    in_images = [p for p in found if any(part.lower() == "images" for part in p.relative_to(folder).parts[:-1])]
    chosen = in_images or found
    if not chosen:
        raise ImageSetError(f"{folder} has no images ({', '.join(IMAGE_SUFFIXES)}, or DICOM files by their "
                            "content) at or below it")
    listings: dict[Path, list[str]] = {}
    kept = set(chosen)
    return _Scan([(p, label_file(p, listings)) for p in chosen], [p for p in found if p not in kept], files)


def image_files(folder: Path) -> list[tuple[Path, Path]]:
    """(image, ``label_file``) pairs of every image below ``folder`` in an ``images`` folder (any case, at
    any depth), sorted; where none is (``folder`` is one, or a flat set), of every image below ``folder``.
    An image is a file with an image suffix (``IMAGE_SUFFIXES``) or one that starts as DICOM does
    (``is_dicom_file``). Hidden files and folders (``.ipynb_checkpoints``, macOS's ``._`` files) and
    ``__MACOSX`` (what unzipping a Finder zip leaves) are not part of the set."""
    return _scan(folder).pairs


def unique_names(images: Sequence[Path], folder: Path) -> list[str]:
    """``LabelledImage.unique_as`` of each image below ``folder``: '' where its stem is unique among
    ``images``, else its path relative to ``folder`` without its suffix, or with it where that is not
    unique either (``a.jpg`` and ``a.png`` in one folder)."""
    stems = Counter(p.stem for p in images)
    relative = [Path(p).relative_to(Path(folder)) for p in images]
    qualified = [r.with_suffix("").as_posix() if stems[p.stem] > 1 else "" for p, r in zip(images, relative, strict=True)]
    again = Counter(qualified)
    return [r.as_posix() if q and again[q] > 1 else q for q, r in zip(qualified, relative, strict=True)]


NOTE_EXAMPLES = 3
"""How many files or lines a note names before it says how many more."""


def _many(count: int, thing: str, things: str) -> str:
    return f"{count} {thing if count == 1 else things}"


def _listed(items: Sequence[str]) -> str:
    shown = ", ".join(items[:NOTE_EXAMPLES])
    return shown + (f" and {len(items) - NOTE_EXAMPLES} more" if len(items) > NOTE_EXAMPLES else "")


def _shown(path: Path, folder: Path) -> str:
    """A path as a note shows it: relative to the set's folder where it lies below it."""
    try:
        return Path(path).relative_to(folder).as_posix()
    except ValueError:
        return str(path)


def _no_labels(folder: Path, scan: _Scan) -> ImageSetError:
    image, label = scan.pairs[0]
    beside = image.parent / (label.stem + ".txt")
    where = f"{label}" + (f" or {beside}" if beside != label else "")
    other = [p.suffix.lower() for p in scan.files if p.suffix.lower() in (".xml", ".json")]
    return ImageSetError(
        f"none of the {len(scan.pairs)} images of {folder} has a label file, so its labels were not found: for "
        f"{_shown(image, folder)} it was looked for at {where}. A YOLO label file, NAME.txt, lies in a labels "
        "(or annotations) folder beside the images folder (DIR/labels/NAME.txt for DIR/images/NAME.jpg) or beside "
        "its image; a stone-free image takes an empty NAME.txt"
        + ("; Pascal VOC (.xml) and COCO (.json) annotations are not read" if other else ""))


def _unmatched_labels(folder: Path, scan: _Scan) -> list[Path]:
    """The .txt files in the set's label folders or beside its images that are no image's label file."""
    used = {label for _, label in scan.pairs if label.exists()}
    folders = {label.parent for label in used} | {image.parent for image, _ in scan.pairs}
    candidates = {p for p in scan.files if p.suffix.lower() == ".txt"
                  and (p.parent in folders or any(part.lower() in LABEL_FOLDERS for part in p.relative_to(folder).parts[:-1]))}
    for d in {label.parent for label in used}:  # label folders outside the one given (DIR/test/images given)
        if not d.is_relative_to(folder):
            candidates |= {p for p in d.iterdir() if p.suffix.lower() == ".txt" and p.is_file()}
    return sorted(p for p in candidates - used if p.name.lower() not in NAME_FILES)


INVERTED_BORDER_SHARE = 0.5
"""An 8-bit image whose outermost pixels are at least this share white (and almost none black) shows what
lies around the body white: ``looks_inverted``."""


def looks_inverted(grey: np.ndarray) -> bool:
    """Whether an 8-bit image looks shown inverted (white air and black bone, as a MONOCHROME1 display or an
    inverting export shows CT): its border mostly white (>= 250) and almost never black (<= 5), where a CT
    image in any window shows air black and a crop inside the body shows tissue grey. Read as it is, such an
    image's stones are black and never found: the set's notes say so (probe 11 #17)."""
    if grey.dtype != np.uint8 or min(grey.shape) < 16:
        return False
    border = np.concatenate([grey[:2].ravel(), grey[-2:].ravel(), grey[:, :2].ravel(), grey[:, -2:].ravel()])
    return bool((border >= 250).mean() >= INVERTED_BORDER_SHARE and (border <= 5).mean() <= 0.02)


def read_image_set(folder: Path, pixel_mm: float | None = None, estimate_pixel: str = "off",
                   classes: Sequence[int] | None = None, notes: list[str] | None = None) -> list[LabelledImage]:
    """Every labelled image below ``folder`` (see the module's text); ``pixel_mm`` is the spacing of the
    images that carry none (default ``ASSUMED_PIXEL_MM``; with ``estimate_pixel`` 'both' or 'finer',
    ``estimate_pixel_mm``'s, 'finer' only where it says the pixels are smaller: docs/model.md, the
    thirteenth and fourteenth candidates); ``classes``: the box classes that are stones (default:
    ``stone_classes``' reading of the set's class file).

    ``notes``, where given, gets one line for each kind of thing the reader left out or assumed: files it
    could not read, box lines of no width or height, label files that match no image, images outside the
    ``images`` folders, boxes of classes the class file does not name, and the images read at a pixel
    size they do not carry. Without it, what was left out goes to the log as warnings. A set none of whose
    images has a label file, or none of whose images can be read, is refused."""
    chosen = stone_classes(folder, classes)
    stones = chosen.classes
    if estimate_pixel not in ("off", "both", "finer"):
        raise ValueError(f"estimate_pixel {estimate_pixel!r}: 'off', 'both' or 'finer'")
    if pixel_mm is not None and not 0.05 <= pixel_mm <= 5.0:
        raise ImageSetError(f"a pixel spacing of {pixel_mm} mm is not a CT image's (0.05-5 mm)")
    folder = Path(folder)
    scan = _scan(folder)
    if not any(label.exists() for _, label in scan.pairs):
        raise _no_labels(folder, scan)
    out = []
    boxes_of_any_class = 0
    unreadable: list[tuple[Path, str]] = []
    degenerate: list[str] = []
    unnamed: list[tuple[int, str]] = []
    unique = unique_names([image for image, _ in scan.pairs], folder)
    for (image_path, label_path), unique_as in zip(scan.pairs, unique, strict=True):
        try:
            grey, hu, own_mm, study_uid = read_image(image_path)
        except UnreadableImage as exc:
            unreadable.append((image_path, str(exc).removeprefix(f"{image_path}: ")))
            continue
        text = read_label_text(label_path) if label_path.exists() else ""
        rows, columns = grey.shape
        lines = box_lines(text, rows, columns, str(label_path), degenerate)
        if stones is not None:
            boxes_of_any_class += len(lines)
        if chosen.names:
            unnamed.extend((kind, f"{_shown(label_path, folder)}:{n}") for kind, _, n in lines if kind not in chosen.names)
        if study_uid:
            mm, how = own_mm, "file"
        elif pixel_mm is not None:
            mm, how = pixel_mm, "given"
        elif estimate_pixel != "off":
            estimate = estimate_pixel_mm(hu if hu is not None else image_hu(grey), finer_only=estimate_pixel == "finer")
            mm, how = estimate.pixel_mm, estimate.how
        else:
            mm, how = ASSUMED_PIXEL_MM, "assumed"
        boxes = tuple(box for kind, box, _ in lines if stones is None or kind in stones)
        out.append(LabelledImage(image_path, grey, boxes, hu=hu, pixel_mm=mm, study_uid=study_uid, pixel_from=how,
                                 has_label_file=label_path.exists(), unique_as=unique_as))
    if not out:
        reasons = [f"{path}: {why}" for path, why in unreadable]
        raise ImageSetError(f"no image of {folder} can be read: {_listed(reasons)}")
    if boxes_of_any_class and not any(im.boxes for im in out):
        raise ImageSetError(f"the label files hold {boxes_of_any_class} boxes and none of the classes counted as "
                            f"stones ({chosen.how}); say which are with --stone-classes")
    left_out = []
    if unreadable:
        left_out.append(f"left out {len(unreadable)} of {_many(len(scan.pairs), 'image file', 'image files')} "
                        "that cannot be read: "
                        + _listed([f"{_shown(path, folder)} ({why})" for path, why in unreadable]))
    if degenerate:
        left_out.append(f"left out {_many(len(degenerate), 'box line', 'box lines')} of no width or height: "
                        + _listed([_shown(Path(place), folder) for place in degenerate]))
    said = []
    unmatched = _unmatched_labels(folder, scan)
    if unmatched:
        said.append(f"{_many(len(unmatched), '.txt file', '.txt files')} in the label folders or beside the images "
                    f"{'matches' if len(unmatched) == 1 else 'match'} no image (not read): "
                    + _listed([_shown(p, folder) for p in unmatched]))
    if scan.passed_over:
        said.append(f"ignored {_many(len(scan.passed_over), 'image', 'images')} outside the images folders, as "
                    "the set has images folders: " + _listed([_shown(p, folder) for p in scan.passed_over]))
    if unnamed:
        kinds = sorted({kind for kind, _ in unnamed})
        said.append(f"not counted as stones: {_many(len(unnamed), 'box', 'boxes')} of "
                    f"{'class' if len(kinds) == 1 else 'classes'} {', '.join(map(str, kinds))}, which {chosen.where} "
                    f"does not name (it names {', '.join(map(str, sorted(chosen.names or {})))}): "
                    + _listed([place for _, place in unnamed]))
    inverted = [im for im in out if im.hu is None and looks_inverted(im.grey)]
    if inverted:
        said.append(f"{len(inverted)} of {len(out)} images look inverted (white around the body, black bone, as a "
                    "MONOCHROME1 display shows CT): read as they are, their stones show black and are not found; "
                    "invert them (255 - grey) to measure them: " + _listed([_shown(im.path, folder) for im in inverted]))
    carried = Counter(im.pixel_from for im in out)
    if carried["assumed"]:
        said.append(f"{carried['assumed']} of {len(out)} images carry no pixel size and were read at the assumed "
                    f"{ASSUMED_PIXEL_MM} mm (say it with --pixel-mm where it is known)")
    if carried["given"]:
        said.append(f"{carried['given']} of {len(out)} images carry no pixel size and were read at the "
                    f"{pixel_mm} mm given")
    if carried["body width"]:
        said.append(f"{carried['body width']} of {len(out)} images carry no pixel size and were read at the size "
                    "their body's width gives")
    if notes is not None:
        notes.extend(left_out + said)
    else:
        for line in left_out:
            logger.warning("%s: %s", folder, line)
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
    """'assumed', 'fat and soft tissue' or 'air and soft tissue' (estimated from those two peaks)."""

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

    An image that maps the whole range of CT numbers to 8 bits (-1024..3071 to 0..255, or
    its own minimum to its maximum, as many DICOM-to-PNG conversions do) shows its air:
    a peak among the darkest greys that stands above grey 0, where a window that clips air
    to black piles it. There, fat and soft tissue lie a few grey levels apart and seldom
    part, so the window is taken from air (``AIR_HU``) and soft tissue instead ('air and
    soft tissue'), when the air holds ``MIN_AIR_SHARE`` of the image with a valley between
    it and the body, almost nothing is saturated, the width lies within ``AIR_WIDTHS`` and
    the body is squeezed as such a window squeezes it (``MIN_BODY_SHARE`` of it between
    fat and soft tissue). No image in a soft-tissue or bone window, where air is black, is
    read so.

    Otherwise the estimate replaces the assumed window only when the image is clearly in a wide
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
    if saturated <= MAX_SATURATED_SHARE:
        from_air = _air_and_soft_tissue(every, ndimage.gaussian_filter1d(counts, 1.0), soft)
        if from_air is not None:
            return from_air
    fat = next((g for g in sorted(peaks, key=lambda g: -smoothed[g])
                if 12 <= g <= soft - 10 and smoothed[g:soft].min() < 0.8 * min(smoothed[g], smoothed[soft])), None)
    if fat is not None and saturated <= MAX_SATURATED_SHARE:
        width = 255.0 * (SOFT_TISSUE_HU - FAT_HU) / (soft - fat)
        if width >= WIDE_WINDOW_HU and _peak_fwhm(ndimage.gaussian_filter1d(counts, 1.0), soft) <= NARROW_PEAK_GREY:
            width = min(width, 4000.0)
            return WindowEstimate(SOFT_TISSUE_HU + width / 2 - soft * width / 255.0, width, "fat and soft tissue")
    return WindowEstimate(level0, width0, "assumed")


def _air_and_soft_tissue(every: np.ndarray, fine: np.ndarray, soft: int) -> WindowEstimate | None:
    """The window of an image whose air stands clear of black, from its air and soft-tissue peaks, or None
    (``estimate_window``); ``every``: the grey histogram, ``fine``: it smoothed, 0 and 255 left out."""
    air = 1 + int(np.argmax(fine[1: AIR_MAX_GREY + 1]))
    if air >= soft - 10 or every[air] <= every[0]:  # air piled at black: clipped, so its grey says nothing
        return None
    if every[max(air - 3, 1): air + 4].sum() < MIN_AIR_SHARE * every.sum():
        return None
    if fine[air: soft + 1].min() >= 0.1 * min(fine[air], fine[soft]):
        return None
    width = 255.0 * (SOFT_TISSUE_HU - AIR_HU) / (soft - air)
    if not AIR_WIDTHS[0] <= width <= AIR_WIDTHS[1]:
        return None
    valley = air + int(np.argmin(fine[air: soft + 1]))
    low = max(valley + 1, int(np.floor(soft + (FAT_HU - 120.0 - SOFT_TISSUE_HU) * 255.0 / width)))
    high = int(np.ceil(soft + 140.0 * 255.0 / width))
    if every[low: high + 1].sum() < MIN_BODY_SHARE * every[valley + 1:].sum():
        return None
    return WindowEstimate(SOFT_TISSUE_HU + width / 2 - soft * width / 255.0, width, "air and soft tissue")


def _peak_fwhm(smoothed: np.ndarray, at: int) -> int:
    half = smoothed[at] / 2
    lo, hi = at, at
    while lo > 0 and smoothed[lo] > half:
        lo -= 1
    while hi < 255 and smoothed[hi] > half:
        hi += 1
    return hi - lo


def image_hu(grey: np.ndarray, window: Window = "auto") -> np.ndarray:
    """An 8-bit image as HU: through ``estimate_window`` ('auto'), the assumed window ('assumed'), or a
    window stated as (level, width) in HU, exactly."""
    if isinstance(window, tuple | list):
        return grey_to_hu(grey, _stated_window(window))
    if window == "assumed":
        return grey_to_hu(grey)
    if window != "auto":
        raise ValueError(f"window {window!r}: 'auto', 'assumed' or (level, width) in HU")
    return grey_to_hu(grey, estimate_window(grey).window)


def _stated_window(window: Sequence[float]) -> tuple[float, float]:
    if len(window) != 2:
        raise ValueError(f"window {window!r}: (level, width) in HU")
    level, width = float(window[0]), float(window[1])
    if not (math.isfinite(level) and math.isfinite(width) and width > 0):
        raise ValueError(f"window {window!r}: a finite level and a width above 0 HU")
    return level, width


def parse_window(text: str) -> str | tuple[float, float]:
    """A window as a command line states it: 'auto' (``estimate_window``), 'assumed' (``ASSUMED_WINDOW``), or
    LEVEL/WIDTH in HU ('40/400' a soft-tissue window, '1024/4096' the whole -1024..3071 range of an 8-bit
    conversion), for a set whose 8-bit images are known to be in one window. ValueError for anything else."""
    plain = text.strip().lower()
    if plain in ("auto", "assumed"):
        return plain
    match = re.fullmatch(r"\s*([-+]?[0-9]*\.?[0-9]+)\s*/\s*([-+]?[0-9]*\.?[0-9]+)\s*", text)
    if match is None:
        raise ValueError(f"window {text!r}: 'auto', 'assumed' or LEVEL/WIDTH in HU, such as 40/400 or 1024/4096")
    level, width = float(match.group(1)), float(match.group(2))
    if width <= 0:
        raise ValueError(f"window {text!r}: the width (after the /) must be above 0 HU")
    return level, width


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
