"""Multi-energy CT images (dual-energy, spectral, photon-counting), as far as their header says.

A stone protocol on a dual-energy or spectral scanner sends, beside its
conventional-looking images, images made from the two (or more) energies.
DICOM names them (PS3.3 C.8.2.1.1.1, Supplement 188): Image Type (0008,0008)
value 4 is one of the multi-energy terms below, and a CT image whose values
are not Hounsfield units says in what unit they are (Rescale Type
(0028,1054), required where it is not HU; a scale may come first, as in
"10^-2 MGML"). PS3.17 JJJJ.4 names the risk of a
reader that takes them for conventional CT; the stone model is such a
reader, finding stones by their HU:

- values that are no HU at all (a material's concentration in mg/ml such as
  an iodine map, an effective atomic number, an electron density, a
  material's fraction): never read (:attr:`EnergyImage.hounsfield` false).
  The series is skipped when routed and when uploaded, saying what it is;
  an instance of such values inside a series of HU is left out of it.
- HU with a material taken out or modified (virtual non-contrast, which
  removes iodine, and calcium-suppressed images, which remove calcium, the
  stuff of most stones: the header does not say which): skipped when routed
  (a dual-energy examination also sends its conventional images), read with
  a caution when uploaded (a contrast-only examination's virtual
  non-contrast image may be all there is).
- a virtual monoenergetic image (VMI): HU at one energy; below about 70 keV
  calcium and bone read brighter than on the conventional CT the model
  learned, above it fainter. Read with a caution naming the energy, never
  skipped (some sites' default reconstruction is a VMI).

Images that no multi-energy term names (a dual-energy examination's mixed
or "120 kV-like" images, and everything vendors mark only in private
attributes or the Series Description) are read as conventional CT.
"""

from __future__ import annotations

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
RESCALE_TYPES: dict[str, str] = {
    "MGML": "mg/ml", "Z_EFF": "effective atomic number", "ED": "electron density",
    "EDW": "electron density relative to water", "PCT": "percent", "OD": "optical density",
}
"""Rescale Types (PS3.3 C.11.1.1.2) of values that are not Hounsfield units, with their unit. HU, US (unspecified:
read as HU with a caution, ``inference.volume``) and HU_MOD (modified HU: a material-modified image) are not here."""
MODIFIED = "MAT_MODIFIED"
"""What a Rescale Type of HU_MOD makes an image that names no multi-energy term."""


@dataclass(frozen=True)
class EnergyImage:
    """What the header says a multi-energy image is: ``term`` (its Image Type value 4, or Rescale Type), ``kind``
    (in words), whether its values are Hounsfield units and whether it reads as conventional CT at one energy (a
    VMI: read with a caution); HU that are not conventional are a material-removed or -modified image."""

    term: str
    kind: str
    hounsfield: bool

    @property
    def monoenergetic(self) -> bool:
        return self.term == "VMI"

    def reason(self, asked: bool) -> str | None:
        """Why a series of such images is not read (``asked``: uploaded), or None where it is."""
        if not self.hounsfield:
            return (f"{self.kind} of a multi-energy CT: its values are not the conventional Hounsfield units by "
                    "which the model finds stones")
        if self.monoenergetic or asked:
            return None
        return (f"{self.kind} of a multi-energy CT: calcium, and with it stones, may have been taken out of its "
                "pixels (upload the series to /api/predict to read it with a caution)")


def energy_image(image_type: str, rescale_type: str = "") -> EnergyImage | None:
    """What a multi-energy image is, from its ImageType (values joined by backslashes, as in the file and the
    index) and Rescale Type, or None for conventional CT. Values that are no HU win over the Image Type's word
    (a material-specific image may carry HU, mg/ml or another unit), then a modified one, then a VMI."""
    values = [v.strip().upper() for v in image_type.split("\\")][3:]  # value 4 (5 in Enhanced CT) and later
    words = rescale_type.strip().upper().split()
    unit = words[-1] if words else ""  # the unit, after a scale where one is given ("10^-2 MGML": mg/ml x 100)
    if unit in RESCALE_TYPES:
        return EnergyImage(unit, f"an image of {RESCALE_TYPES[unit]} (Rescale Type {' '.join(words)})", False)
    found = [v for v in values if v in IMAGE_TYPES]
    if unit == "HU_MOD" and MODIFIED not in found:
        found.append(MODIFIED)
    if not found:
        return None
    term = min(found, key=lambda v: (IMAGE_TYPES[v][1], v == "VMI"))  # not HU first, then modified, then VMI
    kind, hounsfield = IMAGE_TYPES[term]
    return EnergyImage(term, kind, hounsfield)
