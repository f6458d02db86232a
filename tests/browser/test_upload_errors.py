"""The upload page when things go wrong: refused files, hostile header values, lost polls, Reset, reloads.

No worker runs here: a job stays queued, which is all these need (the findings run in test_upload_page.py).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from playwright.sync_api import BrowserContext, Page, Route

from tests.factory import write_series
from tests.peers.processes import Node

HOSTILE = "<img src=x onerror=window.pwned=1>"


def _open(browser: BrowserContext, node: Node) -> Page:
    page = browser.new_page()
    page.goto(f"http://127.0.0.1:{node.http_port}/upload")
    return page


def _predict(page: Page, files: list[Path]) -> None:
    page.set_input_files("#files", [str(f) for f in files])
    page.click("#predict")


def _until_queued(page: Page) -> None:
    """Until the status line says the job is queued (the node here runs no worker)."""
    page.wait_for_function("document.querySelector('#status').textContent.includes('queued')", timeout=30_000)


def test_header_values_show_as_text_and_a_refusal_is_the_same_twice(
    browser: BrowserContext, start_node: Callable[..., Node], tmp_path: Path
) -> None:
    node = start_node()
    _, _, files = write_series(tmp_path / "mr", 2, size=32, modality=HOSTILE)
    page = _open(browser, node)
    for _ in range(2):  # the second upload finds the series complete: the same reason, not "(null)"
        _predict(page, files)
        alert = page.locator("#result [role=alert]")
        alert.wait_for(timeout=30_000)
        assert alert.inner_text() == f"Not for the model: modality {HOSTILE}, not CT."
        assert page.locator("#status").inner_text() == "Stored; the series is not for the model (see below)."
        assert page.locator("#result img").count() == 0
        assert page.evaluate("window.pwned") is None
        assert not page.locator("#predict").is_disabled()
    assert page.locator(".series-title").inner_text().endswith("(2 images)")
    page.close()


def test_refused_files_and_errors_in_sentences(
    browser: BrowserContext, start_node: Callable[..., Node], tmp_path: Path
) -> None:
    node = start_node()
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    _, _, files = write_series(tmp_path / "ct", 3, size=32)
    page = _open(browser, node)
    _predict(page, [notes])
    page.wait_for_selector("#upload-report [role=alert]", timeout=30_000)
    assert page.locator("#upload-report [role=alert]").inner_text() == "Upload refused: no DICOM file among the upload."
    assert page.locator("details.rejected summary").inner_text() == "1 of 1 files were not used"
    assert page.locator("details.rejected li").text_content() == "notes.txt: not a DICOM file (no DICM prefix)"
    assert "{" not in page.locator("body").inner_text()
    page.click("#reset")
    _predict(page, [*files, notes])
    page.wait_for_selector(".series-title", timeout=30_000)
    assert page.locator("details.rejected summary").inner_text() == "1 of 4 files were not used"
    title = page.locator(".series-title").inner_text()
    assert title.startswith("CT series ") and title.endswith("(3 images)")
    _until_queued(page)
    assert re.fullmatch(r"#jobs=\d+", page.evaluate("location.hash"))
    page.click("#reset")  # during the job: nothing of it comes back
    page.wait_for_timeout(2500)
    assert page.locator("#result").inner_html() == "" and page.locator("#upload-report").inner_html() == ""
    assert page.locator("#predict").is_disabled() and page.evaluate("location.hash") == ""
    page.close()


def test_polls_retry_a_bad_gateway_and_stop_on_a_missing_job(
    browser: BrowserContext, start_node: Callable[..., Node], tmp_path: Path
) -> None:
    node = start_node()
    _, _, files = write_series(tmp_path / "ct", 3, size=32)
    page = _open(browser, node)
    answers: list[int] = []

    def once_bad_gateway(route: Route) -> None:
        if not answers:
            answers.append(502)
            route.fulfill(status=502, content_type="text/html", body="<html><h1>502 Bad Gateway</h1></html>")
        else:
            answers.append(200)
            route.continue_()

    page.route("**/api/jobs/*", once_bad_gateway)
    _predict(page, files)
    _until_queued(page)
    assert answers[0] == 502 and 200 in answers
    assert page.locator("#result [role=alert]").count() == 0
    page.unroute("**/api/jobs/*")
    page.route("**/api/jobs/*", lambda route: route.fulfill(
        status=404, content_type="application/json", body=json.dumps({"detail": "no job 7"})))
    page.click("#reset")
    _predict(page, files)
    alert = page.locator("#result [role=alert]")
    alert.wait_for(timeout=30_000)
    assert alert.inner_text().endswith(": no job 7.")
    assert "undefined" not in page.locator("body").inner_text()
    assert not page.locator("#predict").is_disabled()
    page.close()


def test_reload_follows_the_jobs_in_the_hash(
    browser: BrowserContext, start_node: Callable[..., Node], tmp_path: Path
) -> None:
    node = start_node()
    _, series, files = write_series(tmp_path / "ct", 3, size=32)
    page = _open(browser, node)
    _predict(page, files)
    _until_queued(page)
    hash_ = page.evaluate("location.hash")
    who = page.locator(".identity").inner_text()
    assert who.startswith("Patient Synthetic, Patient (ID SYN0001)") and "study of 2026-01-01 · accession ACC0001" in who
    page.reload()
    _until_queued(page)
    assert page.evaluate("location.hash") == hash_
    assert page.locator(".identity").inner_text() == who  # whose images, after a reload too (probe 48)
    assert page.locator(".series").get_attribute("data-series-instance-uid") == series
    assert "(3 images)" in page.locator(".series-title").inner_text()
    page.close()


def test_over_the_limit_is_refused_before_sending_and_the_page_fits_a_phone(
    browser: BrowserContext, start_node: Callable[..., Node], tmp_path: Path
) -> None:
    node = start_node()
    _, _, files = write_series(tmp_path / "ct", 3, size=32)
    page = browser.new_page()
    page.set_viewport_size({"width": 375, "height": 700})

    def small_limit(route: Route) -> None:  # the node's 2 GB, made 1 GB so that a small file is over it
        response = route.fetch()
        body = re.sub(r'name="max-upload-bytes" content="\d+"', 'name="max-upload-bytes" content="1000"', response.text())
        route.fulfill(response=response, body=body)

    page.route("**/upload", small_limit)
    posts: list[str] = []
    page.on("request", lambda r: posts.append(r.url) if r.method == "POST" else None)
    page.goto(f"http://127.0.0.1:{node.http_port}/upload")
    _predict(page, files)
    alert = page.locator("#upload-report [role=alert]")
    alert.wait_for(timeout=10_000)
    assert re.fullmatch(r"[\d.]+ GB chosen, the limit is [\d.]+ GB\.", alert.inner_text())
    assert posts == []
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    assert page.locator("#progress").get_attribute("aria-labelledby") == "status"
    assert page.locator("#status").get_attribute("role") == "status"
    page.close()


def test_a_picture_is_refused_with_what_to_send_and_a_new_choice_replaces_the_other(
    browser: BrowserContext, start_node: Callable[..., Node], tmp_path: Path
) -> None:
    """The paper's users export pictures (probe 17): the refusal says what to send instead. "Or a folder": a
    folder chosen after files replaces them, and files after a folder replace it."""
    node = start_node()
    picture = tmp_path / "slice.png"
    cv2.imwrite(str(picture), np.full((64, 64), 90, np.uint8))
    page = _open(browser, node)
    _predict(page, [picture])
    page.wait_for_selector("#upload-report [role=alert]", timeout=30_000)
    assert page.locator("#upload-report [role=alert]").inner_text() == (
        "Upload refused: no DICOM file among the upload, only pictures: the node reads DICOM images; export them as"
        " DICOM from the PACS or the viewer.")
    assert page.locator("details.rejected li").text_content() == (
        "slice.png: a picture (PNG), not a DICOM file: the node reads DICOM images; export the image as DICOM from"
        " the PACS or the viewer")
    page.click("#reset")
    _, _, files = write_series(tmp_path / "series", 3, size=32)
    page.set_input_files("#files", [str(picture)])
    assert page.locator("#chosen").inner_text() == "1 file(s) chosen."
    page.set_input_files("#folder", str(tmp_path / "series"))
    assert page.locator("#chosen").inner_text() == f"{len(files)} file(s) chosen."
    assert page.evaluate("document.querySelector('#files').files.length") == 0
    page.set_input_files("#files", [str(picture)])
    assert page.locator("#chosen").inner_text() == "1 file(s) chosen."
    assert page.evaluate("document.querySelector('#folder').files.length") == 0
    page.close()


def test_a_job_whose_series_moved_to_another_says_so(
    browser: BrowserContext, start_node: Callable[..., Node], tmp_path: Path
) -> None:
    """Review 35: the uploaded series' images are sent again in another series (a split or correction at the PACS)
    while its job waits; the job is dropped with the reason, which the page shows, not a failure on files gone."""
    from dicomweb_client.api import DICOMwebClient
    from pydicom import dcmread

    node = start_node()
    _, _, files = write_series(tmp_path / "ct", 3, size=32)
    page = _open(browser, node)
    _predict(page, files)
    _until_queued(page)
    moved = []
    for path in files:
        ds = dcmread(path)
        ds.SeriesInstanceUID = ds.SeriesInstanceUID + ".7"
        moved.append(ds)
    DICOMwebClient(url=f"http://127.0.0.1:{node.http_port}/dicom-web").store_instances(moved)
    alert = page.locator("#result [role=alert]")
    alert.wait_for(timeout=60_000)  # the emptied series completes after the quiet period
    assert re.fullmatch(r"The analysis could not be made, so there is no result \(this does not mean no stone\)\. "
                        r"Job \d+ failed: the series no longer holds CT slices \(the series has no instances\): its "
                        r"images were sent again in another series, which is analysed as that series", alert.inner_text()
                        ), alert.inner_text()
    page.close()
