"""Whether a CT series shows the abdomen, as far as its header says, and the patient's age.

The stone model is for non-contrast CT of an adult's abdomen and pelvis. A
scanner that pushes every series, or a PACS routing rule too broad, sends
head, chest, cardiac and limb CT and the morning's quality-control phantom
too: read, a head CT's pineal gland came back coded as a urinary stone and a
calcium phantom's inserts as eight (probe 46), and a chest CT's "no stone"
spoke of kidneys it does not show. So the node tells them apart before the
model reads them (``uronode.completion``), and says so on what it reports
where it reads one all the same (``inference.volume``).

A series skipped wrongly gets no result at all, and one read wrongly gets a
result a radiologist can dismiss; so only clear evidence skips (review 41):

- a **phantom** or quality-control scan (:data:`PHANTOM`, :data:`PHANTOM_ROOTS`)
  named in the series' Body Part Examined (0018,0015), Protocol Name
  (0018,1030), Series or Study Description, whatever else they say ("QA
  Abdomen phantom", "Wasserphantom");
- else a word of **another region** (:data:`REGIONS`) in the series' Protocol
  Name or Series Description, and no word of the abdomen, the pelvis or the
  urinary tract (:data:`ABDOMEN`, :data:`ABDOMEN_ROOTS`) in them or in its
  Body Part Examined. A stone of no organ (:data:`STONE`: "stone", "Stein",
  "calculus") keeps a series that names no region, not one that does (a neck
  CT for a salivary stone, review 42). Where the Protocol Name and the Series
  Description name neither, the Study Description is read the same way. Body
  Part Examined alone never skips: it is often left at a protocol's default
  ("CHEST" on an abdomen), so it only says "abdomen" (to keep a series) or,
  for the caution, the region;
- and the series is no longer than that region runs (:data:`AT_MOST_MM`,
  ``uronode.completion.qualify``): a chest-abdomen-pelvis or a head-to-toe
  trauma scan named by its first region reaches the kidneys.

Words are read in capitals without accents ("Schädel" and "Schaedel" alike),
split at every sign and where a word's letters meet digits or a capital
follows a small letter ("HeadRoutine", "Abdomen5mm"), each alone and each
joined with the next ("CALCIUM SCORE"); a position on the table ("feet
first") and the head of the pancreas name no region. Abdomen words are also
found inside longer words by their roots ("Oberbauch", "Nierenstein",
"ABDOMINOPELVIC", "Urografia"): a series kept wrongly costs little. The
reason names the word found, never the free text it was in (a description
may hold a name).
"""

from __future__ import annotations

import datetime
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

PHANTOM_KIND = "a phantom or quality-control scan"
PHANTOM = frozenset({
    "QA", "QC", "CATPHAN", "CALIBRATION", "DAILYQA", "QUALITYCONTROL", "QUALITYASSURANCE", "CONSTANCY",
    "KONSTANZPRUFUNG", "KONSTANZPRUEFUNG",
})
PHANTOM_ROOTS = ("PHANTOM", "FANTOOM", "FANTOCCIO", "FANTOMA")
"""Words, and roots inside longer words ("WASSERPHANTOM"), that name a phantom or a quality-control scan: never a
patient, whatever region they name."""
REGIONS: dict[str, frozenset[str]] = {
    "a head or neck CT": frozenset({
        "HEAD", "BRAIN", "SKULL", "CRANIUM", "CRANIAL", "CEREBRAL", "CCT", "SINUS", "SINUSES", "ORBIT", "ORBITS",
        "FACE", "FACIAL", "MAXILLOFACIAL", "DENTAL", "MANDIBLE", "MAXILLA", "IAC", "TEMPORALBONE", "TEMPORALBONES",
        "PETROUS", "NECK", "CSPINE", "HEADNECK", "SCHADEL", "SCHAEDEL", "KOPF", "HIRN", "HWS", "NNH", "FELSENBEIN",
        "HALS", "CRANE", "CERVEAU", "TETE", "COU", "CRANIO", "CERVELLO", "TESTA", "COLLO", "CEREBRO", "ENCEFALO",
        "CABEZA", "CRANEO", "CUELLO", "HOOFD", "HERSENEN", "SCHEDEL",
    }),
    "a cardiac CT": frozenset({
        "HEART", "CARDIAC", "CORONARY", "CORONARIES", "CALCIUMSCORE", "CALCIUMSCORING", "CASCORE", "CASCORING",
        "CACS", "AGATSTON", "KALKSCORE", "HERZ", "KORONAR", "KORONARIEN", "CARDIO", "COEUR", "CUORE", "CORAZON",
        "HART", "TAVI", "TAVR",
    }),
    "a chest CT": frozenset({
        "CHEST", "THORAX", "THORACIC", "LUNG", "LUNGS", "PULMONARY", "CTPA", "THORAKS", "LUNGE", "POUMON",
        "POUMONS", "TORACE", "TORAX", "POLMONE", "POLMONI", "PULMON", "TSPINE", "BWS",
    }),
    "a CT of a limb": frozenset({
        "KNEE", "ANKLE", "FOOT", "FEET", "HAND", "WRIST", "ELBOW", "SHOULDER", "FOREARM", "FEMUR", "TIBIA",
        "FIBULA", "HUMERUS", "EXTREMITY", "EXTREMITIES", "UPPEREXTREMITY", "LOWEREXTREMITY", "UPPERLIMB",
        "LOWERLIMB", "KNIE", "SPRUNGGELENK", "FUSS", "SCHULTER", "HANDGELENK", "ELLENBOGEN", "GENOU", "CHEVILLE",
        "EPAULE", "GINOCCHIO", "CAVIGLIA", "SPALLA", "RODILLA", "TOBILLO", "HOMBRO",
    }),
}
"""Words that name a region the model is not for, by what the reason calls it: defined terms of Body Part
Examined (PS3.16 Annex L) and the words sites use in protocols and descriptions, in the languages the contrast
words (``uronode.contrast``) are read in."""
AT_MOST_MM = {"a head or neck CT": 300.0, "a cardiac CT": 300.0, "a chest CT": 450.0, "a CT of a limb": 450.0}
"""The longest a series of each region runs along the body: a longer one named by it reaches the kidneys (a
chest-abdomen-pelvis scan, a head-to-toe trauma scan, a leg run-off from the aorta, named by their first region)
and is read (``uronode.completion.qualify``); so is one whose length is not known."""
ABDOMEN = frozenset({
    "ABD", "ABDO", "AP", "PEL", "KUB", "URO", "CTU", "IVP", "CAP", "TAP", "HIP", "HIPS", "LSPINE", "TLSPINE", "LWS",
    "SACRUM", "WHOLEBODY", "POLYTRAUMA", "GANZKORPER", "RENI", "RENE", "REIN", "REINS", "PELVI", "BUIK", "FLANK",
    "COLON", "LIVER", "LEBER", "SPLEEN", "APPENDIX", "FEMORAL", "NIER", "RINON", "RINONE", "BATIN", "KARIN",
    "BOBREK", "MESANE", "ILIAC", "ILIACA", "BASSIN", "BACINO",
})
"""Whole words that say the series shows the abdomen, the pelvis or the urinary tract (in part); "A/P" reads as
AP. A series read wrongly costs little, so they keep it."""
ABDOMEN_ROOTS = (
    "ABDOM", "ADDOM", "PELV", "KIDNEY", "RENAL", "URETER", "URETHR", "BLADDER", "URINAR", "URINAI", "URINER",
    "UROLOG", "UROGRA", "UROTAC", "UROTC", "UROSCAN", "UROLITH", "UROGENIT", "NEPHR", "NEFR", "COLIC", "COLIQU",
    "KOLIK", "NIERE", "NIERST", "BAUCH", "BECKEN", "HARN", "BLASE", "VESSIE", "VESCIC", "VESICA", "VEJIG", "BLAAS",
    "BEKKEN", "BUIK", "HEMATUR", "HAEMATUR", "RETROPERIT", "PROSTAT", "ADRENAL", "PANCREA", "HEPAT", "CYSTO",
    "PYELO", "LUMBA", "LOMBA", "GASTR", "COLONOGRA", "EPIGAST",
)
"""Roots of abdomen words, found inside longer words ("OBERBAUCH", "NIERENSTEIN", "ABDOMINOPELVIC")."""
STONE = frozenset({"STONE", "STONES", "STEIN", "STEINE", "STEEN", "STENEN", "LITHIASIS", "LITIASIS", "LITIASI"})
STONE_ROOTS = ("CALCULU", "CALCULI", "CALCULO", "CALCULS", "CALCOL", "LITHIAS", "LITIAS", "KONKREMENT", "STEINS",
               "STEINP")
"""Words of a stone, of no organ: they keep a series that names no other region ("Low dose stone 5mm"), never one
that does ("Neck salivary stone": a neck CT, review 42); "CALCULATION" is none."""
CHILD_YEARS = 18
"""Below this age (years) the model's findings are cautioned: it was never measured on children."""

_WORD = re.compile(r"[A-Z]+|[0-9]+")
_CAMEL = re.compile(r"(?<=[a-z])(?=[A-Z])")
_NOT_A_REGION = re.compile(r"\b(?:FEET|HEAD)[\s_-]*FIRST\b|\bPANCREA\w*\s+HEAD\b|\b[FH]F[SP]\b")
"""A patient's position on the table ("feet first", "head first", FFS, HFP) or the head of the pancreas: no
region (review 42: a stone protocol "Feet first" read as a CT of a limb)."""


@dataclass(frozen=True, slots=True)
class Region:
    """What a series' header says it shows, where that is not the abdomen."""

    kind: str
    """What :data:`REGIONS` calls it ("a head or neck CT"), or :data:`PHANTOM_KIND`."""
    word: str
    """The word found, and where: "HEAD in the Series Description", "Body Part Examined PHANTOM"."""

    @property
    def phantom(self) -> bool:
        return self.kind == PHANTOM_KIND


def _words(text: str) -> set[str]:
    """The words of ``text`` (see the module), each alone and each joined with the next."""
    folded = unicodedata.normalize("NFKD", _CAMEL.sub(" ", text).upper().replace("ß", "SS"))
    plain = _NOT_A_REGION.sub(" ", "".join(c for c in folded if not unicodedata.combining(c)))
    words = _WORD.findall(plain)
    return set(words) | {a + b for a, b in zip(words, words[1:], strict=False)}


def _abdomen(words: set[str]) -> bool:
    """Whether ``words`` name the abdomen, the pelvis or the urinary tract (an organ, not a stone alone)."""
    return bool(words & ABDOMEN) or any(root in word for word in words for root in ABDOMEN_ROOTS)


def _stone(words: set[str]) -> bool:
    return bool(words & STONE) or any(root in word for word in words for root in STONE_ROOTS)


def _phantom(words: set[str]) -> list[str]:
    found = (words & PHANTOM) | {word for word in words if any(root in word for root in PHANTOM_ROOTS)}
    return sorted(found, key=lambda word: (len(word), word))  # the word itself before the pair it is in


def _said(where: str, word: str) -> str:
    return f"Body Part Examined {word}" if where == "Body Part Examined" else f"{word} in the {where}"


def other_region(body_part: str = "", protocol: str = "", series_description: str = "",
                 study_description: str = "") -> Region | None:
    """The region or phantom other than the abdomen that the header clearly names (see the module), or None."""
    own = {where: _words(text) for where, text in (("Body Part Examined", body_part), ("Protocol Name", protocol),
                                                    ("Series Description", series_description)) if text}
    study = _words(study_description) if study_description else set()
    for where, words in (*own.items(), ("Study Description", study)):
        if hits := _phantom(words):
            return Region(PHANTOM_KIND, _said(where, hits[0]))
    if any(_abdomen(words) for words in own.values()):
        return None
    texts = {where: words for where, words in own.items() if where != "Body Part Examined"}
    named = _named(texts)
    if not named and not any(_stone(words) for words in texts.values()):  # they name nothing: the study may
        if _abdomen(study):
            return None
        named = _named({"Study Description": study})
    return named[0] if named else None


def _named(texts: dict[str, set[str]]) -> list[Region]:
    return [Region(kind, _said(where, hits[0])) for where, words in texts.items()
            for kind, names in REGIONS.items() if (hits := sorted(words & names))]


def body_part_region(body_part: str) -> Region | None:
    """The region a Body Part Examined alone names (never a reason to skip: a caution's words), or None."""
    words = _words(body_part)
    if hits := _phantom(words):
        return Region(PHANTOM_KIND, _said("Body Part Examined", hits[0]))
    if _abdomen(words):
        return None
    named = _named({"Body Part Examined": words})
    return named[0] if named else None


_ORDER = (PHANTOM_KIND, *REGIONS)


def series_region(rows: Iterable[tuple[str, str, str, str]]) -> Region | None:
    """:func:`other_region` of a series from its images' (body part, protocol, series description, study
    description): None where an image names the abdomen; else a phantom before any region, each in the order
    of :data:`REGIONS`."""
    regions = []
    for row in set(rows):
        region = other_region(*row)
        if region is None and any(text and _abdomen(_words(text)) for text in row):
            return None
        if region is not None:
            regions.append(region)
    return min(regions, key=lambda r: (_ORDER.index(r.kind), r.word)) if regions else None


def caution_region(rows: Iterable[tuple[str, str, str, str]]) -> Region | None:
    """What a caution names of a series read all the same: :func:`series_region`, else, where nothing names the
    abdomen, the region its Body Part Examined alone names (which never skips it)."""
    distinct = set(rows)
    found = series_region(distinct)
    if found is not None or any(text and _abdomen(_words(text)) for row in distinct for text in row):
        return found
    regions = [region for row in distinct if (region := body_part_region(row[0])) is not None]
    return min(regions, key=lambda r: (_ORDER.index(r.kind), r.word)) if regions else None


_AGE = re.compile(r"^(\d{1,3})\s*([DWMY])$")


def age_years(patient_age: str = "", birth_date: str = "", *dates: str) -> float | None:
    """The patient's age in years at the examination: from the Patient's Birth Date and the first of ``dates``
    that is a date (the Study, Series, Acquisition or Content Date), in whole years as a birthday counts them
    (months below 2 years); else from the Patient's Age (AS: "045Y", "006M"). None where neither says it: a
    placeholder age ("000Y", "000D") or a birth date on the examination's day or after it (an unknown patient
    registered that day, a wrong date: the Patient's Age is read then) says nothing."""
    born = _date(birth_date)
    seen = next((d for text in dates if (d := _date(text)) is not None), None)
    if born is not None and seen is not None and seen > born:
        months = (seen.year - born.year) * 12 + seen.month - born.month - (seen.day < born.day)
        return months // 12 if months >= 24 else months / 12
    found = _AGE.match(patient_age.strip().upper())
    if found is None or int(found.group(1)) == 0:
        return None
    return int(found.group(1)) / {"D": 365.25, "W": 52.18, "M": 12.0, "Y": 1.0}[found.group(2)]


def _date(text: str) -> datetime.date | None:
    """A DA value (YYYYMMDD exactly: strptime alone takes "201011" for 2010-01-01), None otherwise."""
    digits = text.strip()
    if not re.fullmatch(r"\d{8}", digits):
        return None
    try:
        return datetime.datetime.strptime(digits, "%Y%m%d").date()
    except ValueError:
        return None
