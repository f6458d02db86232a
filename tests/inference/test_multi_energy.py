"""Multi-energy (dual-energy, spectral) CT images as the loader and the pipeline read them (uronode/energy.py,
inference/volume.py): values that are no Hounsfield units are never read as HU, whatever the spelling of their
unit; a material-removed image and a virtual monoenergetic one are read with a caution that says what they are;
an Enhanced CT is judged frame by frame (probe 35)."""

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
NOT_HU = "its values are not the conventional Hounsfield units by which the model finds stones"
REMOVED = ("A material-removed image (virtual non-contrast or calcium-suppressed) of a multi-energy CT: the "
           "processing can take calcium, and with it small stones, out of the pixels; a result without stones rules "
           "out less than on a conventional CT, and sizes and HU may be understated.")


@pytest.mark.parametrize(("image_type", "rescale_type", "term", "hounsfield"), [
    ("ORIGINAL\\PRIMARY\\AXIAL", "HU", None, None),
    ("ORIGINAL\\PRIMARY\\AXIAL", "Hounsfield Units", None, None),
    ("ORIGINAL\\PRIMARY\\AXIAL\\CT_SOM5 SPI DUAL\\STD\\SNRG\\DET_AB", "", None, None),  # a mixed image: conventional
    ("ORIGINAL\\PRIMARY\\AXIAL\\CT_SOM5 SPI", "", None, None),  # a vendor's value 4 that names no energy
    ("ORIGINAL\\PRIMARY\\AXIAL", "US", None, None),  # unspecified: read as HU (the loader cautions)
    ("DERIVED\\PRIMARY\\AXIAL\\VMI", "HU", "VMI", True),
    ("derived\\primary\\axial\\vmi \x00", "", "VMI", True),
    ("DERIVED\\PRIMARY\\AXIAL\\MAT_REMOVED", "HU", "MAT_REMOVED", True),
    ("DERIVED\\PRIMARY\\AXIAL\\MAT_MODIFIED", "HU_MOD", "MAT_MODIFIED", True),
    ("DERIVED\\PRIMARY\\AXIAL", "HU_MOD", "MAT_MODIFIED", True),
    ("DERIVED\\PRIMARY\\AXIAL\\MAT_SPECIFIC", "MGML", "MGML", False),
    ("DERIVED\\PRIMARY\\AXIAL\\MAT_SPECIFIC", "HU", "MAT_SPECIFIC", False),  # a material's share of the HU
    ("DERIVED\\PRIMARY\\AXIAL\\EFF_ATOMIC_NUM", "Z_EFF", "ZEFF", False),
    ("DERIVED\\PRIMARY\\AXIAL\\ELECTRON_DENSITY", "EDW", "EDW", False),
    ("DERIVED\\PRIMARY\\AXIAL\\MAT_FRACTIONAL", "PCT", "PCT", False),
    ("DERIVED\\PRIMARY\\AXIAL\\NONE\\MAT_SPECIFIC", "10^-2 MGML", "MGML", False),  # Enhanced CT: value 5; a scale
    ("DERIVED\\PRIMARY\\AXIAL\\VMI", "Z_EFF", "ZEFF", False),  # values that are no HU win
    # the unit alone says it, however it is spelt (probe 35: these were read as HU, without a caution)
    ("ORIGINAL\\PRIMARY\\AXIAL", "MGML", "MGML", False),
    ("ORIGINAL\\PRIMARY\\AXIAL", "mg/ml", "MGML", False),
    ("ORIGINAL\\PRIMARY\\AXIAL", "MGML 10^-2", "MGML", False),
    ("ORIGINAL\\PRIMARY\\AXIAL", "10^-2MGML", "MGML", False),
    ("ORIGINAL\\PRIMARY\\AXIAL", "Zeff", "ZEFF", False),
    ("ORIGINAL\\PRIMARY\\AXIAL", "RHO", "RHO", False),  # a unit it does not know is no HU either
])
def test_what_the_header_says_an_image_is(image_type: str, rescale_type: str, term: str | None,
                                          hounsfield: bool | None) -> None:
    found = energy_image(image_type, rescale_type)
    assert (found.term if found else None, found.hounsfield if found else None) == (term, hounsfield)


def test_what_is_skipped_when_routed_and_when_uploaded() -> None:
    vmi, removed, iodine, other = (energy_image(f"DERIVED\\PRIMARY\\AXIAL\\{t}", u) for t, u in
                                   (("VMI", "HU"), ("MAT_REMOVED", "HU"), ("MAT_SPECIFIC", "MGML"), ("", "RHO")))
    assert vmi is not None and vmi.reason(asked=False) is None and vmi.reason(asked=True) is None
    assert removed is not None and removed.reason(asked=True) is None
    assert removed.reason(asked=False) == (
        "a material-removed image (virtual non-contrast or calcium-suppressed) of a multi-energy CT: calcium, and "
        "with it stones, may have been taken out of its pixels (upload the series to /api/predict to read it with "
        "a caution)")
    assert iodine is not None and iodine.reason(asked=False) == iodine.reason(asked=True) == (
        f"an image of mg/ml (Rescale Type 'MGML'): {NOT_HU}")
    assert other is not None and other.reason(asked=True) == (
        f"an image of values in another unit (Rescale Type 'RHO'): {NOT_HU}")


def _as(image_type: list[str], rescale_type: str | None = None, kev: float | None = None,
        only: set[int] | None = None, agent: str | None = None) -> Change:
    def change(k: int, ds: Dataset) -> None:
        if agent is not None:
            ds.ContrastBolusAgent = agent
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
    with pytest.raises(VolumeError, match=r"^instance 1 \(CT0001.dcm\) is an image of mg/ml \(Rescale Type 'MGML'\): "
                                          rf"{NOT_HU} \(and {SLICES - 1} more like it\)$"):
        load_volume(paths)


def test_a_map_among_the_slices_of_hu_is_left_out(small_series: list[Path], tmp_path: Path) -> None:
    paths = _modified(small_series[:SLICES], tmp_path, _as(["DERIVED", "PRIMARY", "AXIAL", "EFF_ATOMIC_NUM"],
                                                           "Z_EFF", only={SLICES - 1}))
    volume = load_volume(paths)
    assert volume.hu.shape[0] == SLICES - 1 and paths[-1] not in map(Path, volume.source_paths)


def _frames(enhanced: Dataset, keyword: str, values: list[Dataset]) -> None:
    """One item of ``keyword`` in each frame's functional groups."""
    for group, item in zip(enhanced.PerFrameFunctionalGroupsSequence, values, strict=True):
        setattr(group, keyword, [item])


def _item(**values: object) -> Dataset:
    item = Dataset()
    for keyword, value in values.items():
        setattr(item, keyword, value)
    return item


def test_an_enhanced_ct_is_read_frame_by_frame(small_series: list[Path], tmp_path: Path) -> None:
    """Probe 35: only the top-level Image Type and frame 1's rescale were looked at; the standard puts a frame's
    kind in its Frame Type (the top level says MIXED where the frames differ) and its unit in its own group."""
    enhanced = _enhanced(small_series[:SLICES])
    enhanced.ImageType = ["MIXED", "PRIMARY", "AXIAL", "NONE"]
    del enhanced.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence
    units = ["HU", "HU", "MGML", "10^-2 MGML", "Z_EFF"]
    _frames(enhanced, "PixelValueTransformationSequence",
            [_item(RescaleIntercept=-1024, RescaleSlope=1, RescaleType=u) for u in units])
    kinds = ["MAT_REMOVED", "NONE", "MAT_SPECIFIC", "MAT_SPECIFIC", "EFF_ATOMIC_NUM"]
    _frames(enhanced, "CTImageFrameTypeSequence", [_item(FrameType=["DERIVED", "PRIMARY", "AXIAL", "NONE", k])
                                                   for k in kinds])
    volume = load_volume([_saved(enhanced, tmp_path)])
    assert volume.frame_numbers == (1, 2)  # the maps left out
    assert volume.notes == (REMOVED,)
    with pytest.raises(VolumeError, match=r"^instance 1 \(only.dcm\) is an image of mg/ml"):
        only = _enhanced(small_series[:SLICES])
        only.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence[0].RescaleType = "MGML"
        load_volume([_saved(only, tmp_path, "only.dcm")])


def test_an_enhanced_ct_names_each_frames_energy(small_series: list[Path], tmp_path: Path) -> None:
    enhanced = _enhanced(small_series[:SLICES])
    enhanced.ImageType = ["DERIVED", "PRIMARY", "AXIAL", "NONE", "VMI"]
    _frames(enhanced, "MultienergyCTCharacteristicsSequence",
            [_item(MonoenergeticEnergyEquivalent=k) for k in (40, 140, 40, 140, 40)])
    volume = load_volume([_saved(enhanced, tmp_path)])
    assert volume.notes[0].startswith("A virtual monoenergetic image at 40 and 140 keV of a multi-energy CT: calcium "
                                      "stones and bone read brighter below about 70 keV, and fainter above it")


@pytest.mark.parametrize(("kev", "said"), [
    (50, "at 50 keV of a multi-energy CT: below the about 70 keV that reads like conventional CT: calcium stones and "
         "bone read brighter, and the noise is higher, than on the CT the model learned; the HU reported are this "
         "energy's."),
    (70, "at 70 keV of a multi-energy CT: an energy that reads about like conventional CT; the HU reported are this "
         "energy's."),
    (120, "at 120 keV of a multi-energy CT: above the about 70 keV that reads like conventional CT: calcium stones "
          "read fainter than on the CT the model learned, and small ones may be missed; the HU reported are this "
          "energy's."),
    (None, "of a multi-energy CT: calcium stones and bone read brighter below about 70 keV, and fainter above it, "
           "than on the conventional CT the model learned; the HU reported are this energy's."),
])
def test_a_monoenergetic_image_says_which_way_its_energy_moves_the_hu(
        small_series: list[Path], tmp_path: Path, kev: float | None, said: str) -> None:
    volume = load_volume(_modified(small_series[:SLICES], tmp_path, _as(VMI, "HU", kev)))
    assert volume.notes == (f"A virtual monoenergetic image {said}",)


def test_a_monoenergetic_caution_comes_after_contrast_and_before_the_rest(
        small_series: list[Path], tmp_path: Path) -> None:
    paths = _modified(small_series[:SLICES], tmp_path, _as(VMI, "HU", 50, agent="OMNIPAQUE 350"))
    for path in paths:  # a caution of its own, to see the order
        ds = pydicom.dcmread(path)
        ds.LossyImageCompression = "01"
        ds.save_as(path)
    cautions = input_cautions(load_volume(paths))
    assert cautions[0].startswith("Perhaps contrast-enhanced (Contrast/Bolus Agent 'OMNIPAQUE 350')")
    assert cautions[1].startswith("A virtual monoenergetic image at 50 keV of a multi-energy CT: ")
    assert any(c.startswith("The images were lossy-compressed") for c in cautions[2:])


def test_a_virtual_non_contrast_image_is_not_called_contrast_enhanced(small_series: list[Path],
                                                                      tmp_path: Path) -> None:
    """Probe 35: its header names the acquisition's agent, and the first caution said 'Contrast-enhanced' of an
    image whose iodine was taken out, hiding what is left of it."""
    volume = load_volume(_modified(small_series[:SLICES], tmp_path, _as(
        ["DERIVED", "PRIMARY", "AXIAL", "MAT_REMOVED"], "HU", agent="OMNIPAQUE 350")))
    assert volume.notes == (REMOVED + " It was made from a contrast-enhanced acquisition (Contrast/Bolus Agent "
                            "'OMNIPAQUE 350'): contrast the processing left, dense in the collecting system, can be "
                            "reported as a stone.",)
    assert input_cautions(volume)[0].startswith("A material-removed image")


def test_a_material_removed_image_and_an_unspecified_unit_are_read_with_a_caution(
        small_series: list[Path], tmp_path: Path) -> None:
    removed = load_volume(_modified(small_series[:SLICES], tmp_path / "vnc",
                                    _as(["DERIVED", "PRIMARY", "AXIAL", "MAT_REMOVED"], "HU")))
    assert removed.notes == (REMOVED,)
    unspecified = load_volume(_modified(small_series[:SLICES], tmp_path / "us", _as(["ORIGINAL", "PRIMARY", "AXIAL"],
                                                                                   "US")))
    assert unspecified.notes == ("The header calls the unit of the pixel values unspecified (Rescale Type US): they "
                                 "were read as Hounsfield units.",)
    assert load_volume(small_series[:SLICES]).notes == ()


def test_a_pipeline_run_on_a_monoenergetic_series_says_so(small_series: list[Path], tmp_path: Path) -> None:
    findings = Pipeline().run(load_volume(_modified(small_series, tmp_path, _as(VMI, "HU", 70))))
    assert findings.cautions and findings.cautions[0].startswith("A virtual monoenergetic image at 70 keV")
