"""Whether a CT series was acquired with contrast, as far as its header says.

The stone model reads non-contrast CT: the stone protocol. On a contrast
phase, enhanced kidneys and contrast excreted into the collecting system,
ureters and bladder are as dense as stones (they are reported as stones) and
hide the stones they surround. A PACS that routes a whole study sends its
contrast phases too, so the node tells them apart before the model reads
them (``uronode.completion``), and says so on what it reports where it reads
one all the same (``inference.volume``).

A series skipped wrongly gets no result at all, which costs more than a
contrast series read with a caution; so only the clearest evidence skips:

- **Series Description** (0008,103E), which most sites fill from the
  protocol, naming a contrast phase as a word of its own ("ARTERIAL",
  "PORTAL VENOUS", "PV", "NEPHROGRAPHIC", "EXCRETORY", "C+", "KM+", "CECT",
  and the forms of other languages) with no word that denies contrast
  ("NON", "NONCON", "UNENH", "W/O", "NATIVE", "PLAIN", "C-", "KM-", "O. KM",
  "LOW DOSE", "KUB", "STONE" ...; "NO ORAL", "NON GATED" and "NON IONIC"
  deny nothing of the kind): **clear** (:attr:`Evidence.clear`), the series
  is skipped unless someone asked for it;
- **Contrast/Bolus Agent** (0018,0010), which scanners fill from the
  protocol or the injector, naming an agent (not "NONE", "N/A", "NO
  CONTRAST", "NOT APPLIED", "0 ML", "UNKNOWN", a neutral oral agent such as
  water, or "none" in another language), where the description neither
  names a phase nor denies contrast: **not clear**, because some sites
  fill the agent once for the whole examination, its unenhanced phase
  included; the series is read, with the caution.

A description that denies contrast wins over an agent. Words are compared
in capitals with their accents taken off ("venöse" is "VENOSE"); the words
of English, German, French, Italian, Spanish and Turkish protocol names
below are what is known. What neither says is not found: a contrast series
whose agent is empty and whose description names no phase ("ABDOMEN 1.0
B30f") reads as non-contrast, and so does an Enhanced CT image's agent,
which lies in a sequence (0018,0012) the index does not read (its
description still counts). Words that may or may not name a phase are not
taken for one: "DELAYED" and "LATE" alone (a delayed scan without contrast
exists), an examination's name ("CT UROGRAM", "CTU"), "ART", "NEPHRO" and
"IV" (a Roman four as often as intravenous).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

DENYING = frozenset({
    "NON", "NONCON", "NONCONTRAST", "NONENH", "NONENHANCED", "UNENH", "UNENHANCED", "NOCONTRAST", "NOCON",
    "WITHOUT", "WO", "NC", "NECT", "NCCT", "VNC", "PLAIN", "NATIVE", "NATIV", "NATIVO", "NATIVA", "NATIF",
    "NATIVE-PHASE", "BASALE", "BASAL", "SIN", "SANS", "OHNE", "SENZA", "SEM", "KEIN", "KEINE", "KONTRASTSIZ",
    "ILACSIZ", "PRE", "PRECONTRAST", "KUB", "STONE", "STONES", "LOWDOSE", "UNINJECTED",
})
"""Words of a series description that deny contrast or name the non-contrast (stone) protocol; "NO" too, and
"LOW" before "DOSE", "O" before "KM" (German "o. KM": ohne), "C-" and "KM-" (see ``_words``)."""
NOT_ABOUT_CONTRAST = frozenset({"ORAL", "GATED", "IONIC", "ALLERGY", "ALLERGIC", "OP", "OPERATIVE"})
"""A denying word right before one of these denies that, not contrast ("NO ORAL", "NON GATED", "NON IONIC",
"PRE OP")."""
PHASES = frozenset({
    "ARTERIAL", "ARTERIELL", "ARTERIELLE", "ARTERIEL", "ARTERIOSA", "ARTERIOSO", "ARTERIALE", "ARTERIYEL",
    "PORTAL", "PORTALVENOUS", "PORTALVENOS", "PORTALVENOSE", "PORTALE", "PORTOVENOSA", "PORTOVENOSO",
    "VENOUS", "VENOS", "VENOSE", "VENOES", "VENOSA", "VENOSO", "VEINEUX", "VEINEUSE", "VENOZ", "PV", "PVP",
    "NEPHROGRAPHIC", "NEPHROGRAPHISCH", "NEPHROGRAPHISCHE", "NEFROGRAFICA", "NEPHROGRAPHIQUE",
    "EXCRETORY", "EXCRETION", "EXCRETORA", "ESCRETORIA", "EXCRETOIRE", "AUSSCHEIDUNGSPHASE", "BOSALTIM",
    "UROGRAPHISCHE", "PYELOGRAPHIC", "SPATPHASE", "ANGIO", "ANGIOGRAPHY", "CTA", "CECT", "CE", "ENHANCED",
    "CONTRAST", "KONTRAST", "CONTRASTE", "CONTRASTO", "KONTRASTLI", "ILACLI", "MDC", "KM", "INJECTE",
    "INJECTION", "POSTCONTRAST", "BOLUS", "IODINE", "JOD", "IODE", "C+", "KM+", "MDC+",
})
"""Words of a series description that name a contrast phase, where no word of ``DENYING`` denies it ("CONTRAST"
alone is enhanced; "NON CONTRAST" and "W/O CONTRAST" are not)."""
NO_AGENT = frozenset({
    "NONE", "NO", "NON", "NOT", "N", "NA", "NIL", "NULL", "UNKNOWN", "UNK", "NOCONTRAST", "NONCONTRAST",
    "UNENHANCED", "NATIVE", "NATIV", "PLAIN", "WITHOUT", "OHNE", "SIN", "SANS", "SENZA", "SEM", "KEIN", "KEINE",
    "NICHT", "NEIN", "AUCUN", "AUCUNE", "NESSUNO", "NINGUNO", "NINGUNA", "YOK", "WATER", "H2O", "NEGATIVE",
})
"""Words of an agent that say there was none, or only a neutral oral agent that neither hides nor mimics a
stone ("WATER", "NEGATIVE"); a zero ("0", "0 ML") says so too."""
SIGNED = frozenset({"C", "KM", "MDC", "CM"})
"""Words whose sign says with (+) or without (-) contrast: "C+", "KM-", "-KM"."""
_TOKEN = re.compile(r"[+\-]?[A-Z0-9]+(?:-[A-Z0-9]+)*[+\-]?")
_ZERO = re.compile(r"^0+(?:[.,]0+)?(?:ML|CC)?$")


@dataclass(frozen=True)
class Evidence:
    """What in the header says contrast, in words for a reason or a caution (``text``), and whether it is clear
    enough to skip the series (``clear``: a named phase) or only to caution (an agent alone)."""

    text: str
    clear: bool


def _plain(text: str) -> str:
    """Capitals without accents ("venöse" -> "VENOSE", "ß" -> "SS"); "W/O" and "W-O" become "WITHOUT"."""
    folded = unicodedata.normalize("NFKD", text.upper().replace("ß", "SS"))
    plain = "".join(c for c in folded if not unicodedata.combining(c)).replace("İ", "I").replace("I\u0307", "I")
    return re.sub(r"\bW\s*[/-]\s*O\b", " WITHOUT ", plain).replace("_", " ").replace("/", " ")


def _words(text: str) -> list[str]:
    """The words of ``text`` as ``_plain`` has it. A word's sign stays only on ``SIGNED`` words ("C+", "KM-";
    "-KM" is "KM-"); elsewhere "NON-CON" is "NON" and "CON", and a sign is dropped."""
    out: list[str] = []
    for token in _TOKEN.findall(_plain(text)):
        core = token.strip("+-")
        if core in SIGNED and token != core:
            out.append(core + ("+" if "+" in token else "-"))
        elif "-" in core and core not in PHASES and core not in DENYING:
            out.extend(core.split("-"))
        else:
            out.append(core)
    return out


def _denies(words: list[str]) -> bool:
    """Whether a word denies contrast (``DENYING``, a signed word's "-", "NO", "LOW DOSE", "O KM"), unless the
    word after it shows that it denies something else ("NO ORAL")."""
    for i, word in enumerate(words):
        after = words[i + 1] if i + 1 < len(words) else ""
        if after in NOT_ABOUT_CONTRAST:
            continue
        if (word in DENYING or word == "NO" or (word.endswith("-") and word[:-1] in SIGNED)
                or (word == "LOW" and after == "DOSE") or (word == "O" and after in ("KM", "KM+", "MDC"))):
            return True
    return False


def _names_agent(agent: str) -> bool:
    """Whether an agent value names one: a word left once numbers, units and what a denying word before it
    denies are set aside ("IV OMNIPAQUE, NO ORAL" names one; "NO ORAL" none), where the value does not say
    only that there was none (``_all_about_none``), and is not a zero."""
    for value in (v for v in agent.split("\\") if v.strip()):
        words = _words(value.upper().replace("N/A", "NA").replace(".", ""))  # "N.A." is "NA"
        if not words or _ZERO.match(value.strip().upper().replace(" ", "")) or _all_about_none(words):
            continue
        if any(not w.isdigit() and w not in NO_AGENT and w not in ("ML", "CC", "MG", "KG")
               and not (i and words[i - 1] in NO_AGENT and w != "IONIC") for i, w in enumerate(words)):
            return True
    return False


def _all_about_none(words: list[str]) -> bool:
    """Whether an agent's words, numbers and units aside, say only that there was none ("NO CONTRAST", "NOT
    APPLIED", "KEIN KM", "NONE/NONE"), not an agent with a remark ("IV ISOVUE, ORAL NONE")."""
    neutral = {"CONTRAST", "AGENT", "APPLIED", "APPLIZIERT", "GIVEN", "KM", "MDC", "ORAL", "IV", "MEDIUM",
               "CONTRASTE", "CONTRASTO", "KONTRAST", "KONTRASTMITTEL", "USED"}
    return (any(w in NO_AGENT for w in words)
            and all(w in NO_AGENT or w in neutral or w.isdigit() or w in ("ML", "CC") for w in words))


def _shown(value: str) -> str:
    """A header value as a reason or a caution quotes it: at most 64 characters, in ASCII (accents taken off,
    any other letter '?'), as the overlays' burned-in text can draw it."""
    folded = unicodedata.normalize("NFKD", value.strip()[:64])
    return "".join(c for c in folded if not unicodedata.combining(c)).encode("ascii", "replace").decode()


def contrast_evidence(agent: str, description: str) -> Evidence | None:
    """What in the header says the series was acquired with contrast (the module's text); None where nothing
    does, or the description denies it."""
    words = _words(description)
    if _denies(words):
        return None
    if any(w in PHASES for w in words):
        return Evidence(f"Series Description {_shown(description)!r}", clear=True)
    if _names_agent(agent):
        return Evidence(f"Contrast/Bolus Agent {_shown(agent)!r}", clear=False)
    return None
