"""The paper's workflow in the browser: choose files, Predict, see the stones, open the viewer."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from pathlib import Path

from playwright.sync_api import BrowserContext

from lab.synth import generate_phantom, write_series
from tests.browser.conftest import SCREENSHOTS
from tests.conftest import WITH_WORKER
from tests.peers.processes import Node

IMAGES = re.compile(r"\d+(-\d+)?(, \d+(-\d+)?)*")


def test_upload_predict_findings_and_viewer(browser: BrowserContext, start_node: Callable[..., Node], tmp_path: Path) -> None:
    """Two CT series of one study (thin and thick, two phases: what a whole-study export gives): each block
    is labelled with its series and shows its own findings, its own key slices and a link to its series."""
    node = start_node(**WITH_WORKER)
    phantom = generate_phantom(11, rows=512, slice_spacing=2.5, slices=24, coverage=(0.72, 0.88), n_stones=3,
                               stone_sites=("kidney",))
    other = dataclasses.replace(generate_phantom(12, rows=256, slices=24), study_instance_uid=phantom.study_instance_uid)
    files = write_series(phantom, tmp_path / "ct") + write_series(other, tmp_path / "ct2", series_number=2)
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
    assert block.locator(".series-title").inner_text().endswith("(24 images)")
    rows = block.locator(".stones tr")
    assert rows.count() >= 2  # a header and at least one stone
    text = block.locator(".stones").inner_text()
    assert "left" in text or "right" in text
    assert block.locator(".stones th").last.inner_text() == "Images"
    assert IMAGES.fullmatch(block.locator(".stones td.images").first.inner_text())
    page.wait_for_function("document.querySelectorAll('.slices img').length > 0", timeout=30_000)
    page.wait_for_function("[...document.querySelectorAll('.slices img')].every(i => i.complete && i.naturalWidth > 0)",
                           timeout=30_000)
    shown = [b.locator(".slices img").evaluate_all("imgs => imgs.map(i => i.getAttribute('src'))") for b in blocks.all()]
    assert block.locator(".slices img").count() > 0
    assert not set(shown[0]) & set(shown[1])  # a block shows the overlays of its own series only
    assert all(alt.startswith("AI overlay of image ")
               for alt in page.locator(".slices img").evaluate_all("imgs => imgs.map(i => i.alt)"))
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
    assert "results of an earlier analysis of this series (24 images)" in page.locator(".reused").inner_text()
    page.close()
