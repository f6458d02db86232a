"""Multi-energy (dual-energy, spectral) CT images as the loader and the pipeline read them (uronode/energy.py,
inference/volume.py): values that are no Hounsfield units are never read as HU, a material-removed image and a
virtual monoenergetic one are read with a caution that says what they are."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

from inference.errors import VolumeError
from inference.pipeline import Pipeline, input_cautions
from inference.volume import load_volume
from tests.inference.test_volume_realworld import SLICES, Change, _enhanced, _modified, _saved
from uronode.energy import energy_image

VMI = ["DERIVED", "PRIMARY", "AXIAL", "VMI"]


@pytest.mark.parametrize(("image_type", "rescale_type", "term", "hounsfield"), [
    ("ORIGINAL\\PRIMARY\\AXIAL", "HU", None, None),
    ("ORIGINAL\\PRIMARY\\AXIAL\\CT_SOM5 SPI DUAL\\STD\\SNRG\\DET_AB", "", None, None),  # a mixed image: conventional
    ("ORIGINAL\\PRIMARY\\AXIAL", "US", None, None),  # unspecified: read as HU (the loader cautions)
    ("DERIVED\\PRIMARY\\AXIAL\\VMI", "HU", "VMI", True),
    ("derived\\primary\\axial\\vmi ", "", "VMI", True),
    ("DERIVED\\PRIMARY\\AXIAL\\MAT_REMOVED", "HU", "MAT_REMOVED", True),
    ("DERIVED\\PRIMARY\\AXIAL\\MAT_MODIFIED", "HU_MOD", "MAT_MODIFIED", True),
    ("DERIVED\\PRIMARY\\AXIAL", "HU_MOD", "MAT_MODIFIED", True),
    ("DERIVED\\PRIMARY\\AXIAL\\MAT_SPECIFIC", "MGML", "MGML", False),
    ("DERIVED\\PRIMARY\\AXIAL\\MAT_SPECIFIC", "HU", "MAT_SPECIFIC", False),  # a material's share of the HU
    ("DERIVED\\PRIMARY\\AXIAL\\EFF_ATOMIC_NUM", "Z_EFF", "Z_EFF", False),
    ("DERIVED\\PRIMARY\\AXIAL\\ELECTRON_DENSITY", "EDW", "EDW", False),
    ("DERIVED\\PRIMARY\\AXIAL\\MAT_FRACTIONAL", "PCT", "PCT", False),
    ("ORIGINAL\\PRIMARY\\AXIAL", "MGML", "MGML", False),  # the unit alone says it, whatever the Image Type
    ("DERIVED\\PRIMARY\\AXIAL\\NONE\\MAT_SPECIFIC", "10^-2 MGML", "MGML", False),  # Enhanced CT: value 5; a scale
    ("ORIGINAL\\PRIMARY\\AXIAL\\CT_SOM5 SPI", "", None, None),  # a vendor's value 4 that names no energy
    ("DERIVED\\PRIMARY\\AXIAL\\VMI", "Z_EFF", "Z_EFF", False),  # values that are no HU win
])
def test_what_the_header_says_a_multi_energy_image_is(image_type: str, rescale_type: str, term: str | None,
                                                       hounsfield: bool | None) -> None:
    found = energy_image(image_type, rescale_type)
    assert (found.term if found else None, found.hounsfield if found else None) == (term, hounsfield)


def test_what_is_skipped_when_routed_and_when_uploaded() -> None:
    vmi, removed, iodine = (energy_image(f"DERIVED\\PRIMARY\\AXIAL\\{t}", u) for t, u in
                            (("VMI", "HU"), ("MAT_REMOVED", "HU"), ("MAT_SPECIFIC", "MGML")))
    assert vmi is not None and vmi.reason(asked=False) is None and vmi.reason(asked=True) is None
    assert removed is not None and removed.reason(asked=True) is None
    assert removed.reason(asked=False) == (
        "a material-removed image (virtual non-contrast or calcium-suppressed) of a multi-energy CT: calcium, and "
        "with it stones, may have been taken out of its pixels (upload the series to /api/predict to read it with "
        "a caution)")
    assert iodine is not None and iodine.reason(asked=False) == iodine.reason(asked=True) == (
        "an image of mg/ml (Rescale Type MGML) of a multi-energy CT: its values are not the conventional Hounsfield "
        "units by which the model finds stones")


def _as(image_type: list[str], rescale_type: str | None = None, kev: float | None = None,
        only: set[int] | None = None) -> Change:
    def change(k: int, ds: Dataset) -> None:
        if only is not None and k not in only:
            return
        ds.ImageType = image_type
        if rescale_type is not None:
            ds.RescaleType = rescale_type
        if kev is not None:
            item = Dataset()
            item.MonoenergeticEnergyEquivalent = kev
            ds.MultienergyCTCharacteristicsSequence = [item]
    return change


def test_an_iodine_map_is_refused_saying_what_it_is(small_series: list[Path], tmp_path: Path) -> None:
    """Read as HU, an iodine map's 0-20 mg/ml is water: a report of no stone where none could be seen."""
    paths = _modified(small_series[:SLICES], tmp_path, _as(["DERIVED", "PRIMARY", "AXIAL", "MAT_SPECIFIC"], "MGML"))
    with pytest.raises(VolumeError, match=r"^instance 1 \(CT0001.dcm\) is an image of mg/ml \(Rescale Type MGML\) of "
                                          r"a multi-energy CT: its values are not the conventional Hounsfield units.*"
                                          rf"\(and {SLICES - 1} more like it\)$"):
        load_volume(paths)


def test_a_map_among_the_slices_of_hu_is_left_out(small_series: list[Path], tmp_path: Path) -> None:
    paths = _modified(small_series[:SLICES], tmp_path, _as(["DERIVED", "PRIMARY", "AXIAL", "EFF_ATOMIC_NUM"],
                                                           "Z_EFF", only={SLICES - 1}))
    volume = load_volume(paths)
    assert volume.hu.shape[0] == SLICES - 1 and paths[-1] not in map(Path, volume.source_paths)


def test_an_enhanced_ct_says_its_unit_in_its_functional_groups(small_series: list[Path], tmp_path: Path) -> None:
    enhanced = _enhanced(small_series[:SLICES])
    enhanced.ImageType = ["DERIVED", "PRIMARY", "AXIAL", "EFF_ATOMIC_NUM"]
    enhanced.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence[0].RescaleType = "Z_EFF"
    with pytest.raises(VolumeError, match=r"is an image of effective atomic number \(Rescale Type Z_EFF\)"):
        load_volume([_saved(enhanced, tmp_path)])
    enhanced.ImageType = VMI
    enhanced.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence[0].RescaleType = "HU"
    item = Dataset()
    item.MonoenergeticEnergyEquivalent = 45
    enhanced.SharedFunctionalGroupsSequence[0].MultienergyCTCharacteristicsSequence = [item]
    volume = load_volume([_saved(enhanced, tmp_path, "vmi.dcm")])
    assert volume.notes[0].startswith("A virtual monoenergetic image at 45 keV of a multi-energy CT: ")


def test_a_monoenergetic_image_is_read_with_its_energy_said_first(small_series: list[Path], tmp_path: Path) -> None:
    lossy = "The images were lossy-compressed"
    paths = _modified(small_series[:SLICES], tmp_path, _as(VMI, "HU", 50))
    for path in paths:  # a caution of its own, to see the order
        ds = pydicom.dcmread(path)
        ds.LossyImageCompression = "01"
        ds.ContrastBolusAgent = "OMNIPAQUE 350"
        ds.save_as(path)
    cautions = input_cautions(load_volume(paths))
    assert cautions[0].startswith("Perhaps contrast-enhanced (Contrast/Bolus Agent 'OMNIPAQUE 350')")
    assert cautions[1] == (
        "A virtual monoenergetic image at 50 keV of a multi-energy CT: calcium stones and bone read brighter below "
        "about 70 keV, and fainter above it, than on the conventional CT the model learned, and their HU are this "
        "energy's.")
    assert any(c.startswith(lossy) for c in cautions[2:])


def test_a_material_removed_image_and_an_unspecified_unit_are_read_with_a_caution(
        small_series: list[Path], tmp_path: Path) -> None:
    removed = load_volume(_modified(small_series[:SLICES], tmp_path / "vnc",
                                    _as(["DERIVED", "PRIMARY", "AXIAL", "MAT_REMOVED"], "HU")))
    assert removed.notes == (
        "A material-removed image (virtual non-contrast or calcium-suppressed) of a multi-energy CT: the processing "
        "can take calcium, and with it small stones, out of the pixels; a result without stones rules out less than "
        "on a conventional CT, and sizes and HU may be understated.",)
    unspecified = load_volume(_modified(small_series[:SLICES], tmp_path / "us", _as(["ORIGINAL", "PRIMARY", "AXIAL"],
                                                                                   "US")))
    assert unspecified.notes == ("The header calls the unit of the pixel values unspecified (Rescale Type US): they "
                                 "were read as Hounsfield units.",)
    plain = load_volume(small_series[:SLICES])
    assert plain.notes == ()


def test_a_pipeline_run_on_a_monoenergetic_series_says_so(small_series: list[Path], tmp_path: Path) -> None:
    findings = Pipeline().run(load_volume(_modified(small_series, tmp_path, _as(VMI, "HU", 70))))
    assert findings.cautions and findings.cautions[0].startswith("A virtual monoenergetic image at 70 keV")
