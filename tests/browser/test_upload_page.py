"""The paper's workflow in the browser: choose files, Predict, see the stones, open the viewer."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from playwright.sync_api import BrowserContext

from lab.synth import generate_phantom, write_series
from tests.browser.conftest import SCREENSHOTS
from tests.conftest import WITH_WORKER
from tests.peers.processes import Node


def test_upload_predict_findings_and_viewer(browser: BrowserContext, start_node: Callable[..., Node], tmp_path: Path) -> None:
    node = start_node(**WITH_WORKER)
    phantom = generate_phantom(11, rows=512, slice_spacing=2.5, slices=24, coverage=(0.72, 0.88), n_stones=3,
                               stone_sites=("kidney",))
    files = write_series(phantom, tmp_path / "ct")
    page = browser.new_page()
    page.goto(f"http://127.0.0.1:{node.http_port}/upload")
    assert page.locator("#predict").is_disabled()
    page.set_input_files("#files", [str(f) for f in files])
    assert page.locator("#chosen").inner_text() == f"{len(files)} file(s) chosen."
    page.click("#predict")
    page.wait_for_selector("#findings", timeout=180_000)
    assert page.locator("#status").inner_text().startswith("Job ")
    rows = page.locator("#stones tr")
    assert rows.count() >= 2  # a header and at least one stone
    assert "left" in page.locator("#stones").inner_text() or "right" in page.locator("#stones").inner_text()
    page.wait_for_selector("img[alt='key slice']", timeout=30_000)
    page.wait_for_function("[...document.querySelectorAll(\"img[alt='key slice']\")].every(i => i.naturalWidth > 0)")
    page.screenshot(path=str(SCREENSHOTS / "upload-findings.png"), full_page=True)
    with page.context.expect_page() as opened:
        page.click("#open-viewer")
    viewer = opened.value
    viewer.wait_for_selector("canvas", timeout=60_000)
    assert phantom.study_instance_uid in viewer.url
    viewer.close()
    page.click("#reset")
    assert page.locator("#result").inner_html() == "" and page.locator("#predict").is_disabled()
    page.close()
