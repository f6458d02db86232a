"""OHIF served by the node, in headless Chromium, reading the node's own DICOMweb: the reading layout and its controls.

One study goes through the whole node once for the module (DCMTK storescu,
the model, the result writers) beside a study without results; every test
opens the viewer on it in a fresh page of the one browser, uses a control as
a person would (mouse drags, keys, clicks) and checks the screenshot's pixels.
A second study with two CT series, each with results of its own, checks that
the viewer shows one CT series with its own SEG, overlay series and stones.
Screenshots are kept in test-artifacts/screenshots/ (with UPDATE_VIEWER_DOCS=1
also, small, in docs/viewer/ for docs/viewer.md).
"""

from __future__ import annotations

import dataclasses
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import httpx
import numpy as np
import pydicom
import pytest
from playwright.sync_api import BrowserContext, Page
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from inference.postprocess import measure_stones
from inference.volume import load_volume
from inference.writers import write_results
from lab.synth import PhantomOptions, generate_phantom, write_series
from tests.browser.conftest import (
    dicomweb_json,
    green_pixels,
    grey_mask,
    red_mask,
    red_pixels,
    rgb,
    save_shot,
)
from tests.conftest import FAST_COMPLETION, WITH_WORKER, query
from tests.factory import write_series as factory_series
from tests.peers.processes import Node, free_port, storescu, wait_until

CT = '[data-viewportid="uronode-ct"]'
OVERLAY = '[data-viewportid="uronode-overlay"]'


@dataclass(frozen=True)
class Stone:
    label: str
    """The SR's comment, as the viewer lists it."""
    diameter_mm: float
    sop_instance_uid: str
    """The CT slice of the stone's region (its widest)."""


@dataclass(frozen=True)
class Study:
    node: Node
    uid: str
    other_uid: str
    """A study without results."""
    stones: tuple[Stone, ...]
    overlay_of: dict[str, str]
    """CT SOP Instance UID -> the overlay (SC) image made from it."""

    def url(self, uid: str | None = None) -> str:
        return f"http://127.0.0.1:{self.node.http_port}/viewer?StudyInstanceUIDs={uid or self.uid}"


def _series_of(port: int, study: str, modality: str) -> list[str]:
    return [s["0020000E"]["Value"][0] for s in dicomweb_json(port, f"studies/{study}/series")
            if s["00080060"]["Value"][0] == modality]


def _code(item: Dataset) -> str:
    return str(item.ConceptNameCodeSequence[0].CodeValue) if "ConceptNameCodeSequence" in item else ""


def stones_in_sr(sr: Dataset) -> tuple[Stone, ...]:
    """The stones of a TID 1500 report read on its own: groups joined by tracking UID (112040)."""
    (measurements,) = [i for i in sr.ContentSequence if _code(i) == "126010"]
    diameters: dict[str, float] = {}
    slices: dict[str, str] = {}
    labels: dict[str, str] = {}
    for group in measurements.ContentSequence:
        items = list(group.ContentSequence)
        uid = next(str(i.UID) for i in items if _code(i) == "112040")
        for item in items:
            if item.ValueType == "NUM" and _code(item) == "81827009":
                diameters[uid] = float(item.MeasuredValueSequence[0].NumericValue)
            if item.ValueType == "SCOORD":
                slices[uid] = str(item.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
            if item.ValueType == "TEXT" and _code(item) == "121106":
                labels[uid] = str(item.TextValue)
    uids = dict.fromkeys([*diameters, *slices, *labels])  # in the report's order
    return tuple(Stone(label=labels[u], diameter_mm=diameters[u], sop_instance_uid=slices[u]) for u in uids)


def _other_study(ct: Path, out: Path) -> str:
    """The same images as an MR study of their own: the node skips it, so it has no results."""
    study, series = generate_uid(), generate_uid()
    out.mkdir()
    for path in sorted(ct.iterdir()):
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.Modality, ds.StudyDescription = "MR", "Other study without results"
        ds.save_as(out / path.name)
    return study


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Study]:
    """A node with a worker; a CT with kidney stones sent by DCMTK and processed; a study without results."""
    root = tmp_path_factory.mktemp("reading")
    node = Node(root / "node", free_port(), free_port(), extra_env={**FAST_COMPLETION, **WITH_WORKER}).start()
    try:
        phantom = generate_phantom(11, rows=512, slice_spacing=2.5, slices=24, coverage=(0.72, 0.88), n_stones=3,
                                   stone_sites=("kidney",))
        write_series(phantom, root / "ct")
        other = _other_study(root / "ct", root / "other")
        assert storescu(node.dicom_port, root / "ct").returncode == 0
        assert storescu(node.dicom_port, root / "other").returncode == 0
        wait_until(lambda: [r["state"] for r in query(node.data_dir, "SELECT state FROM jobs")] == ["delivered"],
                   300, "the results")
        port, uid = node.http_port, phantom.study_instance_uid
        (sr_series,) = _series_of(port, uid, "SR")
        (sr,) = [Dataset.from_json(d) for d in dicomweb_json(port, f"studies/{uid}/series/{sr_series}/metadata")]
        (sc_series,) = _series_of(port, uid, "OT")
        overlay_of = {
            str(sc.SourceImageSequence[0].ReferencedSOPInstanceUID): str(sc.SOPInstanceUID)
            for sc in (Dataset.from_json(d, lambda uri: b"")
                       for d in dicomweb_json(port, f"studies/{uid}/series/{sc_series}/metadata"))
        }
        stones = stones_in_sr(sr)
        assert len(stones) >= 2, "the model should find at least two of the three stones"
        yield Study(node, uid, other, stones, overlay_of)
    finally:
        node.stop()


@dataclass(frozen=True)
class Reading:
    """One CT series of a study with two, and the node's results made from it."""

    ct: str
    """The CT's SeriesInstanceUID."""
    seg: str
    overlay: str
    """The overlay (SC) series."""
    stones: tuple[Stone, ...]
    overlay_of: dict[str, str]


@dataclass(frozen=True)
class TwoSeries:
    node: Node
    uid: str
    readings: tuple[Reading, Reading]
    """In the order sent: the first has the higher SeriesNumber, so the second is the first of the study."""

    def url(self, param: str | None = None, reading: Reading | None = None) -> str:
        series = f"&{param}={reading.ct}" if param and reading else ""
        return f"http://127.0.0.1:{self.node.http_port}/viewer?StudyInstanceUIDs={self.uid}{series}"


def _metadata(port: int, study: str, series: str) -> list[Dataset]:
    return [Dataset.from_json(d, lambda uri: b"") for d in dicomweb_json(port, f"studies/{study}/series/{series}/metadata")]


def _made_from(port: int, study: str, ct: str, sops: set[str]) -> tuple[str, str, Dataset]:
    """The SEG, the overlay series and the SR the node made from the CT series ``ct``, found by their references."""
    segs = [s for s in _series_of(port, study, "SEG")
            if _metadata(port, study, s)[0].ReferencedSeriesSequence[0].SeriesInstanceUID == ct]
    overlays = [s for s in _series_of(port, study, "OT")
                if str(_metadata(port, study, s)[0].SourceImageSequence[0].ReferencedSOPInstanceUID) in sops]
    srs = [sr for s in _series_of(port, study, "SR") for sr in _metadata(port, study, s)
           if any(series.SeriesInstanceUID == ct for item in sr.CurrentRequestedProcedureEvidenceSequence
                  for series in item.ReferencedSeriesSequence)]
    assert len(segs) == len(overlays) == len(srs) == 1, (segs, overlays, len(srs))
    return segs[0], overlays[0], srs[0]


@pytest.fixture(scope="module")
def two_series(study: Study, tmp_path_factory: pytest.TempPathFactory) -> TwoSeries:
    """Two CT series in one study (two phases, exported together), each with stones of its own, on the same node."""
    root = tmp_path_factory.mktemp("two-series")
    options: PhantomOptions = {"rows": 256, "slices": 24, "coverage": (0.62, 1.0), "stone_sites": ("kidney",), "n_stones": 3}
    first = generate_phantom(12, **options)
    second = dataclasses.replace(generate_phantom(13, **options),
                                 study_instance_uid=first.study_instance_uid)
    for name, phantom, number in (("a", first, 3), ("b", second, 2)):
        for path in write_series(phantom, root / name, series_number=number):
            ds = pydicom.dcmread(path)
            ds.StudyDescription = "Two phases of one abdomen"  # not the other study's, which the study list opens
            ds.save_as(path)
        assert storescu(study.node.dicom_port, root / name).returncode == 0
    wait_until(lambda: [r["state"] for r in query(study.node.data_dir, "SELECT state FROM jobs")] == ["delivered"] * 3,
               300, "the results of both series")
    port, uid = study.node.http_port, first.study_instance_uid
    readings = []
    for phantom in (first, second):
        ct = phantom.series_instance_uid
        sops = {phantom.sop_instance_uid(k) for k in range(phantom.hu.shape[0])}
        seg, overlay, sr = _made_from(port, uid, ct, sops)
        overlay_of = {str(sc.SourceImageSequence[0].ReferencedSOPInstanceUID): str(sc.SOPInstanceUID)
                      for sc in _metadata(port, uid, overlay)}
        readings.append(Reading(ct, seg, overlay, stones_in_sr(sr), overlay_of))
    a, b = readings
    assert a.stones and b.stones, "the model should find stones in both series"
    assert not {s.label for s in a.stones} & {s.label for s in b.stones}, "the two series' stones should differ"
    return TwoSeries(study.node, uid, (a, b))


def open_reading(browser: BrowserContext, url: str) -> Page:
    """A fresh page on the study, once the viewer has opened on the stones."""
    page = browser.new_page()
    page.goto(url)
    page.wait_for_function("window.uronodeOpened", timeout=120_000)
    page.wait_for_timeout(1500)  # the last renders after the cameras were fitted
    return page


def shown_image(page: Page, viewport_id: str) -> str:
    return page.evaluate(
        "(id) => window.cornerstone.getRenderingEngines()[0].getViewport(id).getCurrentImageId()", viewport_id
    )


def grab(page: Page, selector: str) -> np.ndarray:
    return rgb(page.locator(selector).screenshot())


def image_band(px: np.ndarray) -> np.ndarray:
    """The viewport without its corners' text: rows 15 % to 85 %."""
    h = px.shape[0]
    return px[int(h * 0.15):int(h * 0.85)]


def stone(px: np.ndarray) -> tuple[int, np.ndarray]:
    """(size in pixels, centre (row, column)) of the red stone in a viewport's screenshot."""
    on = np.argwhere(red_mask(px))
    assert len(on) > 20, "no red stone in the viewport"
    return len(on), on.mean(0)


def press(page: Page, key: str) -> None:
    page.keyboard.press(key)
    page.wait_for_timeout(700)


def drag(page: Page, selector: str, dx: int, dy: int, button: Literal["left", "middle", "right"] = "left") -> None:
    box = page.locator(selector).bounding_box()
    assert box is not None, f"{selector} is not shown"
    x, y = box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.8  # below the body: no box or label there
    page.mouse.move(x, y)
    page.mouse.down(button=button)
    page.mouse.move(x + dx, y + dy, steps=12)
    page.mouse.up(button=button)
    page.wait_for_timeout(700)


def focus_ct(page: Page) -> None:
    """Hover the CT viewport, as a person does before a key (no click: the left button is window/level)."""
    page.locator(CT).hover()


def test_double_click_in_the_study_list_opens_the_stones(browser: BrowserContext, study: Study) -> None:
    page = browser.new_page()
    page.goto(f"http://127.0.0.1:{study.node.http_port}/")
    page.get_by_text("Synthetic abdomen CT").first.dblclick()
    page.wait_for_function("window.uronodeOpened", timeout=120_000)
    page.wait_for_timeout(1500)
    assert page.url.endswith(f"/viewer?StudyInstanceUIDs={study.uid}")  # no layout named in the URL
    # No tour, no dialog over the images.
    assert page.locator(".shepherd-element").count() == 0 and page.get_by_role("button", name="Skip all").count() == 0
    assert page.get_by_role("dialog").count() == 0
    # The reading layout: the CT with the mask layer, the overlay series beside it.
    assert page.locator("[data-viewportid]").count() == 2
    largest = max(study.stones, key=lambda s: s.diameter_mm)
    assert page.evaluate("window.uronodeOpened") == largest.sop_instance_uid
    assert f"/instances/{largest.sop_instance_uid}/" in shown_image(page, "uronode-ct")
    assert f"/instances/{study.overlay_of[largest.sop_instance_uid]}/" in shown_image(page, "uronode-overlay")
    save_shot(page.screenshot(), "layout")
    ct, overlay = page.locator(CT).screenshot(), page.locator(OVERLAY).screenshot()
    assert red_pixels(ct) > 40, "no red stone mask over the CT"
    assert grey_mask(rgb(ct)).sum() > 20_000, "no CT under the mask"
    assert green_pixels(overlay) > 40 and red_pixels(overlay) > 40, "no green box around a red stone on the overlay"
    listed = page.locator('[data-cy="trackedMeasurements-panel"]').inner_text().replace("\n", " ")
    assert all(stone.label in listed for stone in study.stones), "the stone list is not shown"
    page.close()


def test_stones_are_listed_and_a_click_goes_to_one(browser: BrowserContext, study: Study) -> None:
    page = open_reading(browser, study.url())
    panel = page.locator('[data-cy="trackedMeasurements-panel"]')
    listed = panel.inner_text()
    for stone in study.stones:
        assert stone.label in listed.replace("\n", " ")
        assert re.search(r"(left|right|midline): [\d.]+ mm, \d+ mm3, mean -?\d+ HU", stone.label)
    save_shot(page.screenshot(), "stone-list")
    largest = max(study.stones, key=lambda s: s.diameter_mm)
    other = next(s for s in study.stones if s.sop_instance_uid != largest.sop_instance_uid)
    before = grab(page, CT)
    number = other.label.split(",")[0]  # "Stone 2"
    panel.get_by_text(number + ",").first.click()
    page.wait_for_timeout(1500)
    assert f"/instances/{other.sop_instance_uid}/" in shown_image(page, "uronode-ct")
    assert f"/instances/{study.overlay_of[other.sop_instance_uid]}/" in shown_image(page, "uronode-overlay")
    after = grab(page, CT)
    assert np.abs(after - before).mean() > 2, "the CT viewport did not change slice"
    # each row: the SR's comment, site and finding, not cornerstone's figures of the box (probe 26: "0", then
    # "4.17 mm2" and "Max: 198 HU" under the stone's own figures, as if they were the stone's)
    lines = panel.inner_text().splitlines()
    assert not [line for line in lines if line.strip() == "0" or "mm²" in line or line.startswith("Max:")], lines
    save_shot(page.screenshot(), "stone-list-jump")
    # Probe 26: the box drawn on the stone's own extent hid a small stone's red mask at the default zoom; it is
    # drawn with the overlay's 5 mm around the stone (the report's region stays the stone's own box).
    smallest = min(study.stones, key=lambda s: s.diameter_mm)
    panel.get_by_text(smallest.label.split(",")[0] + ",").first.click()
    page.wait_for_timeout(1500)
    assert f"/instances/{smallest.sop_instance_uid}/" in shown_image(page, "uronode-ct")
    widths = page.evaluate("""() => window.cornerstoneTools.annotation.state.getAllAnnotations()
      .filter((a) => /^Stone [0-9]+,/.test(a.data.label || ''))
      .map((a) => [a.data.uronodeFramed === true, Math.hypot(...a.data.handles.points[1].map((v, i) => v
        - a.data.handles.points[0][i]))])""")
    assert len(widths) == len(study.stones) and all(framed for framed, _ in widths), widths
    assert min(width for _, width in widths) > 10, widths  # 5 mm each side of at least a pixel
    assert red_pixels(page.locator(CT).screenshot()) > 0, "the smallest stone's mask is not seen in its box"
    page.close()


def test_a_study_without_results_opens_in_ohifs_layout(browser: BrowserContext, study: Study) -> None:
    page = browser.new_page()
    page.goto(study.url(study.other_uid))
    page.wait_for_selector("[data-viewportid] canvas", timeout=120_000)
    page.wait_for_timeout(3000)
    assert page.locator("[data-viewportid]").count() == 1
    assert page.locator(CT).count() == 0 and page.evaluate("window.uronodeOpened") is None
    assert grey_mask(rgb(page.locator("[data-viewportid]").screenshot())).sum() > 20_000
    page.close()


def test_window_level_by_dragging(browser: BrowserContext, study: Study) -> None:
    page = open_reading(browser, study.url())
    before = grab(page, CT)
    corner = page.locator(".viewport-overlay.overlay-bottom.left-viewport").first  # the CT's "W: 400 L: 40"
    text = corner.inner_text()
    drag(page, CT, 120, 60)  # left button: the Window Level tool
    after = grab(page, CT)
    assert corner.inner_text() != text
    assert abs(image_band(after).mean() - image_band(before).mean()) > 3, "the CT's brightness did not change"
    save_shot(page.locator(CT).screenshot(), "window-level")
    page.close()


def test_zoom_by_right_drag_and_pan_by_middle_drag(browser: BrowserContext, study: Study) -> None:
    page = open_reading(browser, study.url())
    size0, _ = stone(grab(page, CT))
    drag(page, CT, 0, 80, button="right")  # the Zoom tool
    size1, centre1 = stone(grab(page, CT))
    assert size1 > size0 * 1.3, f"no zoom: the stone went from {size0} to {size1} pixels"
    save_shot(page.locator(CT).screenshot(), "zoom")
    drag(page, CT, -100, -60, button="middle")  # the Pan tool
    size2, centre2 = stone(grab(page, CT))
    moved = centre2 - centre1
    assert abs(moved[0] + 60) < 15 and abs(moved[1] + 100) < 15, f"no pan by the drag: moved {moved}"
    assert abs(size2 - size1) < 0.1 * size1
    save_shot(page.locator(CT).screenshot(), "pan")
    page.close()


def test_sync_viewports_on_and_off(browser: BrowserContext, study: Study) -> None:
    page = open_reading(browser, study.url())
    overlay0, _ = stone(grab(page, OVERLAY))
    drag(page, CT, 0, 80, button="right")
    overlay1, _ = stone(grab(page, OVERLAY))
    assert overlay1 > overlay0 * 1.3, "sync on: zooming the CT did not zoom the overlay series"
    save_shot(page.screenshot(), "sync-on")
    focus_ct(page)
    press(page, "y")  # sync off
    ct1, _ = stone(grab(page, CT))
    drag(page, CT, 0, -60, button="right")
    ct2, _ = stone(grab(page, CT))
    overlay2, _ = stone(grab(page, OVERLAY))
    assert ct2 < ct1 * 0.8, "the CT did not zoom out"
    assert abs(overlay2 - overlay1) < 0.05 * overlay1, "sync off: the overlay series followed the CT"
    save_shot(page.screenshot(), "sync-off")
    focus_ct(page)
    press(page, "y")  # on again
    drag(page, CT, 0, -40, button="right")
    overlay3, _ = stone(grab(page, OVERLAY))
    assert overlay3 < overlay2 * 0.8, "sync on again: the overlay series did not follow"
    page.close()


def test_active_layer_ct_mask_or_both(browser: BrowserContext, study: Study) -> None:
    page = open_reading(browser, study.url())
    both = grab(page, CT)
    red0, grey0 = int(red_mask(both).sum()), int(grey_mask(both).sum())
    assert red0 > 40 and grey0 > 20_000
    focus_ct(page)
    press(page, "l")  # CT only
    ct_only = grab(page, CT)
    save_shot(page.locator(CT).screenshot(), "layer-ct")
    assert red_mask(ct_only).sum() < red0 * 0.05 and grey_mask(ct_only).sum() > grey0 * 0.8
    press(page, "l")  # mask only
    mask_only = grab(page, CT)
    save_shot(page.locator(CT).screenshot(), "layer-mask")
    assert red_mask(mask_only).sum() > red0 * 0.8 and grey_mask(mask_only).sum() < grey0 * 0.05
    press(page, "l")  # both again
    again = grab(page, CT)
    assert red_mask(again).sum() > red0 * 0.8 and grey_mask(again).sum() > grey0 * 0.8
    page.close()


def test_mask_opacity_down_and_up(browser: BrowserContext, study: Study) -> None:
    page = open_reading(browser, study.url())
    outline = np.argwhere(red_mask(grab(page, CT)))  # the mask's outline is drawn fully red; its fill is not
    assert len(outline) > 40
    (r0, c0), (r1, c1) = outline.min(0), outline.max(0)

    def redness() -> float:  # over the stone's box: red minus the mean of green and blue
        now = grab(page, CT)[r0:r1 + 1, c0:c1 + 1]
        return float((now[..., 0] - (now[..., 1] + now[..., 2]) / 2).mean())

    default = redness()
    focus_ct(page)
    press(page, "]")
    press(page, "]")
    opaque = redness()
    save_shot(page.locator(CT).screenshot(), "opacity-high")
    for _ in range(4):
        press(page, "[")
    faint = redness()
    save_shot(page.locator(CT).screenshot(), "opacity-low")
    assert opaque > default + 10 and faint < default - 10, (faint, default, opaque)
    page.close()


def test_overlay_mask_and_boxes_off_and_on(browser: BrowserContext, study: Study) -> None:
    page = open_reading(browser, study.url())

    def annotation_pixels(px: np.ndarray) -> int:  # the stone's box, yellow or green, and its text
        return int(((px[..., 1] > 150) & (px[..., 2] < 90)).sum())

    on = grab(page, CT)
    assert red_mask(on).sum() > 40 and annotation_pixels(on) > 40
    focus_ct(page)
    press(page, "o")
    off = grab(page, CT)
    save_shot(page.locator(CT).screenshot(), "overlay-off")
    assert red_mask(off).sum() < 5 and annotation_pixels(off) < 5
    assert grey_mask(off).sum() > grey_mask(on).sum() * 0.8  # the CT stays
    press(page, "o")
    again = grab(page, CT)
    assert red_mask(again).sum() > 40 and annotation_pixels(again) > 40
    page.close()


def test_dicom_tags_off_and_on(browser: BrowserContext, study: Study) -> None:
    page = open_reading(browser, study.url())

    def text_pixels(px: np.ndarray) -> int:  # OHIF's light blue text (173, 202, 240) in the left corners
        h, w = px.shape[:2]
        corners = np.concatenate([px[int(h * 0.03):int(h * 0.12), : w // 2], px[int(h * 0.9):, : w // 2]])
        r, g, b = corners[..., 0], corners[..., 1], corners[..., 2]
        return int(((r > 100) & (b - r >= 30) & (b - r <= 90) & (g - r >= 15) & (g - r <= 45)).sum())

    on = grab(page, CT)
    assert text_pixels(on) > 30
    focus_ct(page)
    press(page, "t")
    off = grab(page, CT)
    save_shot(page.locator(CT).screenshot(), "tags-off")
    assert text_pixels(off) < 5
    press(page, "t")
    assert text_pixels(grab(page, CT)) > 30
    page.close()


@pytest.mark.parametrize(("param", "index"), [
    ("SeriesInstanceUID", 0),  # the upload page's link, for each series
    ("SeriesInstanceUID", 1),
    ("uronodeSeriesInstanceUID", 0),
    (None, 1),  # no series named: the first of the study (series number 2) with results
])
def test_two_ct_series_in_one_study_each_opens_with_its_own_results(
    browser: BrowserContext, two_series: TwoSeries, param: str | None, index: int
) -> None:
    reading, other = two_series.readings[index], two_series.readings[1 - index]
    page = open_reading(browser, two_series.url(param, reading))
    if param == "SeriesInstanceUID":  # OHIF would load that series alone: it is handed to OHIF as the initial one
        assert f"initialSeriesInstanceUID={reading.ct}" in page.url and "&SeriesInstanceUID=" not in page.url
    shown = page.evaluate("""() => Object.fromEntries(['uronode-ct', 'uronode-overlay'].map((id) => [id,
        (window.services.viewportGridService.getDisplaySetsUIDsForViewport(id) || [])
          .map((uid) => window.services.displaySetService.getDisplaySetByUID(uid).SeriesInstanceUID)]))""")
    assert sorted(shown["uronode-ct"]) == sorted([reading.ct, reading.seg]), "not this series' CT and SEG"
    assert shown["uronode-overlay"] == [reading.overlay], "not this series' overlay"
    largest = max(reading.stones, key=lambda s: s.diameter_mm)
    assert page.evaluate("window.uronodeOpened") == largest.sop_instance_uid
    ct, overlay = shown_image(page, "uronode-ct"), shown_image(page, "uronode-overlay")
    assert f"/series/{reading.ct}/instances/{largest.sop_instance_uid}/" in ct
    assert f"/series/{reading.overlay}/instances/{reading.overlay_of[largest.sop_instance_uid]}/" in overlay
    listed = page.locator('[data-cy="trackedMeasurements-panel"]').inner_text().replace("\n", " ")
    assert all(stone.label in listed for stone in reading.stones), "this series' stones are not listed"
    assert not any(stone.label in listed for stone in other.stones), "the other series' stones are listed"
    save_shot(page.screenshot(), f"two-series-{param or 'none'}-{index}")
    page.close()


@pytest.fixture(scope="module")
def no_stone_study(study: Study, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A CT of soft tissue alone (nothing dense: the model finds no stone by construction), through the node:
    its results are the SR that says "Calculus: Not detected" and one summary overlay image that says so."""
    root = tmp_path_factory.mktemp("no-stone")
    uid, series, _ = factory_series(root / "ct", 12, size=128, spacing=0.75, series_description="Soft tissue only")
    assert storescu(study.node.dicom_port, root / "ct").returncode == 0
    wait_until(lambda: [r["state"] for r in query(
        study.node.data_dir, "SELECT state FROM jobs WHERE series_instance_uid = ?", series)] == ["delivered"],
        300, "the no-stone report")
    port = study.node.http_port
    assert len(_series_of(port, uid, "SR")) == 1 and _series_of(port, uid, "SEG") == []
    assert len(_series_of(port, uid, "OT")) == 1  # the summary image (probe 42)
    return uid


def test_a_report_without_stones_is_written_over_its_ct_and_the_viewer_keeps_working(
    browser: BrowserContext, study: Study, no_stone_study: str
) -> None:
    """Probe 26: the report's "Not detected" was a measurement group without an image region; OHIF 3.13 reads
    every group's region, and opening the report blanked the whole viewer (TypeError reading
    'ReferencedSOPSequence'); a report without any group blanks it too. Nothing on screen said that the AI
    had run and found nothing. The verdict is now written over the CT it is about, the report not offered to
    open; it goes with the study when the reader leaves it (review 27: a message stayed over the next
    patient's study) and comes back when the study is opened again."""
    page = browser.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.on("console", lambda message: problems.append(message.text)
            if message.type == "error" or "Error Boundary" in message.text else None)
    page.goto(study.url(no_stone_study))
    page.wait_for_selector("[data-viewportid] canvas", timeout=120_000)
    verdict = page.locator("[data-viewportid] .uronode-verdict")
    verdict.wait_for(timeout=30_000)
    page.wait_for_timeout(1000)
    save_shot(page.screenshot(), "no-stone-report")
    text = verdict.inner_text()
    assert text.startswith("AI urinary stones report: series 2 (Soft tissue only) v")
    assert "No urinary stone detected by the AI model" in text and "this does not exclude urinary stones" in text
    assert page.get_by_text("AI urinary stones report").count() == 1  # the note's; no SR series to open
    assert grey_mask(rgb(page.locator("[data-viewportid]").first.screenshot())).sum() > 2_000, "no CT shown"
    page.wait_for_timeout(5_000)
    assert verdict.count() == 1, "the verdict went away by itself"
    page.goto(study.url())  # another study (with stones) in the same tab: nothing of the first one's verdict
    page.wait_for_function("window.uronodeOpened", timeout=120_000)
    assert page.locator(".uronode-verdict").count() == 0
    assert page.get_by_text("No urinary stone detected").count() == 0
    page.goto(study.url(no_stone_study))  # and back: the verdict again
    page.locator("[data-viewportid] .uronode-verdict").wait_for(timeout=60_000)
    assert not problems, problems
    page.close()


def test_the_overlay_is_dimmed_beside_a_ct_image_without_a_stone(browser: BrowserContext, study: Study) -> None:
    """Probe 26: the overlay series holds only the images with stones; scrolled off a stone, the CT showed an image
    without one while the overlay beside it stayed on the nearest stone's image ("1 on this slice")."""
    page = open_reading(browser, study.url())
    matches = "(id) => window.cornerstone.getRenderingEngines()[0].getViewport(id).element.dataset.uronodeMatches"
    assert page.evaluate(matches, "uronode-overlay") == "yes"  # opened on the largest stone: its own overlay
    note = page.get_by_text("No stone on this CT image")
    assert not note.is_visible()
    # the CT on an image without a stone, as scrolling there leaves it
    index = page.evaluate("""(made) => {
        const vp = window.cornerstone.getRenderingEngines()[0].getViewport('uronode-ct');
        const index = vp.getImageIds().findIndex((id) => !made.some((sop) => id.includes('/instances/' + sop + '/')));
        vp.setImageIdIndex(index);
        return index; }""", list(study.overlay_of))
    assert index >= 0
    page.wait_for_timeout(1500)
    assert page.evaluate(matches, "uronode-overlay") == "no"
    assert note.is_visible()
    save_shot(page.screenshot(), "overlay-dimmed")
    largest = max(study.stones, key=lambda s: s.diameter_mm)  # back on a stone: shown as it is
    page.evaluate("""(sop) => {
        const vp = window.cornerstone.getRenderingEngines()[0].getViewport('uronode-ct');
        vp.setImageIdIndex(vp.getImageIds().findIndex((id) => id.includes('/instances/' + sop + '/'))); }""",
                  largest.sop_instance_uid)
    page.wait_for_timeout(1500)
    assert page.evaluate(matches, "uronode-overlay") == "yes" and not note.is_visible()
    page.close()


def test_a_report_with_stones_outranks_a_no_stone_report_of_the_same_ct(browser: BrowserContext, study: Study) -> None:
    """Review 28: a CT with a report that has stones and one without (another model version's, which is never
    superseded) shows its stones and no "no stone" note over it. Last in this module: the study keeps the extra
    report."""
    (ct,) = query(study.node.data_dir, "SELECT series_instance_uid FROM series WHERE study_instance_uid = ?"
                  " AND modality = 'CT'", study.uid)
    paths = [Path(r["path"]) for r in query(study.node.data_dir, "SELECT path FROM instances"
                                            " WHERE series_instance_uid = ?", ct["series_instance_uid"])]
    volume = load_volume(paths)
    findings = measure_stones(volume, np.zeros(volume.shape, np.uint8), model_name="uronode-stone-cascade",
                              model_version="3.7.1")
    report = write_results(volume, findings).sr
    assert report is not None and "SeriesDescription" in report
    buffer = io.BytesIO()
    report.save_as(buffer, enforce_file_format=True)
    stored = httpx.post(f"http://127.0.0.1:{study.node.http_port}/dicom-web/studies",
                        content=b"--b\r\nContent-Type: application/dicom\r\n\r\n" + buffer.getvalue() + b"\r\n--b--\r\n",
                        headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=b'}, timeout=60)
    assert stored.status_code == 200, stored.text
    assert len(_series_of(study.node.http_port, study.uid, "SR")) == 2
    page = open_reading(browser, study.url())
    page.wait_for_timeout(2000)  # the no-stone report's display set is read as it is added
    assert page.locator(".uronode-verdict").count() == 0, "a 'no stone' note over a CT with stones"
    assert page.get_by_text("No urinary stone detected").count() == 0
    listed = page.locator('[data-cy="trackedMeasurements-panel"]').inner_text().replace("\n", " ")
    assert all(stone.label in listed for stone in study.stones)
    page.close()
