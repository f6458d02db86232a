"""Multi-energy CT images (dual-energy, spectral, photon-counting), as far as their header says.

A stone protocol on a dual-energy or spectral scanner sends, beside its
conventional-looking images, images made from the two (or more) energies.
DICOM names them (PS3.3 C.8.2.1.1.1, Supplement 188): Image Type (0008,0008)
value 4 is one of the multi-energy terms below, and a CT image whose values
are not Hounsfield units says in what unit they are (Rescale Type
(0028,1054), required where it is not HU: any unit but HU, read however it
is spelt, "MGML", "mg/ml", "10^-2 MGML", "Zeff"). PS3.17 JJJJ.4 names the risk of a
reader that takes them for conventional CT; the stone model is such a
reader, finding stones by their HU:

- values that are no HU at all (a material's concentration in mg/ml such as
  an iodine map, an effective atomic number, an electron density, a
  material's fraction): never read (:attr:`EnergyImage.hounsfield` false).
  The series is skipped when routed and when uploaded, saying what it is;
  an instance (or an Enhanced CT's frame) of such values inside a series
  of HU is left out of it.
- HU with a material taken out or modified (virtual non-contrast, which
  removes iodine, and calcium-suppressed images, which remove calcium, the
  stuff of most stones: the header does not say which): a series of them
  is skipped when routed (a dual-energy examination also sends its
  conventional images), read with a caution when uploaded (a contrast-only
  examination's virtual non-contrast image may be all there is).
- a virtual monoenergetic image (VMI): HU at one energy; below about 70 keV
  calcium and bone read brighter than on the conventional CT the model
  learned, above it fainter. Read with a caution naming the energy, never
  skipped (some sites' default reconstruction is a VMI), also where it is
  marked DERIVED\\SECONDARY.

Images that no multi-energy term names (a dual-energy examination's mixed
or "120 kV-like" images, and everything vendors mark only in private
attributes or the Series Description) are read as conventional CT.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

IMAGE_TYPES: dict[str, tuple[str, bool]] = {
    "VMI": ("a virtual monoenergetic image", True),
    "MAT_REMOVED": ("a material-removed image (virtual non-contrast or calcium-suppressed)", True),
    "MAT_MODIFIED": ("a material-modified image (a material's HU highlighted or suppressed)", True),
    "MAT_SPECIFIC": ("a material-specific image (a material's concentration or density, such as an iodine map)",
                     False),
    "MAT_FRACTIONAL": ("a material-fraction image", False),
    "MAT_VALUE_BASED": ("a material value-based image", False),
    "EFF_ATOMIC_NUM": ("an effective atomic number image", False),
    "ELECTRON_DENSITY": ("an electron density image", False),
}
"""Image Type value 4 of multi-energy CT images (PS3.3 C.8.2.1.1.1): what each is, and whether its values are HU."""
UNITS: dict[str, str] = {
    "MGML": "mg/ml", "ZEFF": "effective atomic number", "ED": "electron density",
    "EDW": "electron density relative to water", "PCT": "percent", "PERCENT": "percent", "%": "percent",
    "OD": "optical density",
}
"""Rescale Types (PS3.3 C.11.1.1.2) of values that are not Hounsfield units, as :func:`_unit` spells them, with the
unit in words. Any other unit but these is not HU either; HU, US and HU_MOD are not here."""
HOUNSFIELD = {"", "HU", "HOUNSFIELD", "HOUNSFIELDUNIT", "HOUNSFIELDUNITS"}
UNSPECIFIED = {"US", "UNSPECIFIED"}
"""Rescale Types read as HU with a caution (``inference.volume.energy_note``): the header does not say the unit."""
MODIFIED = {"HUMOD"}
"""Rescale Types of modified HU: a material-modified image, whatever its Image Type says."""
_SCALE = re.compile(r"10\s*\^\s*[-+]?\s*\d+")
_NOT_A_LETTER = re.compile(r"[^A-Z%]")


def _unit(rescale_type: str) -> str:
    """A Rescale Type as one word: capitals, without a scale ("10^-2") or anything but letters ("mg/ml": MGML,
    "Z_EFF" and "Zeff": ZEFF, "HU_MOD": HUMOD)."""
    return _NOT_A_LETTER.sub("", _SCALE.sub("", rescale_type.upper()))


@dataclass(frozen=True)
class EnergyImage:
    """What the header says an image is, where it is no conventional CT in HU: ``term`` (its Image Type value, or
    its Rescale Type as :func:`_unit` spells it), ``kind`` (in words, for reasons and cautions) and whether its
    values are Hounsfield units; a VMI reads as conventional CT at one energy, other HU have a material taken out
    or modified."""

    term: str
    kind: str
    hounsfield: bool

    @property
    def monoenergetic(self) -> bool:
        return self.term == "VMI"

    def reason(self, asked: bool) -> str | None:
        """Why a series of such images is not read (``asked``: uploaded), or None where it is."""
        if not self.hounsfield:
            return f"{self.kind}: its values are not the conventional Hounsfield units by which the model finds stones"
        if self.monoenergetic or asked:
            return None
        return (f"{self.kind}: calcium, and with it stones, may have been taken out of its pixels (upload the "
                "series to /api/predict to read it with a caution)")


def energy_image(image_type: str, rescale_type: str = "") -> EnergyImage | None:
    """What an image is, from its Image Type (values joined by backslashes, as in the file and the index) and its
    Rescale Type, or None for conventional CT in HU (a Rescale Type of US included). Values that are no HU win
    over the Image Type's word (a material-specific image may carry HU, mg/ml or another unit), then a modified
    image, then a VMI."""
    values = [v.strip(" \x00").upper() for v in image_type.split("\\")][3:]  # value 4 (5 in Enhanced CT) on
    unit = _unit(rescale_type)
    if unit not in HOUNSFIELD | UNSPECIFIED | MODIFIED:
        said = " ".join(rescale_type.split())[:64]
        kind = f"an image of {UNITS[unit]}" if unit in UNITS else "an image of values in another unit"
        return EnergyImage(unit, f"{kind} (Rescale Type {said!r})", False)
    found = [v for v in values if v in IMAGE_TYPES]
    if unit in MODIFIED and "MAT_MODIFIED" not in found:
        found.append("MAT_MODIFIED")
    if not found:
        return None
    term = min(found, key=lambda v: (IMAGE_TYPES[v][1], v == "VMI"))  # not HU first, then modified, then VMI
    kind, hounsfield = IMAGE_TYPES[term]
    return EnergyImage(term, f"{kind} of a multi-energy CT", hounsfield)


def unspecified(rescale_type: str) -> bool:
    """Whether a Rescale Type says the unit is unspecified (US): read as HU, with a caution."""
    return _unit(rescale_type) in UNSPECIFIED
