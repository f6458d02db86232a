"""OHIF served by the node, in headless Chromium, reading the node's own DICOMweb.

One study goes through the whole node (C-STORE, the model, the result
writers); the viewer then shows the CT, the SEG over it in red, and the
Secondary Capture series with its green boxes. Screenshots are kept in
test-artifacts/screenshots/.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from inference.synth import Phantom, generate_phantom, write_series
from tests.browser.conftest import SCREENSHOTS
from tests.conftest import WITH_WORKER, query
from tests.peers.processes import Node, storescu, wait_until


def dismiss_popups(page) -> None:  # type: ignore[no-untyped-def]
    for label in ("Skip all", "Confirm and hide"):
        button = page.get_by_role("button", name=label)
        if button.count():
            button.first.click()


def rgb(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)


def red_pixels(png: bytes) -> int:
    px = rgb(png)
    return int(((px[..., 0] > 150) & (px[..., 1] < 90) & (px[..., 2] < 90)).sum())


def green_pixels(png: bytes) -> int:
    px = rgb(png)
    return int(((px[..., 1] > 150) & (px[..., 0] < 90) & (px[..., 2] < 90)).sum())


def study_through_the_node(start_node: Callable[..., Node], tmp_path: Path) -> tuple[Node, Phantom]:
    """A node with a worker, and a CT with kidney stones sent to it and processed (SEG, SC, SR made)."""
    node = start_node(**WITH_WORKER)
    phantom = generate_phantom(11, rows=512, slice_spacing=2.5, slices=24, coverage=(0.72, 0.88), n_stones=3,
                               stone_sites=("kidney",))
    write_series(phantom, tmp_path / "ct")
    assert storescu(node.dicom_port, tmp_path / "ct").returncode == 0
    wait_until(lambda: [r["state"] for r in query(node.data_dir, "SELECT state FROM jobs")] == ["delivered"],
               240, "the results")
    return node, phantom


def test_ct_seg_and_sc_render_in_the_viewer(browser, start_node: Callable[..., Node], tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    node, phantom = study_through_the_node(start_node, tmp_path)
    page = browser.new_page()
    page.goto(f"http://127.0.0.1:{node.http_port}/viewer?StudyInstanceUIDs={phantom.study_instance_uid}")
    page.wait_for_selector("canvas", timeout=60_000)
    page.wait_for_timeout(3000)
    dismiss_popups(page)
    viewport = page.locator("canvas").first

    # The CT renders.
    ct = rgb(viewport.screenshot())
    page.screenshot(path=str(SCREENSHOTS / "ohif-ct.png"))
    assert ct.std() > 10, "the CT viewport is blank"

    # The SEG, loaded over the CT, shows red where a stone is.
    page.get_by_text("SEG", exact=True).first.dblclick()
    page.wait_for_timeout(4000)
    dismiss_popups(page)
    found = 0
    for _ in range(phantom.hu.shape[0] + 1):  # the viewer opens at the first slice; step to a stone
        found = red_pixels(viewport.screenshot())
        if found > 20:
            break
        viewport.hover()
        page.mouse.wheel(0, 120)
        page.wait_for_timeout(400)
    page.screenshot(path=str(SCREENSHOTS / "ohif-seg-over-ct.png"))
    assert found > 20, "no red segmentation pixels on any slice"

    # The Secondary Capture series shows its green boxes.
    page.get_by_text("OT", exact=True).first.dblclick()
    page.wait_for_timeout(4000)
    sc = viewport.screenshot()
    page.screenshot(path=str(SCREENSHOTS / "ohif-secondary-capture.png"))
    assert green_pixels(sc) > 20 and red_pixels(sc) > 0  # the green box, and the (maybe small) red stone in it
    page.close()


def test_reading_layout_and_the_tag_toggle(browser, start_node: Callable[..., Node], tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The paper's controls: CT with the mask layer beside the AI overlay, linked; 't' hides the DICOM tags."""
    node, phantom = study_through_the_node(start_node, tmp_path)
    page = browser.new_page()
    page.goto(f"http://127.0.0.1:{node.http_port}/viewer?StudyInstanceUIDs={phantom.study_instance_uid}"
              "&hangingprotocolId=uronode-ct-overlay")
    page.wait_for_selector("canvas", timeout=60_000)
    page.wait_for_timeout(5000)
    dismiss_popups(page)
    assert page.locator("canvas").count() == 2  # CT (with the SEG layer) beside the overlay series
    shown = page.locator(".viewport-overlay").count()
    assert shown >= 2 and page.locator(".viewport-overlay.hidden").count() == 0
    page.locator("canvas").first.click()
    page.keyboard.press("t")
    page.wait_for_timeout(300)
    assert page.locator(".viewport-overlay.hidden").count() == shown  # tags off
    page.screenshot(path=str(SCREENSHOTS / "ohif-reading-layout-tags-off.png"))
    page.keyboard.press("t")
    page.wait_for_timeout(300)
    assert page.locator(".viewport-overlay.hidden").count() == 0  # and on again
    overlay = rgb(page.locator("canvas").nth(1).screenshot())
    assert overlay.std() > 10
    page.close()
