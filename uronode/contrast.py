"""Whether a CT series was acquired with contrast, as far as its header says.

The stone model reads non-contrast CT: the stone protocol. On a contrast
phase, enhanced kidneys and contrast excreted into the collecting system,
ureters and bladder are as dense as stones (they are reported as stones) and
hide the stones they surround. A PACS that routes a whole study sends its
contrast phases too, so the node tells them apart before the model reads
them (``uronode.completion``), and says so on what it reports where it reads
one all the same (``inference.volume``).

A series skipped wrongly gets no result at all, which costs more than a
contrast series read with a caution; so only the clearest evidence skips.
The Series Description (0008,103E), which most sites fill from the
protocol, is read word by word (capitals, accents taken off, "W/O" as
"WITHOUT", a sign kept on "C+", "KM-", "(-)KM"):

- it names a contrast **phase** ("ARTERIAL", "PORTAL VENOUS", "PV",
  "NEPHROGRAPHIC", "CORTICOMEDULLARY", "EXCRETORY", "CTA", "C+", "KM+",
  and their German, French, Italian, Spanish, Portuguese, Dutch and Turkish
  forms) and denies contrast nowhere: **clear** (:attr:`Evidence.clear`),
  the series is skipped unless someone asked for it;
- it only **mentions** contrast ("CONTRAST", "KM", "MDC", "INJECTION",
  "ENHANCED", "IODINE" ...) and denies it nowhere, or it **both** denies
  contrast and names it or "with" elsewhere (an examination's name copied
  into each of its series: "W/WO", "PRE/POST", "blanco en met contrast";
  a "with" counts unless it names a plane, a reconstruction, a window or a
  void: not in "KUB WITH CORONAL REFORMATS" or "STONE POST VOID"): read,
  with a caution;
- it **denies** contrast and names nothing else: read, no caution, whatever
  the agent says (some sites write the agent once for the whole
  examination). A word denies contrast standing alone ("NATIVE", "PLAIN",
  "NONCON", "UNENHANCED", "BASALE", "VNC", "C-", "KM-", "KUB", "STONE",
  "LOW DOSE" ...), before a contrast word ("NO", "NON", "WITHOUT", "SIN",
  "OHNE", "ZONDER", "VOR", "AVANT", "BEFORE", "PRE" ..., through "ORAL",
  "IV" and articles: "W/O ORAL/IV CONTRAST"), or after one ("CONTRAST:
  NONE", "KONTRAST YOK", "KM'SIZ", "CONTRAST ALLERGY"); not where it plainly
  denies something else ("NO ORAL" at the end, "NON GATED", "PRE-OP",
  "W/O BONE", "NO. 2").

Where the description says nothing either way, the **Contrast/Bolus Agent**
(0018,0010), which scanners fill from the protocol or the injector, naming
an agent (not "NONE", "N/A", "NO CONTRAST", "NOT APPLIED", "0 ML",
"UNKNOWN", water or "none" in another language) gives the caution.

What neither says is looked for in the pixels when the job reads the series
(``inference.enhancement``: an aorta of enhanced blood gives a caution, never
a skip): a contrast series whose agent is empty and whose description names
nothing ("ABDOMEN 1.0 B30f") is routed as non-contrast.
An agent coded in the Contrast/Bolus Agent Sequence (0018,0012), as an
Enhanced CT image has it, is not in the index: it cautions the results
(``inference.volume.contrast_agent``), as any agent, and never skips;
in other scripts, the words of ``OTHER_SCRIPTS`` (Japanese, Chinese,
Korean, Russian: contrast, plain, the phases) are read as their Latin
words, and the rest as saying nothing. Words that may or may not name a phase are not taken for one:
"DELAYED" or "LATE" alone (a post-void or prone look as often), "TRIPLE
PHASE", "ART", "NEPHRO", "IV" alone (a Roman four as often as intravenous);
a urography's name alone ("CT UROGRAM", "CTU", "IVP") cautions. A late
phase is clear where two kinds of its words meet (``_late``: a urography, a
delay, minutes, "PHASE": "DELAYED UROGRAM", "Uro 8min", "10 min delay",
"Urogram Phase"), unless the description is of a void or a prone look.

What the examination is called (the Study Description, the Protocol Name)
is read too, and never skips (reviews 43-46: its names are free text): where
it denies contrast anywhere, a late phase the series' own words name is a
caution; where the series' own description and agent say nothing either way,
one that names contrast, a urography or both phases cautions (probe 47: a CT
urography's excretory series were read as non-contrast without a word).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

PHASES = frozenset({
    "ARTERIAL", "ARTERIELL", "ARTERIELLE", "ARTERIEL", "ARTERIOSA", "ARTERIOSO", "ARTERIALE", "ARTERIYEL",
    "ARTERIEEL", "FRUHARTERIELL", "SPATARTERIELL", "PORTAL", "PORTALVENOUS", "PORTALVENOS", "PORTALVENOSE",
    "PORTALE", "PORTOVENOSA", "PORTOVENOSO", "PORTAAL", "PORTOVENEUS", "VENOUS", "VENOS", "VENOSE", "VENOES",
    "VENOSA", "VENOSO", "VEINEUX", "VEINEUSE", "VENOZ", "VENEUS", "PV", "PVP", "NEPHROGRAPHIC", "NEPHROGRAPHISCH",
    "NEPHROGRAPHISCHE", "NEFROGRAFICA", "NEFROGRAFICO", "NEPHROGRAPHIQUE", "NEFROGRAFIK", "NEFROGRAFISCH",
    "CORTICOMEDULLARY", "CORTICOMEDULLAIRE", "KORTIKOMEDULLAR", "PARENCHYMPHASE", "EXCRETORY", "EXCRETION",
    "EXCRETORA", "ESCRETORIA", "EXCRETOIRE", "EXCRETEUR", "EXCRETOIR", "EKSKRETUAR", "AUSSCHEIDUNGSPHASE",
    "AUSSCHEIDUNG", "BOSALTIM", "UROGRAPHIC", "UROGRAPHISCHE", "UROGRAFICA", "UROGRAFICO", "UROGRAPHIQUE",
    "PYELOGRAPHIC", "EQUILIBRIUM", "PANCREATIC", "SPATPHASE", "ANGIO", "ANGIOGRAPHY", "ANGIOGRAPHIC", "CTA",
    "CECT", "SPLIT", "CMP", "PARENCHYMAL", "PARENCHYMATEUX", "ESCRETIVA", "CORTICOMIDOLLARE", "CORTICOMEDULAR",
    "EXCRECION", "ELIMINACAO", "ARTERIELE", "VENEUZE", "EXCRETIEFASE", "NEFROGRAFISCHE", "KORTIKOMEDULLER",
    "ARTERYEL",
    "C+", "KM+", "MDC+", "CE+", "CONTRAST+",
})
"""Words that name a contrast phase: where nothing denies contrast, the series is skipped when routed."""
MENTIONS = frozenset({
    "CONTRAST", "KONTRAST", "CONTRASTE", "CONTRASTO", "CONTRASTADO", "CONTRASTADA", "KONTRASTLI", "ILACLI",
    "KONTRASTMITTEL", "KM", "MDC", "PDC", "CIV", "CM", "CE", "INJECTION", "INJECTE", "INJECTEE", "ENHANCED",
    "ENHANCEMENT", "ENHANCE", "ENH", "POSTCONTRAST", "IODINE", "JOD", "IODE", "BOLUS", "CON", "MKM",
    "CONTRASTMIDDEL",
})
"""Words that mention contrast without naming a phase: a caution where nothing denies it."""
WITH = frozenset({"W", "WITH", "MIT", "AVEC", "CON", "COM", "MET", "POST", "+"})
"""Words for "with": beside a denial elsewhere, a description of both phases (an examination's name)."""
DENY_ALONE = frozenset({
    "NATIVE", "NATIV", "NATIVO", "NATIVA", "NATIF", "NATIVPHASE", "NATIVE-PHASE", "PLAIN", "BASALE", "BASAL",
    "BASALES", "DIRETTA", "DIRECTA", "BLANCO", "BLANK", "LEERAUFNAHME", "UNENH", "UNENHANCED", "NONENH",
    "NONENHANCED", "NONCON", "NONCONTRAST", "NOCONTRAST", "NOCON", "UNINJECTED", "NC", "NECT", "NCCT", "VNC",
    "VUE", "VIRTUAL", "KONTRASTSIZ", "ILACSIZ", "KMFREI", "PRECONTRAST", "SPC", "KUB", "STONE", "STONES",
    "LOWDOSE", "C-", "KM-", "MDC-", "CE-", "CONTRAST-",
})
"""Words that deny contrast, or name the non-contrast (stone) protocol, wherever they stand."""
DENY_BEFORE = frozenset({
    "NO", "NON", "NOT", "WITHOUT", "WO", "SIN", "SANS", "OHNE", "SENZA", "SEM", "ZONDER", "GEEN", "PAS", "KEIN",
    "KEINE", "VOR", "PRA", "AVANT", "PRIMA", "ANTES", "VOOR", "BEFORE", "PRE", "SUPPRESSED", "S", "REFUSED",
    "REFUSES", "DECLINED", "DECLINES",
})
"""Words that deny the contrast word after them (past route words and articles: ``ROUTE``, ``FILLER``)."""
DENY_AFTER = frozenset({"NONE", "NEIN", "YOK", "NOT", "FREI", "SIZ", "ALLERGY", "ALLERGIE", "ONCESI", "VERILMEDEN",
                        "NEGATIVE", "NEG", "REMOVED", "SUPPRESSED", "SUBTRACTED"})
"""Words that deny the contrast word before them ("CONTRAST: NONE", "KONTRAST YOK", "KM'SIZ")."""
ROUTE = frozenset({"ORAL", "IV", "OR", "AND", "UND", "ET", "E", "Y", "EN", "RECTAL", "INTRAVENOUS", "INTRAVENOSO",
                   "INTRAVENOSA", "INTRAVENOSE", "INTRAVENOSES", "INTRAVENEUS", "ENDOVENOSO", "ENDOVENOSA", "EV",
                   "PO"})
FILLER = frozenset({"DE", "DEL", "DI", "DU", "D", "DES", "DER", "DEN", "DAS", "THE", "OF", "LA", "EL", "IL", "LE",
                    "VAN", "HET", "DO", "DA"})
UROGRAPHY = frozenset({
    "UROGRAM", "UROGRAMS", "UROGRAPHY", "UROGRAMM", "UROGRAPHIE", "UROGRAFIE", "UROGRAFIA", "UROGRAFI", "CTU",
    "UROCT", "IVP", "IVU", "PYELOGRAM", "PYELOGRAPHY", "UROSCANNER",
})
"""An examination of the urinary tract with contrast: alone a caution (an examination's name copied into each of
its series, the unenhanced one too, unless it denies contrast), with a late-phase word a clear phase."""
DELAY = frozenset({
    "DELAYED", "DELAY", "LATE", "SPAT", "SPAET", "SPATAUFNAHME", "SPAETAUFNAHME", "TARDIVE", "TARDIF", "TARDIVA",
    "TARDIVO", "TARDIA", "TARDIO", "RITARDATA", "RITARDATO", "VERTRAAGD", "GECIKMIS", "DLY",
})
"""Words of a late acquisition: alone no phase (a "delayed" series may be a post-void one); with a second word of a
late phase (``_late``: a urography, minutes, "PHASE") a clear one."""
NOT_LATE = frozenset({
    "VOID", "VOIDING", "POSTVOID", "MICTION", "MIKTION", "MICTURITION", "MICT", "POSTMICT", "POSTMICTION",
    "POSTMICTIONNEL", "POSTMICTIONNELLE", "MINZIONE", "POSTMINZIONALE", "MICCION", "POSTMICCIONAL", "MIKTIE",
    "EMPTY", "EMPTIED", "LEER", "VUOTA", "VIDE", "VACIA", "PRONE", "PRONO", "PRONA", "PRONATION", "PROCUBITUS",
    "BAUCHLAGE", "BUIKLIGGING", "DECUBITUS", "DECUBITO", "VENTRAL", "PRON",
})
"""Words of a late look without contrast: after voiding or with the bladder emptied, prone (a stone at the
bladder's mouth or in it, seen again), in the languages of the contrast words."""
ROMAN = frozenset({"I", "II", "III", "IV", "V", "VI"})
"""A phase's number in Roman figures ("phase II" is its place, as "phase 2"; review 44)."""
NOT_WHEN = frozenset({"SINGLE", "ONE", "MONO", "EINE", "EIN", "UNA", "UNE", "UN", "UNICA", "TEK", "EEN"})
"""Words beside "PHASE" that say how many phases, not when ("single phase", "one phase")."""
PHASE = frozenset({"PHASE", "FASE", "PHASEN", "FAZ", "FAZI", "FAZA"})
_MINUTES = re.compile(r"^([0-9]+)?(?:MIN|MINS|MN|MINUTE|MINUTES|MINUTEN|MINUTI|MINUTOS|DK|DAK|DAKIKA)$")
MEDIUM = frozenset({"PRODUIT", "MEZZO", "MEDIO", "MEIO", "PRODOTTO", "MIDDEL", "MADDE"})
"""Words for a medium, which a language puts before "of contrast" ("SENZA MEZZO DI CONTRASTO"): a denial of one
covers the contrast word after it (review 46)."""
CONTRAST_WORDS = MENTIONS | MEDIUM | {"C", "CONTRASTMIDDEL", "INJ"}
"""What "NO", "WITHOUT", "VOR" ... deny when it follows them (the bare "C" of "W/O C" too)."""
NO_AGENT = frozenset({
    "NONE", "NO", "NON", "NOT", "N", "NA", "NIL", "NULL", "UNKNOWN", "UNK", "NOCONTRAST", "NONCONTRAST",
    "UNENHANCED", "NATIVE", "NATIV", "PLAIN", "WITHOUT", "OHNE", "SIN", "SANS", "SENZA", "SEM", "KEIN", "KEINE",
    "NICHT", "NEIN", "AUCUN", "AUCUNE", "RIEN", "NESSUNO", "NINGUNO", "NINGUNA", "NENHUM", "NENHUMA", "GEEN",
    "YOK", "WATER", "WASSER", "AGUA", "ACQUA", "EAU", "H2O", "NEGATIVE", "MANNITOL",
})
"""Words of an agent that say there was none, or only a neutral oral agent that neither hides nor mimics a
stone (water, "NEGATIVE", mannitol); a zero ("0", "0 ML") says so too."""
SIGNED = frozenset({"C", "KM", "MDC", "CM", "CE", "CONTRAST"})
"""Words whose sign says with (+) or without (-) contrast: "C+", "KM-", "-KM", "KM (-)"."""
_DASHES = dict.fromkeys(map(ord, "\u2010\u2011\u2012\u2013\u2014\u2015\u2212"), "-")
_DASHES.update(dict.fromkeys(map(ord, "\u2044\u2215"), "/"))
_SIGN_AFTER = re.compile(r"\b(C|KM|MDC|CM|CE|CONTRAST)\s*\(?\s*([+-])\s*\)?(?![A-Z0-9])")
_SIGN_BEFORE = re.compile(r"(?<![A-Z0-9])\(?\s*([+-])\s*\)?\s*(C|KM|MDC|CM|CE|CONTRAST)\b")
_TOKEN = re.compile(r"[A-Z0-9]+(?:-[A-Z0-9]+)*[+-]?|(?<![A-Z0-9])\+")
_ZERO = re.compile(r"^0+(?:[.,]0+)?(?:ML|CC)?$")


@dataclass(frozen=True)
class Evidence:
    """What in the header says contrast, in words for a reason or a caution (``text``), and whether it is clear
    enough to skip the series (``clear``: a named phase, nothing denied) or only to caution."""

    text: str
    clear: bool


_RU = r"(?<![А-ЯЁ])"
"""Where a Russian word starts: its keys are found there only ("КОНТРАСТ" not inside "РЕНТГЕНКОНТРАСТНЫЕ")."""
_RU_END = r"[А-ЯЁ]*"
"""The rest of a Russian word: its case and gender ("АРТЕРИАЛЬНАЯ", "АРТЕРИАЛЬНОЙ")."""
OTHER_SCRIPTS: tuple[tuple[str, str], ...] = (
    # Japanese
    ("非造影", "NONCONTRAST"), ("造影前", "PRECONTRAST"), ("造影なし", "NONCONTRAST"), ("造影無し", "NONCONTRAST"),
    ("単純", "PLAIN"), ("なし", "NONE"), ("造影", "CONTRAST"), ("動脈優位相", "ARTERIAL"), ("動脈相", "ARTERIAL"),
    ("門脈相", "PORTAL"), ("静脈相", "VENOUS"), ("平衡相", "EQUILIBRIUM"), ("排泄相", "EXCRETORY"),
    ("腎実質相", "NEPHROGRAPHIC"), ("皮髄相", "CORTICOMEDULLARY"),
    # Chinese, simplified and traditional
    ("非增强", "NONENHANCED"), ("非增強", "NONENHANCED"), ("增强前", "PRECONTRAST"), ("增強前", "PRECONTRAST"),
    ("平扫", "PLAIN"), ("平掃", "PLAIN"), ("增强", "ENHANCED"), ("增強", "ENHANCED"), ("门静脉期", "PORTAL"),
    ("門靜脈期", "PORTAL"), ("门脉期", "PORTAL"), ("門脈期", "PORTAL"), ("动脉期", "ARTERIAL"), ("動脈期", "ARTERIAL"),
    ("静脉期", "VENOUS"), ("靜脈期", "VENOUS"), ("排泄期", "EXCRETORY"), ("实质期", "PARENCHYMAL"),
    ("實質期", "PARENCHYMAL"), ("皮髓质期", "CORTICOMEDULLARY"), ("皮髓期", "CORTICOMEDULLARY"),
    # Korean ("배설기관", excretory organs, is no phase)
    ("비조영", "NONCONTRAST"), ("조영전", "PRECONTRAST"), ("조영", "CONTRAST"), ("증강", "ENHANCED"),
    ("동맥기", "ARTERIAL"), ("문맥기", "PORTAL"), ("정맥기", "VENOUS"), ("배설기(?!관)", "EXCRETORY"),
    ("신실질기", "NEPHROGRAPHIC"),
    # Russian (capitals: the description is upper-cased first); a phase only with "фаза": "артериальное давление"
    # (blood pressure), "венозная система" and "мочевыделительная система" (the urinary tract) are none
    (_RU + "БЕСКОНТРАСТ" + _RU_END, "NONCONTRAST"),
    (_RU + r"БЕЗ\s+(?:В/В\s+|ВНУТРИВЕННОГО\s+)?КОНТРАСТ" + _RU_END, "NONCONTRAST"),
    (_RU + "КОНТРАСТ" + _RU_END, "CONTRAST"), (_RU + "НАТИВН" + _RU_END, "NATIVE"),
    (_RU + "УСИЛЕН" + _RU_END, "ENHANCED"),
    (_RU + r"(?:АРТЕРИАЛЬН|РАННЕАРТЕРИАЛЬН)" + _RU_END + r"\s+ФАЗ" + _RU_END, "ARTERIAL"),
    (_RU + r"(?:ПОРТАЛЬН|ПОРТОВЕНОЗН)" + _RU_END + r"\s+ФАЗ" + _RU_END, "PORTAL"),
    (_RU + "ВЕНОЗН" + _RU_END + r"\s+ФАЗ" + _RU_END, "VENOUS"),
    (_RU + r"(?:ЭКСКРЕТОРН|ВЫДЕЛИТЕЛЬН)" + _RU_END + r"\s+ФАЗ" + _RU_END, "EXCRETORY"),
    (_RU + "НЕФРОГРАФИЧЕСК" + _RU_END + r"\s+ФАЗ" + _RU_END, "NEPHROGRAPHIC"),
)
"""Words of other scripts (regular expressions, on the upper-cased text), read as the Latin word of the lists they
mean; at one place, the first that matches (the more specific first: "非造影" before "造影"). Japanese, Chinese
and Korean write them without spaces ("腹部造影動脈相"), so their keys are found anywhere; a Russian key only where
a word starts, with the rest of the word, and a phase only where "фаза" follows."""
_OTHER = re.compile("|".join(f"({pattern})" for pattern, _ in OTHER_SCRIPTS))
"""A word of ``OTHER_SCRIPTS`` in an upper-cased text; its group number says which."""


def _meaning(found: re.Match[str]) -> str:
    return OTHER_SCRIPTS[(found.lastindex or 1) - 1][1]


def _latin(text: str) -> str:
    """``text`` (upper-cased) with the words of ``OTHER_SCRIPTS`` replaced by their Latin words, spaced."""
    return _OTHER.sub(lambda found: f" {_meaning(found)} ", text)


_FREE_TEXT = re.compile(r"((?:Series|Study) Description |Protocol Name )(['\"])(?:\\.|(?!\2).)*\2", re.DOTALL)
"""A Series or Study Description or a Protocol Name as every reason and caution quotes it: a Python string literal
(``!r``: a quote inside escaped, no raw line break)."""


def without_free_text(text: str) -> str:
    """``text`` (a reason or a caution) with each quoted Series Description shown as '...': for the logs, the
    audit log and text burned into pixels (probe 34: a site's description may hold a patient's name; the job's
    reason and the results' headers keep it whole)."""
    return _FREE_TEXT.sub(r"\1'...'", text)


def _quoted(what: str, value: str) -> str:
    """A header value as a reason or a caution names it (``_shown``), followed, where it holds words of another
    script (shown as '?'), by what they were read as: "Series Description '???? ???' (read as CONTRAST
    ARTERIAL)"."""
    read = [_meaning(found) for found in _OTHER.finditer(value.upper())]
    return f"{what} {_shown(value)!r}" + (f" (read as {' '.join(read)})" if read else "")


def _plain(text: str) -> str:
    """Capitals in ASCII, accents taken off ("venöse" -> "VENOSE", "ß" -> "SS", "İ" -> "I"), dashes and slashes
    of other code points made ASCII; "W/O", "W-O" and "W/OUT" are "WITHOUT"; a sign is put right after a
    word it may sign ("KM (-)", "(-)KM", "- KM" -> "KM-")."""
    text = _latin(text.translate(_DASHES).replace("ı", "i").upper().replace("ß", "SS"))
    folded = unicodedata.normalize("NFKD", text)
    plain = "".join(c for c in folded if not unicodedata.combining(c))
    plain = re.sub(r"\bW\s*[/-]\s*(?:OUT|O)\b", " WITHOUT ", plain)
    plain = re.sub(r"\bI\s*\.\s*V\b\.?", " IV ", plain)  # "ohne i.v. KM" (review 46)
    plain = _SIGN_AFTER.sub(r" \1\2 ", plain)
    plain = _SIGN_BEFORE.sub(r" \2\1 ", plain)
    return plain.replace("_", " ").replace("/", " ").replace("'", " ").replace("+", "+ ")


def _words(text: str) -> list[str]:
    """The words of ``text`` as ``_plain`` has it. A hyphenated word is one where it is a word of the lists
    ("NON-CONTRAST", "UN-ENHANCED", "KM-FREI"), else its parts ("PRE-OP", "ABD-PEL"); a sign stays only on
    ``SIGNED`` words, and a "+" alone is the word "+" (with)."""
    out: list[str] = []
    plain = _plain(text)
    for token in _TOKEN.findall(plain):
        if token == "+":
            out.append("+")
            continue
        sign = token[-1] if token[-1] in "+-" else ""
        core = token.rstrip("+-")
        joined = core.replace("-", "")
        if sign and core in SIGNED:
            out.append(core + sign)
        elif "-" in core and (joined in DENY_ALONE or joined in PHASES or joined in MENTIONS or joined in UROGRAPHY):
            out.append(joined)
        else:
            out.extend(part for part in core.split("-") if part)
    return out


def _reading(words: list[str]) -> tuple[bool, set[int]]:
    """Whether the words deny contrast anywhere, and which words a denial covers (the contrast word it
    denies, and the route words and articles on the way to it)."""
    denied = False
    covered: set[int] = set()
    for i, word in enumerate(words):
        if word in DENY_ALONE or (word == "LOW" and i + 1 < len(words) and words[i + 1] == "DOSE"):
            denied = True
            covered.add(i)
        elif word in DENY_AFTER and i and (words[i - 1] in CONTRAST_WORDS or words[i - 1] in PHASES):
            if word in ("ALLERGY", "ALLERGIE") and i > 1 and words[i - 2] in ("NO", "NON", "KEINE", "KEIN"):
                continue  # "no contrast allergy": given, no allergy
            denied = True
            covered.update((i - 1, i))
            if words[i - 1] in MEDIUM and i > 1 and words[i - 2] in CONTRAST_WORDS:
                covered.add(i - 2)  # "KONTRAST MADDE VERILMEDEN"
        elif word in DENY_BEFORE:
            j, routes = i + 1, []
            while j < len(words) and (words[j] in ROUTE or words[j] in FILLER):
                routes.append(words[j])
                j += 1
            target = words[j] if j < len(words) else ""
            if target in CONTRAST_WORDS or target in PHASES:
                denied = True
                covered.update(range(i, j + 1))
                if target in MEDIUM:  # "SANS PRODUIT DE CONTRASTE", "SIN MEDIO DE CONTRASTE": up to its noun, not
                    k = j + 1  # a "with" after it ("SIN MEDIO DE CONTRASTE CON MEDIO ...": both, review 47)
                    while k < len(words) and words[k] in FILLER:
                        k += 1
                    if k < len(words) and words[k] in CONTRAST_WORDS and words[k] not in WITH | MEDIUM:
                        covered.update(range(j + 1, k + 1))
            elif "IV" in routes or (word in ("WITHOUT", "WO", "NON", "PRE") and not target and not routes):
                denied = True  # "WO IV", "ABD PEL WO", "HEMATURIA PRE": without contrast, said short
                covered.update(range(i, j))
            elif word == "PRE" and target == "POST":
                denied = True  # "PRE/POST": both phases
                covered.add(i)
        elif word == "O" and i + 1 < len(words) and words[i + 1] in ("KM", "MDC"):
            denied = True  # German "o. KM": ohne KM
            covered.update((i, i + 1))
        elif word == "WATER" and i + 1 < len(words) and words[i + 1] == "IODINE":
            denied = True  # a material decomposition's water (iodine suppressed) image: virtual unenhanced
            covered.update((i, i + 1))
    return denied, covered


WITH_OTHER = frozenset({
    "CORONAL", "CORONALS", "COR", "CORO", "SAGITTAL", "SAGITTALS", "SAG", "AXIAL", "AXIALS", "AX", "OBLIQUE",
    "REFORMAT", "REFORMATS", "REFORMATTED", "RECON", "RECONS", "RECONSTRUCTION", "RECONSTRUCTIONS", "REKONSTRUKTION",
    "REKONSTRUKTIONEN", "RECONSTRUCTIE", "RECONSTRUCCION", "RICOSTRUZIONE", "MPR", "MPRS", "MIP", "MIPS", "3D", "VR",
    "VRT", "MINIP", "BONE", "BONES", "KNOCHEN", "WINDOW", "WINDOWS", "FENSTER", "LUNG", "LUNGS", "SOFT", "TISSUE",
    "VOID", "VOIDING", "MICTION", "PRONE", "SUPINE", "BAUCHLAGE", "THIN", "THICK", "SLICES", "DUAL", "ENERGY",
    "ITERATIVE", "KERNEL", "FILTER", "SCOUT", "TOPOGRAM", "LOCALIZER", "STONE", "STONES", "CALCULI", "CALCULUS",
    "INSERTED",
})
"""What a "with" beside a denial names where it is no second phase: planes, reconstructions, windows, a void,
positions ("KUB WITH CORONAL REFORMATS", "STONE POST VOID", "nativ mit Rekonstruktion": probe 17 found them
cautioned as perhaps contrast-enhanced; probe 56: "STONE PROTOCOL, WITH 3 MM RECON", "CT WITH INSERTED STONES")."""
_SIZE = re.compile(r"^\d+([.,]\d+)?(MM|CM)?$|^(MM|CM)$")
"""A thickness or size after a "with" ("WITH 3 MM RECON", "WITH 1MM"): passed over to the word it qualifies."""


def _with_contrast(words: list[str], i: int) -> bool:
    """Whether ``words[i]`` is a "with" that, beside a denial, says a second phase: any "with" but one of
    something else (``WITH_OTHER`` next to it past route words and articles). So "W/WO", "WITH AND WITHOUT",
    "NC + DELAYED", "NONCON W UROGRAM" and "NATIV MIT SPAETAUFNAHME" caution, as an examination of both phases;
    "KUB WITH CORONAL REFORMATS" and "STONE POST VOID" do not."""
    if words[i] not in WITH:
        return False
    j = i + 1
    sized = False
    while j < len(words) and (words[j] in ROUTE or words[j] in FILLER or _SIZE.match(words[j])):
        sized = sized or bool(_SIZE.match(words[j]))
        j += 1
    if j == len(words):
        return not sized  # "KUB WITH 1MM" names a thickness; a "with" that ends the text ("NONCON W") cautions
    return words[j] not in WITH_OTHER


def _names_agent(agent: str) -> bool:
    """Whether an agent value names one: a word left once numbers, units and what a denying word before it
    denies are set aside ("IV OMNIPAQUE, NO ORAL" names one; "NO ORAL" none), where the value does not say
    only that there was none (``_all_about_none``), and is not a zero."""
    for value in (v for v in agent.split("\\") if v.strip()):
        words = _words(value.upper().replace("N/A", "NA").replace(".", ""))  # "N.A." is "NA"
        if not words or _ZERO.match(value.strip().upper().replace(" ", "")) or _all_about_none(words):
            continue
        if any(not w.isdigit() and w not in NO_AGENT and w not in ("ML", "CC", "MG", "KG", "+")
               and not (i and words[i - 1] in NO_AGENT and w != "IONIC") for i, w in enumerate(words)):
            return True
    return False


def _all_about_none(words: list[str]) -> bool:
    """Whether an agent's words, numbers and units aside, say only that there was none ("NO CONTRAST", "NOT
    APPLIED", "KEIN KM", "NONE/NONE"), not an agent with a remark ("IV ISOVUE, ORAL NONE")."""
    neutral = {"CONTRAST", "AGENT", "APPLIED", "APPLIZIERT", "GIVEN", "KM", "MDC", "ORAL", "IV", "MEDIUM",
               "CONTRASTE", "CONTRASTO", "KONTRAST", "KONTRASTMITTEL", "USED", "ADMINISTERED", "GEGEBEN"}
    return (any(w in NO_AGENT for w in words)
            and all(w in NO_AGENT or w in neutral or w.isdigit() or w in ("ML", "CC") for w in words))


def _shown(value: str) -> str:
    """A header value as a reason or a caution quotes it: at most 64 characters, in ASCII (accents taken off,
    any other letter '?'), as the overlays' burned-in text can draw it."""
    folded = unicodedata.normalize("NFKD", value.strip()[:64].replace("ı", "i").replace("ß", "ss"))
    kept = unicodedata.normalize("NFC", "".join(c for c in folded if not unicodedata.combining(c)))  # Hangul whole
    return kept.encode("ascii", "replace").decode()


def _late_kinds(words: list[str]) -> set[str]:
    """Which kinds of a late phase's words ``words`` hold: ``"urography"`` (``UROGRAPHY``), ``"uro"`` ("URO",
    which may be a department), ``"delay"`` (``DELAY``), ``"minutes"`` ("8MIN", "10 MIN"; not 0) and
    ``"phase"`` ("PHASE" where no number or "single" is beside it: "PHASE 1", "1 PHASE", "single phase" say
    which or how many, not when). None where a word names a void or a prone look (``NOT_LATE``: a stone at the
    bladder's mouth, seen again without contrast)."""
    kinds: set[str] = set()
    if any(word in NOT_LATE for word in words):
        return kinds
    for i, word in enumerate(words):
        before = words[i - 1] if i else ""
        after = words[i + 1] if i + 1 < len(words) else ""
        if word in UROGRAPHY:
            kinds.add("urography")
        elif word == "URO":
            kinds.add("uro")
        elif word in DELAY:
            kinds.add("delay")
        elif (found := _MINUTES.match(word)) and (number := found.group(1) or (before if before.isdigit() else "")):
            if int(number) > 0:
                kinds.add("minutes")
        elif word in PHASE and not any(w.isdigit() or w in NOT_WHEN or w in ROMAN for w in (before, after)):
            kinds.add("phase")
    return kinds


def _late(words: list[str]) -> bool:
    """Whether ``words`` name a late phase: a delay with minutes, a urography or "PHASE"; minutes with a
    urography ("URO" too) or "PHASE"; a urography with "PHASE" ("Urogram Phase"). "URO" is a department's
    word as often, so it counts only beside minutes ("Uro 8min", not "Uro Late 3.0" nor "URO PHASE")."""
    kinds = _late_kinds(words)
    if "delay" in kinds:
        return bool(kinds & {"minutes", "urography", "phase"})
    if "minutes" in kinds:
        return bool(kinds & {"urography", "uro", "phase"})
    return {"urography", "phase"} <= kinds


BOTH_DENIALS = frozenset({"WO", "WITHOUT", "SENZA", "SIN", "SANS", "OHNE", "SEM", "ZONDER"})
"""Denials that, right after a "with", say both phases ("W WO", "WITH AND WITHOUT", "CON E SENZA"); not "NO" ("WITH
NO CONTRAST" says none: review 46)."""
AMBIGUOUS = frozenset({"CON", "COM", "CE", "CM", "CIV"})
"""Words of ``MENTIONS`` that name something else as often in an examination's name: "con" and "com" are "with"
("SIN CONTRASTE CON PROTOCOLO LITIASIS"), "CM" centimetres ("Abdomen 50 cm")."""


def _both_phases(words: list[str], covered: set[int]) -> bool:
    """Whether an examination's name says both phases: a "with" before a contrast word, an IV route or a denial
    ("W WO CONTRAST", "WITH AND WITHOUT", "CON E SENZA MDC", "W IV"), or "PRE/POST". Not "POST" alone (after a
    treatment: "POST ESWL"), a "with" of something else ("SENZA MDC CON MPR", "W ORAL"), nor one before a contrast
    word a denial covers ("NATIV MIT KM-ALLERGIE")."""
    for i, word in enumerate(words):
        if word == "PRE" and words[i + 1:i + 2] == ["POST"]:
            after = words[i + 2] if i + 2 < len(words) else ""
            if not after or after in CONTRAST_WORDS:  # "PRE/POST", "PRE/POST CONTRAST"; not "PRE/POST ESWL"
                return True
        if word not in WITH or word == "POST" or i in covered:  # "WO CON PRE-OP": its "con" is the one denied
            continue
        j, routes = i + 1, []
        while j < len(words) and (words[j] in ROUTE or words[j] in FILLER):
            routes.append(words[j])
            j += 1
        target = words[j] if j < len(words) else ""
        if "IV" in routes or target in BOTH_DENIALS or (target in CONTRAST_WORDS and j not in covered):
            return True
    return False


def _names_contrast(examination: str) -> bool:
    """Whether an examination's name (a Study Description, a Protocol Name) names contrast, a phase, a urography or
    both phases (``_both_phases``: "CT UROGRAM", "CT ABD PELVIS W WO CONTRAST", "CT UROGRAM PRE/POST", "WITH IV
    CONTRAST NO ORAL"); not where it names oral contrast alone, or a urography beside a denial ("CT UROGRAM NONCON
    ONLY", "CT UROGRAM - CONTRAST ALLERGY": which of its phases the series is, it cannot say). Review 44: "W WO"
    had read as plain; review 45: "POST ESWL", "CON PROTOCOLO", "W ORAL" as contrast. A "+" there joins regions."""
    words = [w for w in _words(examination) if w != "+"]
    denied, covered = _reading(words)
    loose = [w for i, w in enumerate(words) if i not in covered]
    oral = any(w == "ORAL" and i not in covered for i, w in enumerate(words))
    if oral and (any(w == "IV" and i in covered for i, w in enumerate(words)) or "IV" not in words):
        return False  # oral contrast alone ("WO IV CONTRAST W ORAL", "W ORAL"): none in the urinary tract
    return (any(w in PHASES or (w in MENTIONS and w not in AMBIGUOUS) for w in loose) or _both_phases(words, covered)
            or (not denied and any(w in UROGRAPHY for w in loose)))


def contrast_evidence(agent: str, description: str,
                      context: Sequence[tuple[str, str]] = ()) -> Evidence | None:
    """What in the header says the series was acquired with contrast (the module's text); None where nothing
    does, or the description denies it and names nothing else. ``context``: what the examination is called
    (``(what, text)`` pairs: the Study Description, the Protocol Name). It never makes a skip: a late phase the
    series' own words name (``_late``) is clear unless the examination denies contrast anywhere (then a caution);
    where the series' own description and agent say nothing either way, an examination that names contrast, a
    urography or both phases (``_names_contrast``) cautions (probe 47: a CT urography's excretory series were read
    as non-contrast without a word; reviews 43-46: examination names are free text, and every rule that let them
    skip a series skipped plain stone CTs named in words it did not know)."""
    words = _words(description)
    denied, covered = _reading(words)
    loose = [w for i, w in enumerate(words) if i not in covered]
    shown = _quoted("Series Description", description)
    if denied:
        if any(w in PHASES or w in MENTIONS for w in loose) or _late(loose) or any(
                i not in covered and _with_contrast(words, i) for i in range(len(words))):
            # both phases named (an examination's name), or a late phase beside a denial of something else
            # ("CTU DELAYED NO ORAL CONTRAST": review 47)
            return Evidence(shown, clear=False)
        return None
    named = [(what, text) for what, text in context if text.strip()]
    if any(w in PHASES for w in loose):
        return Evidence(shown, clear=True)  # "EXCRETORY", "ABD PORTAL VENOUS"
    if _late(loose):  # "DELAYED UROGRAM", "Uro 8min", "10 min delay": a caution where the examination denies
        # contrast anywhere ("CT ABD PELVIS WITHOUT CONTRAST NO ORAL": review 46, its names are free text)
        return Evidence(shown, clear=not any(_reading(_words(text))[0] for _, text in named))
    if any(w in MENTIONS or w in UROGRAPHY for w in loose):
        return Evidence(shown, clear=False)
    if _names_agent(agent):
        return Evidence(_quoted("Contrast/Bolus Agent", agent), clear=False)
    for what, text in named:
        if _names_contrast(text):  # a caution, never a skip (reviews 43-46: an examination's name
            # read as contrast skipped stone follow-ups and plain orders in other words)
            own = f"its Series Description {_shown(description)!r}" if description.strip() else "no Series Description"
            return Evidence(f"{_quoted(what, text)}, and {own}", clear=False)
    return None
