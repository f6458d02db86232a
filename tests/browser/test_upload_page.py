"""The paper's workflow in the browser: choose files, Predict, see the stones, open the viewer."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable
from pathlib import Path

import pydicom
from playwright.sync_api import BrowserContext

from inference.postprocess import shown
from lab.synth import generate_phantom, write_series
from tests.browser.conftest import SCREENSHOTS
from tests.conftest import WITH_WORKER
from tests.peers.processes import Node

IMAGES = re.compile(r"\d+(-\d+)?(, \d+(-\d+)?)*")


def _ranges(numbers: Iterable[int]) -> str:
    """Image numbers as the page writes them: [3, 4, 5, 9] -> "3-5, 9"."""
    out: list[str] = []
    for n in sorted(set(numbers)):
        if out and out[-1].split("-")[-1] == str(n - 1):
            out[-1] = f"{out[-1].split('-')[0]}-{n}"
        else:
            out.append(str(n))
    return ", ".join(out)


def test_upload_predict_findings_and_viewer(browser: BrowserContext, start_node: Callable[..., Node], tmp_path: Path) -> None:
    """Two CT series of one study (thin and thick, two phases: what a whole-study export gives): each block
    is labelled with its series and shows its own findings, its own key slices and a link to its series."""
    node = start_node(**WITH_WORKER)
    phantom = generate_phantom(11, rows=512, slice_spacing=2.5, slices=24, coverage=(0.72, 0.88), n_stones=3,
                               stone_sites=("kidney",))
    other = dataclasses.replace(generate_phantom(12, rows=256, slices=24, n_stones=0, n_mimics=0),
                                study_instance_uid=phantom.study_instance_uid)
    files = write_series(phantom, tmp_path / "ct") + write_series(other, tmp_path / "ct2", series_number=2)
    numbers = {}  # numbered head first, as scanners number an axial series (probe 17: the page counted feet first)
    for path in files[:24]:
        ds = pydicom.dcmread(path)
        ds.InstanceNumber = 25 - int(ds.InstanceNumber)
        ds.save_as(path)
        numbers[ds.SOPInstanceUID] = int(ds.InstanceNumber)
    # A localizer in the series, numbered as one of its slices: the stored series' numbers no longer tell its
    # images apart, the slices the model reads still do; the page gives the report's numbers (review 19 #8).
    scout = pydicom.dcmread(files[0])
    scout.SOPInstanceUID = pydicom.uid.generate_uid()
    scout.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    scout.InstanceNumber = 1
    scout.save_as(tmp_path / "scout.dcm")
    files.append(tmp_path / "scout.dcm")
    page = browser.new_page()
    page.goto(f"http://127.0.0.1:{node.http_port}/upload")
    assert page.locator("#predict").is_disabled()
    page.set_input_files("#files", [str(f) for f in files])
    assert page.locator("#chosen").inner_text() == f"{len(files)} file(s) chosen."
    page.click("#predict")
    page.wait_for_function("document.querySelectorAll('.findings').length === 2", timeout=300_000)
    assert page.locator("#status").inner_text().startswith("Job ")
    assert page.evaluate("document.activeElement.classList.contains('findings')")  # the results take the focus
    blocks = page.locator("section.series")
    assert blocks.count() == 2
    ids = page.evaluate("[...document.querySelectorAll('[id]')].map(e => e.id)")
    assert len(ids) == len(set(ids))
    block = page.locator(f"section.series[data-series-instance-uid='{phantom.series_instance_uid}']")
    assert block.locator(".series-title").inner_text().endswith("(25 images)")
    # whose images they are (probe 48: a CD's blocks named no patient nor study)
    study_date = pydicom.dcmread(files[1]).StudyDate
    assert block.locator(".identity").inner_text().startswith(
        f"Patient {pydicom.dcmread(files[1]).PatientName.family_name}")
    assert f"study of {study_date[:4]}-{study_date[4:6]}-{study_date[6:]}" in block.locator(".identity").inner_text()
    assert page.locator("#upload-report [role=alert]").count() == 0  # one patient: no warning
    rows = block.locator(".stones tr")
    assert rows.count() >= 2  # a header and at least one stone
    text = block.locator(".stones").inner_text()
    assert "left" in text or "right" in text
    assert block.locator(".stones th").all_inner_texts() == ["Stone", "Side", "Largest (mm)", "In-plane (mm)",
                                                              "Volume (mm³)", "Mean HU", "Max HU", "Images"]
    assert "as the viewer and the PACS show them" in block.locator(".stones caption").inner_text()
    jobs = [page.evaluate(f"fetch('/api/jobs/{i}').then(r => r.json())")
            for i in page.evaluate("location.hash").removeprefix("#jobs=").split(",")]
    (job,) = [j for j in jobs if j["series_instance_uid"] == phantom.series_instance_uid]
    stones = job["findings"]["stones"]
    assert job["findings"]["image_numbering"] == "instance"
    assert len(stones) == block.locator(".stones tr").count() - 1
    for row, stone in zip(block.locator(".stones tr").all()[1:], stones, strict=True):
        images = row.locator("td.images").inner_text()
        assert IMAGES.fullmatch(images)
        assert images == _ranges(numbers[sop] for sop in stone["sop_instance_uids"])  # the CT's own numbers
        # as the report gives them (probe 56: the page rounded the JSON's rounded figures again)
        reported = stone["reported"]
        assert reported["length_mm"] == shown(stone["length_mm"], 1)
        assert [row.locator(f"td:nth-child({k})").inner_text() for k in (3, 4, 5, 6, 7)] == [
            reported[name] for name in ("length_mm", "max_diameter_mm", "volume_mm3", "mean_hu", "max_hu")]
    assert any(s["length_mm"] > s["max_diameter_mm"] for s in stones)  # the two columns differ somewhere
    negative = page.locator(f"section.series[data-series-instance-uid='{other.series_instance_uid}']")
    assert negative.locator(".findings").inner_text() == "0 stone(s) found"
    assert negative.locator(".negative").inner_text().startswith("No stone found. This does not rule one out")
    assert block.locator(".negative").count() == 0
    page.wait_for_function("document.querySelectorAll('.slices img').length > 0", timeout=30_000)
    page.wait_for_function("[...document.querySelectorAll('.slices img')].every(i => i.complete && i.naturalWidth > 0)",
                           timeout=30_000)
    pictures = [b.locator(".slices img").evaluate_all("imgs => imgs.map(i => i.getAttribute('src'))") for b in blocks.all()]
    assert block.locator(".slices img").count() > 0
    assert not set(pictures[0]) & set(pictures[1])  # a block shows the overlays of its own series only
    # the series without a stone shows its one summary image, which says so (probe 42)
    assert negative.locator(".slices img").count() == 1 and negative.locator("h4").inner_text() == "Summary image"
    assert all(alt.startswith("AI overlay of image ")
               for alt in page.locator(".slices img").evaluate_all("imgs => imgs.map(i => i.alt)"))
    stone_images = {numbers[sop] for s in stones for sop in s["sop_instance_uids"]}
    alts = block.locator(".slices img").evaluate_all("imgs => imgs.map(i => i.alt)")
    assert {int(re.match(r"AI overlay of image (\d+)", alt)[1]) for alt in alts} == stone_images  # type: ignore[index]
    # ... and shown under each picture, as the table gives them (probe 26: in alt alone)
    captions = block.locator(".slices figcaption").all_inner_texts()
    assert [c.removeprefix("Image ") for c in captions] == [a.removeprefix("AI overlay of image ") for a in alts]
    page.screenshot(path=str(SCREENSHOTS / "upload-findings.png"), full_page=True)
    link = block.locator(".open-viewer")
    assert link.inner_text() == "Open in viewer (opens in a new tab)"
    assert f"uronodeSeriesInstanceUID={phantom.series_instance_uid}" in (link.get_attribute("href") or "")
    with page.context.expect_page() as opened:
        link.click()
    viewer = opened.value
    viewer.wait_for_selector("canvas", timeout=60_000)
    assert phantom.study_instance_uid in viewer.url
    viewer.close()
    page.click("#reset")
    assert page.locator("#result").inner_html() == "" and page.locator("#predict").is_disabled()
    # One image of a series analysed already: the earlier job, and the page says so.
    page.set_input_files("#files", [str(files[3])])
    page.click("#predict")
    page.wait_for_selector(".findings", timeout=60_000)
    assert "results of an earlier analysis of this series (25 images)" in page.locator(".reused").inner_text()
    page.close()
