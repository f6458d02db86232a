"""Whether a CT series shows the abdomen, as far as its header says, and the patient's age.

The stone model is for non-contrast CT of an adult's abdomen and pelvis. A
scanner that pushes every series, or a PACS routing rule too broad, sends
head, chest, cardiac and limb CT and the morning's quality-control phantom
too: read, a head CT's pineal gland came back coded as a urinary stone and a
calcium phantom's inserts as eight (probe 46), and a chest CT's "no stone"
spoke of kidneys it does not show. So the node tells them apart before the
model reads them (``uronode.completion``), and says so on what it reports
where it reads one all the same (``inference.volume``).

A series skipped wrongly gets no result at all, so only clear evidence skips:
a word of another region or of a phantom (:data:`REGIONS`) in the Body Part
Examined (0018,0015), the Protocol Name (0018,1030) or the Series or Study
Description, and **no** word of the abdomen, the pelvis or the urinary tract
(:data:`ABDOMEN`) in any of them: "CHEST ABDOMEN PELVIS", a trauma whole-body
scan, a lumbar spine or a hip (the bladder shows) are read. Body Part Examined
is notoriously left at a protocol's default, so it alone names a region only
where the other texts say nothing of the abdomen either. Words are matched
whole, in capitals without accents, each alone and each with the next
("CALCIUM SCORE" as "CALCIUMSCORE"); the reason names the word found, never
the free text it was found in (a description may hold a name).
"""

from __future__ import annotations

import datetime
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

REGIONS: dict[str, frozenset[str]] = {
    "a phantom or quality-control scan": frozenset({
        "PHANTOM", "QA", "QC", "CATPHAN", "CALIBRATION", "WATERPHANTOM", "QUALITYCONTROL", "QUALITYASSURANCE",
        "CONSTANCY", "KONSTANZPRUFUNG",
    }),
    "a head or neck CT": frozenset({
        "HEAD", "BRAIN", "SKULL", "CRANIUM", "CRANIAL", "CEREBRAL", "CCT", "SINUS", "SINUSES", "ORBIT", "ORBITS",
        "FACE", "FACIAL", "MAXILLOFACIAL", "DENTAL", "MANDIBLE", "MAXILLA", "IAC", "TEMPORALBONE", "PETROUS",
        "NECK", "CSPINE", "HEADNECK", "SCHADEL", "KOPF", "HIRN", "CRANE", "CERVEAU", "CRANIO", "CERVELLO",
        "CABEZA", "CRANEO", "HOOFD", "HERSENEN",
    }),
    "a cardiac CT": frozenset({
        "HEART", "CARDIAC", "CORONARY", "CORONARIES", "CALCIUMSCORE", "CASCORE", "CACS", "AGATSTON", "HERZ",
        "CARDIO", "COEUR", "CUORE", "CORAZON", "HART", "TAVI", "TAVR",
    }),
    "a chest CT": frozenset({
        "CHEST", "THORAX", "THORACIC", "LUNG", "LUNGS", "PULMONARY", "CTPA", "THORAKS", "LUNGE", "POUMON",
        "TORACE", "TORAX", "POLMONE", "TSPINE",
    }),
    "a CT of a limb": frozenset({
        "KNEE", "ANKLE", "FOOT", "FEET", "HAND", "WRIST", "ELBOW", "SHOULDER", "FOREARM", "FEMUR",
        "TIBIA", "FIBULA", "HUMERUS", "EXTREMITY", "EXTREMITIES", "UPPEREXTREMITY", "LOWEREXTREMITY", "UPPERLIMB",
        "LOWERLIMB", "KNIE", "SPRUNGGELENK", "FUSS", "SCHULTER", "HANDGELENK", "ELLENBOGEN", "GENOU", "CHEVILLE",
        "EPAULE", "GINOCCHIO", "CAVIGLIA", "SPALLA", "RODILLA", "TOBILLO", "HOMBRO",
    }),
}
"""Words that name a region the model is not for (or a phantom), by what the reason calls it. Defined terms of
Body Part Examined (PS3.16 Annex L) and the words sites use in protocols and descriptions, in the languages the
contrast words (``uronode.contrast``) are read in."""
ABDOMEN = frozenset({
    "ABDOMEN", "ABDOMINAL", "ABD", "ABDO", "PELVIS", "PELVIC", "PELV", "KUB", "URO", "UROGRAM", "UROGRAPHY",
    "STONE", "STONES", "CALCULUS", "LITHIASIS", "RENAL", "KIDNEY", "KIDNEYS", "URETER", "URETERS", "BLADDER",
    "UROLITHIASIS", "NEPHROLITHIASIS", "COLIC", "FLANK", "ABDOMENPELVIS", "ABDPELVIS", "CHESTABDOMEN",
    "CHESTABDPELVIS", "NECKCHESTABDOMEN", "NECKCHESTABDPELV", "CAP", "TAP", "WHOLEBODY", "BODY", "TRAUMA",
    "POLYTRAUMA", "HIP", "HIPS", "LSPINE",
    "LUMBAR", "SACRUM", "NIERE", "NIEREN", "BAUCH", "BECKEN", "ABDOMINALE", "ADDOME", "REIN", "REINS", "RENE",
    "RINONE", "RINON", "ABDOMINO", "NIER", "STEEN", "STEIN", "CALCOLI", "CALCULS", "FEMORAL",
    "LITIASI", "LITIASIS", "LITHIASE", "COLON", "COLONOGRAPHY", "LIVER", "PANCREAS", "SPLEEN", "APPENDIX",
})
"""Words that say the series shows the abdomen, the pelvis or the urinary tract (in part): any of them, anywhere,
and the series is read."""
CHILD_YEARS = 18
"""Below this age (years) the model's findings are cautioned: it was never measured on children."""

_WORD = re.compile(r"[A-Z0-9]+")


@dataclass(frozen=True, slots=True)
class Region:
    """What a series' header says it shows, where that is not the abdomen."""

    kind: str
    """What :data:`REGIONS` calls it ("a head or neck CT")."""
    word: str
    """The word found, and where: "Body Part Examined HEAD", "BRAIN in the Protocol Name"."""


def _words(text: str) -> set[str]:
    """The words of ``text`` in capitals without accents, each alone and each joined with the next."""
    folded = unicodedata.normalize("NFKD", text.upper().replace("ß", "SS"))
    plain = "".join(c for c in folded if not unicodedata.combining(c))
    words = _WORD.findall(plain.replace("_", " "))
    return set(words) | {a + b for a, b in zip(words, words[1:], strict=False)}


def other_region(body_part: str = "", protocol: str = "", series_description: str = "",
                 study_description: str = "") -> Region | None:
    """The region or phantom other than the abdomen that the header clearly names (see the module), or None: the
    abdomen is named somewhere, or nothing is named."""
    texts = (("Body Part Examined", body_part), ("Protocol Name", protocol),
             ("Series Description", series_description), ("Study Description", study_description))
    found = {where: _words(text) for where, text in texts if text}
    if any(words & ABDOMEN for words in found.values()):
        return None
    for kind, names in REGIONS.items():  # a phantom first: "QA HEAD" is a phantom
        for where, words in found.items():
            hits = sorted(words & names)
            if hits:
                said = f"Body Part Examined {hits[0]}" if where == "Body Part Examined" else f"{hits[0]} in the {where}"
                return Region(kind, said)
    return None


def series_region(rows: Iterable[tuple[str, str, str, str]]) -> Region | None:
    """:func:`other_region` of a series from its images' (body part, protocol, series description, study
    description): the first that names one, where none names the abdomen."""
    distinct = set(rows)
    if any(_words(text) & ABDOMEN for row in distinct for text in row if text):
        return None
    regions = [region for row in distinct if (region := other_region(*row)) is not None]
    return min(regions, key=lambda r: (r.kind, r.word)) if regions else None


_AGE = re.compile(r"^(\d{3})([DWMY])$")


def age_years(patient_age: str = "", birth_date: str = "", study_date: str = "") -> float | None:
    """The patient's age in years at the study: Patient's Age (AS, "045Y", "006M"), else the Study Date less the
    Patient's Birth Date (DA); None where neither is given or readable."""
    found = _AGE.match(patient_age.strip().upper())
    if found:
        return int(found.group(1)) / {"D": 365.25, "W": 52.18, "M": 12.0, "Y": 1.0}[found.group(2)]
    try:
        born = datetime.datetime.strptime(birth_date.strip()[:8], "%Y%m%d").date()
        seen = datetime.datetime.strptime(study_date.strip()[:8], "%Y%m%d").date()
    except ValueError:
        return None
    return (seen - born).days / 365.25 if seen >= born else None
