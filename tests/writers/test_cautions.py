"""Cautions: what about a series makes its findings less sure than the model's figures say travels with the
findings (findings.json, predict's output, the SR's comment, the overlays' burned-in text and the key objects'
description: tests/writers/test_result_series_identity.py, the web page's job JSON); an ordinary series has none
and its findings are as before."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom

from inference.pipeline import MEASURED_PIXEL_MM, MEASURED_SLICE_MM, input_cautions
from inference.postprocess import Findings
from lab.realimages import image_volume
from lab.synth import generate_phantom, write_series


def _findings(cautions: tuple[str, ...] = ()) -> Findings:
    return Findings("1.2.3", "1.2.3.4", "1.2.3.5", (), (), np.zeros((1, 4, 4), np.uint8), "m", "1.0.0", cautions)


def test_pixels_outside_the_measured_sizes_give_a_caution_naming_the_size() -> None:
    assert input_cautions(image_volume(np.zeros((8, 8)), "ordinary", pixel_mm=0.75)) == ()
    low, high = MEASURED_PIXEL_MM
    assert input_cautions(image_volume(np.zeros((8, 8)), "edge", pixel_mm=high)) == ()
    assert input_cautions(image_volume(np.zeros((8, 8)), "edge", pixel_mm=low)) == ()
    (coarse,) = input_cautions(image_volume(np.zeros((8, 8)), "coarse", pixel_mm=3.0))
    assert "3.00 mm" in coarse and "coarser" in coarse and "missed" in coarse
    (fine,) = input_cautions(image_volume(np.zeros((8, 8)), "fine", pixel_mm=0.2))
    assert "0.20 mm" in fine and "finer" in fine


def test_a_series_slice_spacing_outside_the_measured_ones_gives_a_caution_and_a_lone_slice_none(
    tmp_path: Path
) -> None:
    """Probe 30: a 0.625 mm series reported a phlebolith its 1.25 mm reconstruction did not, with no caution."""
    from inference.volume import load_volume
    from tests.factory import write_series as write_slices

    thin_mm, thick_mm = MEASURED_SLICE_MM
    said = {}
    for name, thickness in (("thin", 0.625), ("edge-thin", thin_mm), ("mid", 2.0), ("edge-thick", thick_mm),
                            ("thick", 5.0)):
        _, _, paths = write_slices(tmp_path / name, 4, size=32, thickness=thickness)
        said[name] = input_cautions(load_volume(paths))
        assert input_cautions(load_volume(paths[:1])) == ()  # a lone slice has no neighbours to space
    assert said["edge-thin"] == said["mid"] == said["edge-thick"] == ()
    (thin,) = said["thin"]
    assert thin.startswith("Slices 0.62 mm apart are closer than any the model was measured on (from 1 mm)")
    (thick,) = said["thick"]
    assert thick.startswith("Slices 5.00 mm apart are farther than any the model was measured on (up to 3 mm)")
    assert "small stones may be missed" in thick


def test_findings_json_holds_cautions_only_where_there_are_some() -> None:
    assert "cautions" not in _findings().to_json()  # an ordinary series' findings (and UIDs) as before
    assert _findings(("Pixels of 3.00 mm ...",)).to_json()["cautions"] == ["Pixels of 3.00 mm ..."]


def _texts(ds: pydicom.Dataset) -> list[str]:
    return [str(e.value) for e in ds.iterall() if e.keyword == "TextValue"]


def test_a_coarse_series_is_predicted_with_its_caution_in_the_output_the_json_and_the_report(tmp_path: Path) -> None:
    # 128 rows over an abdomen: 2.9 mm pixels, as a low-resolution reconstruction or a downsampled export has
    phantom = generate_phantom(11, rows=128, slice_spacing=2.5, slices=8, coverage=(0.72, 0.88), n_stones=2,
                               stone_sites=("kidney",))
    write_series(phantom, tmp_path / "ct")
    done = subprocess.run([sys.executable, "-m", "uronode", "predict", str(tmp_path / "ct"), "--out",
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    size = max(float(v) for v in pydicom.dcmread(next((tmp_path / "ct").iterdir())).PixelSpacing)
    assert size > MEASURED_PIXEL_MM[1]
    assert f"#1: caution: Pixels of {size:.2f} mm are coarser" in done.stdout, done.stdout
    (series,) = json.loads((tmp_path / "out" / "findings.json").read_text())["series"]
    assert len(series["cautions"]) == 1 and "coarser than any the model was measured on" in series["cautions"][0]
    (sr,) = [pydicom.dcmread(tmp_path / "out" / p) for p in series["dicom"]
             if pydicom.dcmread(tmp_path / "out" / p, stop_before_pixels=True).Modality == "SR"]
    assert any("Caution: Pixels of" in t for t in _texts(sr))


def test_loading_notes_duplicates_gaps_and_lossy_images_and_an_ordinary_series_none(tmp_path: Path) -> None:
    from inference.volume import load_volume
    from tests.factory import write_series as write_slices

    _, _, paths = write_slices(tmp_path / "plain", 6, size=32)
    assert load_volume(paths).notes == ()
    assert input_cautions(load_volume(paths)) == ()

    # a second image at slice 3's position (another reconstruction, or one sent again under a new UID)
    extra = pydicom.dcmread(paths[2])
    extra.SOPInstanceUID = extra.SOPInstanceUID + ".9"
    extra.InstanceNumber = 1000
    extra.save_as(tmp_path / "plain" / "extra.dcm", enforce_file_format=True)
    (note,) = load_volume([*paths, tmp_path / "plain" / "extra.dcm"]).notes
    assert note.startswith("1 of the series' 7 images lay at the position of another")

    (gap,) = load_volume([p for i, p in enumerate(paths) if i != 3]).notes
    # named by the series' image numbers (1 at the head here, as many scanners number), not counted from the feet
    assert gap.startswith("Slices are missing between images 3 and 5 (a gap of up to") and "mm" in gap
    unnumbered = []
    for path in paths:
        ds = pydicom.dcmread(path)
        del ds.InstanceNumber
        ds.save_as(tmp_path / "plain" / f"n{path.name}", enforce_file_format=True)
        unnumbered.append(tmp_path / "plain" / f"n{path.name}")
    (gap,) = load_volume([p for i, p in enumerate(unnumbered) if i != 1]).notes
    assert gap.startswith("Slices are missing between slices 4 and 5 (counted from the feet end) (a gap")
    # probe 37: feet first, the slices' normal points to the feet and the volume starts at the head; counted from
    # the feet end all the same (it had counted from the head)
    for path in unnumbered:
        ds = pydicom.dcmread(path)
        ds.ImageOrientationPatient = [-1, 0, 0, 0, 1, 0]
        ds.save_as(path, enforce_file_format=True)
    feet_first = load_volume([p for i, p in enumerate(unnumbered) if i != 1])
    (gap,) = feet_first.notes
    assert gap.startswith("Slices are missing between slices 4 and 5 (counted from the feet end) (a gap")
    assert feet_first.index_from_head and feet_first.offsets_mm[0] < feet_first.offsets_mm[1]
    assert feet_first.positions[0][2] > feet_first.positions[-1][2]  # index 0 is the head end
    assert feet_first.where([0]) == "slice 5 (counted from the feet end)"
    assert feet_first.where([3, 4]) == "slices 1-2 (counted from the feet end)"
    assert not load_volume(unnumbered[:0] + paths).index_from_head

    # probe 30: two spacings in one series (5 slices 5 mm apart, then 7 more 2.5 mm apart) is no missing slice
    _, _, mixed = write_slices(tmp_path / "mixed", 12, size=32)
    for i, path in enumerate(mixed):
        ds = pydicom.dcmread(path)
        ds.ImagePositionPatient = [ds.ImagePositionPatient[0], ds.ImagePositionPatient[1],
                                   5.0 * i if i <= 4 else 20.0 + 2.5 * (i - 4)]
        ds.save_as(path, enforce_file_format=True)
    (changes,) = load_volume(mixed).notes
    assert changes.startswith("The slice spacing changes within the series: 4 gaps of 5.00 mm (images 1-5) ")
    assert "beside 7 of 2.50 mm" in changes

    lossy = pydicom.dcmread(paths[0])
    lossy.LossyImageCompression = "01"
    lossy.save_as(paths[0], enforce_file_format=True)
    volume = load_volume(paths)
    assert volume.notes == ("The images were lossy-compressed (JPEG or JPEG 2000 with loss, or LossyImageCompression "
                            "01): faint and small stones may be lost, and HU, by which a stone's make-up is judged, "
                            "are altered.",)
    assert input_cautions(volume) == volume.notes  # passed on to the findings' cautions
