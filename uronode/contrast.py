"""Whether a CT series was acquired with contrast, as far as its header says.

The stone model reads non-contrast CT: the stone protocol. On a contrast
phase, enhanced kidneys and contrast excreted into the collecting system,
ureters and bladder are as dense as stones (they are reported as stones) and
hide the stones they surround. A PACS that routes a whole study sends its
contrast phases too, so the node has to tell them apart before the model
reads them (``uronode.completion``), and say so on what it reports where it
reads one all the same (``inference.volume``).

Two places in the header say it:

- **Contrast/Bolus Agent** (0018,0010), which scanners fill from the
  protocol or the injector: any value without a word that denies contrast
  ("NONE", "NO", "NOT", "N/A", "NATIVE" ...) names one ("APPLIED" too);
- **Series Description** (0008,103E), which most sites fill from the
  protocol: the name of a contrast phase ("ARTERIAL", "PORTAL VENOUS",
  "NEPHROGRAPHIC", "EXCRETORY", "UROGRAPHY", "C+", German "KM") as a word of
  its own, in a description that has no word denying contrast ("NON",
  "WITHOUT", "W/O", "NATIVE", "PLAIN", "UNENHANCED", "PRE", "C-" ...).

What neither says is not found: a contrast series whose agent is empty and
whose description names no phase ("ABDOMEN 1.0 B30f") reads as non-contrast,
and "DELAYED" alone is not taken for a phase (a delayed non-contrast scan
exists). Oral contrast named as the agent counts as contrast: bowel full of
it is what the model takes for stones most. docs/receiving.md ("Contrast
phases") says what a site whose protocols differ can set.
"""

from __future__ import annotations

import re

NO_AGENT = frozenset({
    "NONE", "NO", "NON", "N", "NA", "N/A", "NIL", "NULL", "0", "-", "--", "NATIVE", "NATIV", "NATIVO", "PLAIN",
    "UNENHANCED", "NONCONTRAST", "NON-CONTRAST", "WITHOUT", "W/O", "WO", "SIN", "SANS", "OHNE", "SENZA", "SEM",
    "NOT", "KEIN", "KEINE",
})
"""An agent with one of these words names none ("NONE", "N/A", "NO CONTRAST", "KEIN KM", "NOT APPLIED"); any
other agent names one ("OMNIPAQUE 350", "APPLIED", "ORAL", "KM")."""
DENYING = frozenset({
    "NONE", "NO", "NON", "NIL", "NATIVE", "NATIV", "NATIVO", "NATIVA", "PLAIN", "UNENHANCED", "NONCONTRAST",
    "NON-CONTRAST", "WITHOUT", "W/O", "WO", "SIN", "SANS", "OHNE", "SENZA", "SEM", "KEIN", "KEINE", "PRE",
    "PRECONTRAST", "PRE-CONTRAST", "C-", "NC", "NECT", "NCCT", "KUB", "LOWDOSE", "LOW-DOSE", "STONE", "STONES",
})
"""Words of a series description that deny contrast or name the non-contrast stone protocol: with one of them,
the description names no contrast phase."""
PHASES = frozenset({
    "ARTERIAL", "ART", "CTA", "ANGIO", "ANGIOGRAPHY", "PORTAL", "VENOUS", "PV", "PVP", "NEPHROGRAPHIC",
    "NEPHRO", "EXCRETORY", "EXCRETION", "UROGRAPHY", "UROGRAM", "UROGRAPHIC", "CTU", "PYELOGRAPHY",
    "PYELOGRAM", "C+", "+C", "KM", "CONTRAST", "ENHANCED", "POSTCONTRAST", "POST-CONTRAST", "IV",
    "ARTERIELL", "VENÖS", "VENOES", "VENOS", "PORTALVENÖS", "PORTALVENOES", "ARTERIALE", "VENOSA", "VENOSO",
    "PORTALE", "ARTERIELLE", "VEINEUSE",
})
"""Words of a series description that name a contrast phase (English, German, French, Italian and Spanish
forms), when no word of ``DENYING`` is there ("CONTRAST" alone is enhanced; "NON CONTRAST" and "W/O CONTRAST"
are not)."""
_WORD = re.compile(r"[\w/+\-]+")


def _words(text: str) -> list[str]:
    """Upper-case words: letters (any alphabet), digits and the signs of "W/O", "C+" and "C-"; other signs (and
    "_") separate them, and a longer word's dashes or slashes at either end are not part of it ("ABDOMEN-" is
    "ABDOMEN"; "C-" stays)."""
    out = []
    for word in _WORD.findall(text.upper().replace("_", " ")):
        if len(word) > 2 and word != "W/O":
            word = word.strip("-/")
        if word:
            out.append(word)
    return out


def contrast_evidence(agent: str, description: str) -> str | None:
    """What in the header says the series was acquired with contrast (the module's text), in words for a
    reason or a caution, e.g. "Contrast/Bolus Agent 'OMNIPAQUE 350'"; None where nothing says so."""
    agent = agent.strip()
    agent_words = _words(agent)
    if agent_words and not any(w in NO_AGENT for w in agent_words):
        return f"Contrast/Bolus Agent {agent[:64]!r}"
    words = _words(description)
    if any(w in DENYING for w in words):
        return None
    if any(w in PHASES for w in words):
        return f"Series Description {description.strip()[:64]!r}"
    return None
