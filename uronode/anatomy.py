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

- a **phantom** or quality-control scan (:data:`PHANTOM`) named in the series'
  Body Part Examined (0018,0015), Protocol Name (0018,1030) or Series
  Description, whatever else they say ("QA Abdomen phantom");
- else a word of **another region** (:data:`REGIONS`) in the series' Protocol
  Name or Series Description, and no word of the abdomen, the pelvis or the
  urinary tract (:data:`ABDOMEN`) in them or in its Body Part Examined. Where
  the Protocol Name and the Series Description name neither, the Study
  Description is read the same way. Body Part Examined alone never skips: it
  is often left at a protocol's default ("CHEST" on an abdomen), so it only
  says "abdomen" (to keep a series) or, for the caution, the region.

Words are read in capitals without accents ("Schädel" and "Schaedel" alike),
split at every sign and where a word's letters meet digits or a capital
follows a small letter ("HeadRoutine", "Abdomen5mm"), each alone and each
joined with the next ("CALCIUM SCORE"). Abdomen words are also found inside
longer words by their roots (:data:`ABDOMEN_ROOTS`: "Oberbauch",
"Nierenstein", "ABDOMINOPELVIC", "Steinsuche"): a series kept wrongly costs
little. The reason names the word found, never the free text it was in (a
description may hold a name).
"""

from __future__ import annotations

import datetime
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

PHANTOM_KIND = "a phantom or quality-control scan"
CHEST_KIND = "a chest CT"
PHANTOM = frozenset({
    "PHANTOM", "PHANTOME", "FANTOOM", "FANTOCCIO", "FANTOMA", "QA", "QC", "CATPHAN", "CALIBRATION", "DAILYQA",
    "QUALITYCONTROL", "QUALITYASSURANCE", "CONSTANCY", "KONSTANZPRUFUNG", "KONSTANZPRUEFUNG",
})
"""Words that name a phantom or a quality-control scan: never a patient, whatever region they name."""
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
    CHEST_KIND: frozenset({
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
ABDOMEN = frozenset({
    "ABD", "ABDO", "AP", "PEL", "KUB", "URO", "CTU", "IVP", "CAP", "TAP", "HIP", "HIPS", "LSPINE", "TLSPINE", "LWS",
    "SACRUM", "WHOLEBODY", "POLYTRAUMA", "GANZKORPER", "RENI", "RENE", "REIN", "REINS", "PELVI", "BUIK", "FLANK",
    "COLON", "LIVER", "LEBER", "PANCREAS", "SPLEEN", "APPENDIX", "FEMORAL", "STONE", "STONES",
})
"""Whole words that say the series shows the abdomen, the pelvis or the urinary tract (in part); "A/P" reads as
AP. A series read wrongly costs little, so they keep it."""
ABDOMEN_ROOTS = (
    "ABDOM", "ADDOM", "PELV", "KIDNEY", "RENAL", "URETER", "URETHR", "BLADDER", "URINAR", "UROLOG", "UROGRAPH",
    "UROSCAN", "UROLITH", "NEPHROLITH", "LITHIAS", "CALCUL", "CALCOL", "COLIC", "COLIQU", "KOLIK", "NIERE",
    "NIERST", "STEINS", "BAUCH", "BECKEN", "HARNLEIT", "BLASE", "VESSIE", "VESCIC", "VEJIG", "BLAAS", "BEKKEN",
    "HEMATUR", "HAEMATUR", "RETROPERIT", "PROSTAT", "ADRENAL",
)
"""Roots of abdomen words, found inside longer words ("OBERBAUCH", "NIERENSTEIN", "ABDOMINOPELVIC")."""
CHEST_AT_MOST_MM = 450.0
"""A series named a chest CT but longer than this along the body reaches the abdomen (a chest-abdomen-pelvis scan
labelled by its first region): it is read (``uronode.completion.qualify``)."""
CHILD_YEARS = 18
"""Below this age (years) the model's findings are cautioned: it was never measured on children."""

_WORD = re.compile(r"[A-Z]+|[0-9]+")
_CAMEL = re.compile(r"(?<=[a-z])(?=[A-Z])")


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
    plain = "".join(c for c in folded if not unicodedata.combining(c))
    words = _WORD.findall(plain)
    return set(words) | {a + b for a, b in zip(words, words[1:], strict=False)}


def _abdomen(words: set[str]) -> bool:
    return bool(words & ABDOMEN) or any(root in word for word in words for root in ABDOMEN_ROOTS)


def _said(where: str, word: str) -> str:
    return f"Body Part Examined {word}" if where == "Body Part Examined" else f"{word} in the {where}"


def other_region(body_part: str = "", protocol: str = "", series_description: str = "",
                 study_description: str = "") -> Region | None:
    """The region or phantom other than the abdomen that the header clearly names (see the module), or None."""
    own = {where: _words(text) for where, text in (("Body Part Examined", body_part), ("Protocol Name", protocol),
                                                    ("Series Description", series_description)) if text}
    for where, words in own.items():
        if hits := sorted(words & PHANTOM):
            return Region(PHANTOM_KIND, _said(where, hits[0]))
    if any(_abdomen(words) for words in own.values()):
        return None
    texts = {where: words for where, words in own.items() if where != "Body Part Examined"}
    named = [(where, kind, hits) for where, words in texts.items() for kind, names in REGIONS.items()
             if (hits := sorted(words & names))]
    if not named and study_description:  # the series' own texts name nothing: the study's may
        words = _words(study_description)
        if _abdomen(words):
            return None
        named = [("Study Description", kind, hits) for kind, names in REGIONS.items()
                 if (hits := sorted(words & names))]
    if not named:
        return None
    where, kind, hits = named[0]
    return Region(kind, _said(where, hits[0]))


def body_part_region(body_part: str) -> Region | None:
    """The region a Body Part Examined alone names (never a reason to skip: a caution's words), or None."""
    words = _words(body_part)
    if _abdomen(words):
        return None
    for kind, names in (("", PHANTOM), *REGIONS.items()):
        if hits := sorted(words & names):
            return Region(kind or PHANTOM_KIND, _said("Body Part Examined", hits[0]))
    return None


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


_AGE = re.compile(r"^(\d{3})([DWMY])$")


def age_years(patient_age: str = "", birth_date: str = "", *dates: str) -> float | None:
    """The patient's age in years at the examination: from the Patient's Birth Date and the first of ``dates``
    that is a date (the Study, Series, Acquisition or Content Date), in whole years as a birthday counts them
    (months below 2 years); else from the Patient's Age (AS: "045Y", "006M"). None where neither says it: a
    placeholder age ("000Y", "000D") or a birth date on the examination's day or after it (an unknown patient
    registered that day) says nothing."""
    born = _date(birth_date)
    seen = next((d for text in dates if (d := _date(text)) is not None), None)
    if born is not None and seen is not None:
        if seen <= born:
            return None
        months = (seen.year - born.year) * 12 + seen.month - born.month - (seen.day < born.day)
        return months // 12 if months >= 24 else months / 12
    found = _AGE.match(patient_age.strip().upper())
    if found is None or int(found.group(1)) == 0:
        return None
    return int(found.group(1)) / {"D": 365.25, "W": 52.18, "M": 12.0, "Y": 1.0}[found.group(2)]


def _date(text: str) -> datetime.date | None:
    try:
        return datetime.datetime.strptime(text.strip()[:8], "%Y%m%d").date()
    except ValueError:
        return None
