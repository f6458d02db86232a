"""What the report says of a lone image, and how its numbers are rounded (probe 14: M2, m3, m4)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import highdicom as hd
import pytest
from pydicom import Dataset

from inference.postprocess import half_up
from inference.volume import load_volume
from inference.writers import write_results
from inference.writers.sc import summary_lines
from inference.writers.sr import stone_label
from tests.writers.conftest import make_findings, report_of

from .conftest import Case


@pytest.mark.parametrize("value, digits, shown", [(202.5, 0, 203.0), (40.5, 0, 41.0), (148.5, 0, 149.0),
                                                   (126.56, 1, 126.6), (8.15, 1, 8.2), (-0.5, 0, -1.0),
                                                   (1431.49, 0, 1431.0)])
def test_halves_are_rounded_up_as_a_person_rounds(value: float, digits: int, shown: float) -> None:
    assert half_up(value, digits) == shown


def test_a_lone_image_s_report_gives_no_volume_and_says_why(stones: Case, tmp_path: Path) -> None:
    """One image shows one plane of a stone: its area times the image's thickness is no stone's volume, so
    neither the measurement group nor the words give one, and the sizes are said to be in the plane."""
    k = stones.findings.stones[0].slice_indices[0]
    lone = load_volume([stones.volume.source_paths[k]])
    mask = stones.findings.mask[k:k + 1].copy()
    findings = make_findings(lone, mask)
    results = write_results(lone, findings)
    report = report_of(hd.sr.Comprehensive3DSR.from_dataset(results.sr))
    groups = report.get_volumetric_roi_measurement_groups()
    assert len(groups) == len(findings.stones) >= 1
    for group in groups:
        names = [m.name.value for m in group.get_measurements()]
        assert "118565006" not in names  # Volume
        assert names.count("81827009") == 1  # the diameter, in the plane
        assert "103339001" not in names  # and no long axis beside it: the same one
    label = stone_label(0, findings.stones[0], "axial", lone=True)
    assert "mm3" not in label and label.startswith("Stone 1, ") and " axial " in label
    statement = " ".join(_texts(results.sr))
    assert "no volume is given" in statement and "in any direction" not in statement and "mm3" not in statement
    series = " ".join(_texts(stones.results.sr))
    assert "largest extent in any direction" in series and "mm3" in series  # a series keeps lengths and volumes
    # and the findings' JSON, which programs read (probe 18: it gave the lone image a volume)
    lone_json, series_json = findings.to_json()["stones"], stones.findings.to_json()["stones"]
    assert isinstance(lone_json, list) and isinstance(series_json, list)
    assert [s["volume_mm3"] for s in lone_json] == [None] * len(findings.stones)
    # nor a length beyond the plane's, as the report gives the figures (probe 56: the page showed one)
    assert [(s["reported"]["length_mm"], s["reported"]["volume_mm3"]) for s in lone_json] == [(None, None)] * len(
        findings.stones)
    assert all(isinstance(s["volume_mm3"], float) for s in series_json)


def _texts(ds: Dataset) -> list[str]:
    """Every TEXT content item's value in an SR, depth first."""
    out = []
    for item in ds.get("ContentSequence", []):
        if item.get("ValueType") == "TEXT":
            out.append(str(item.TextValue))
        out.extend(_texts(item))
    return out


def test_predict_says_in_plane_and_gives_no_volume_for_a_lone_image(stones: Case, tmp_path: Path) -> None:
    k = stones.findings.stones[0].slice_indices[0]
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "uronode", "predict", str(stones.volume.source_paths[k]),
                           "--out", str(out), "--no-dicom", "--no-previews"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    header = done.stdout.splitlines()[0].split()
    assert "in-plane" in header and "axial" not in header
    for line in done.stdout.splitlines()[1:]:
        cells = line.split()
        if len(cells) > 5 and cells[0] == "#1" and cells[1].isdigit():
            assert "-" in cells[4:7], line  # no volume
    # what a finding on one image is worth, in the card's own figure (issue 10's lone-slice target is unmet)
    card = json.loads((Path(__file__).resolve().parents[2] / "models" / "default" / "card.json").read_text())
    lone = card["metrics"]["image_results"]["lone_slices"]
    (said,) = [line for line in done.stdout.splitlines() if "Read as one image" in line]
    assert said.startswith("#1: caution: Read as one image, without the neighbouring slices a series gives: on a"
                           " real stone-free CT read slice by slice, this model showed a false stone on"
                           f" {lone['share_with_a_false_stone']:.0%} of the slices"
                           f" ({lone['slices_with_a_false_stone']} of {lone['slices']})")
    assert said.endswith("Send the whole series where you can.")
    # a series is not told it: test_cautions' coarse series has its one caution only



def test_every_output_rounds_a_stone_s_figures_alike(stones: Case) -> None:
    """Probe 52: the SR said 101.3 mm3 and 11.3 mm where the table, the overlay and the SEG said 101.2 and 11.2
    (Python's format takes halves to the even neighbour)."""
    ties = tuple(dataclasses.replace(stone, length_mm=11.25, mean_hu=562.5, volume_mm3=101.25)
                 for stone in stones.findings.stones)
    findings = dataclasses.replace(stones.findings, stones=ties)
    assert "11.3 mm, 101 mm3, mean 563 HU" in stone_label(0, ties[0])
    assert summary_lines(findings, ties[0].slice_indices[0])[1].startswith("Largest: 11.3 mm (stone ")
    results = write_results(stones.volume, findings)
    assert results.seg is not None
    assert results.seg.SegmentSequence[0].SegmentDescription.endswith(", 11.3 mm, mean 563 HU")


def test_the_findings_json_gives_each_figure_as_the_report_does(stones: Case) -> None:
    """Probe 56: the upload page rounded the JSON's two-decimal figures again (3.949 -> 3.95 -> 4.0) where the SR
    rounded the measured 3.949 to 3.9; a stone of two voxels was listed on the page as plainly as a large one,
    while the SR said that its size and HU are understated. The JSON now carries both as the report gives them."""
    larger = next(s for s in stones.findings.stones if s.voxel_count > 2)
    near = dataclasses.replace(larger, length_mm=3.949, max_diameter_mm=3.949, volume_mm3=20.049,
                               mean_hu=612.49, max_hu=801.5, voxel_count=2)
    stones_json = dataclasses.replace(stones.findings, stones=(near,)).to_json()["stones"]
    assert isinstance(stones_json, list)
    (stone,) = stones_json
    assert stone["length_mm"] == 3.95 and stone["reported"] == {
        "length_mm": "3.9", "max_diameter_mm": "3.9", "volume_mm3": "20.0", "mean_hu": "612", "max_hu": "802"}
    label = stone_label(0, near)
    assert "3.9 mm, 20 mm3, mean 612 HU, axial 3.9 mm" in label
    assert stone["resolution_note"] == "2 voxels, at the limit of what the CT resolves: its size and HU are understated"
    assert label.endswith(f"; {stone['resolution_note']}")
    assert larger.to_json()["resolution_note"] is None
