"""``dicomweb.cors_origins``: a viewer's page on another origin reads the node's DICOMweb from a real browser
(headless Chromium: its preflight, its Authorization header, its reading of the answer); a page of any
other origin cannot, and neither can one when the setting is empty."""

from __future__ import annotations

import base64
import threading
from collections.abc import Callable, Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pydantic
import pytest
from playwright.sync_api import BrowserContext

from tests.peers.processes import Node
from uronode.settings import DicomwebSettings

PASSWORD = "cors-test-password"
FETCH = """async ([url, auth]) => {
  try {
    const r = await fetch(url, {headers: {Authorization: auth, Accept: 'application/dicom+json'}});
    return {status: r.status, body: await r.text()};
  } catch (e) {
    return {error: String(e)};
  }
}"""


@pytest.fixture
def page_origins(tmp_path: Path) -> Iterator[Callable[[], str]]:
    """Static web servers on 127.0.0.1 (each its own origin), serving an empty page."""
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "index.html").write_text("<!doctype html><title>another viewer</title>")
    servers: list[ThreadingHTTPServer] = []

    def start() -> str:
        handler = partial(SimpleHTTPRequestHandler, directory=str(tmp_path / "site"))
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _basic(password: str) -> str:
    return "Basic " + base64.b64encode(f"uronode:{password}".encode()).decode()


def test_a_named_origin_reads_the_node_and_another_cannot(
    browser: BrowserContext, start_node: Callable[..., Node], page_origins: Callable[[], str]
) -> None:
    viewer, stranger = page_origins(), page_origins()
    node = start_node(URONODE_DICOMWEB__AUTH="basic", URONODE_DICOMWEB__PASSWORD=PASSWORD,
                      URONODE_DICOMWEB__CORS_ORIGINS=f'["{viewer}"]')
    studies = f"http://127.0.0.1:{node.http_port}/dicom-web/studies"
    page = browser.new_page()
    try:
        page.goto(viewer + "/index.html")
        answer = page.evaluate(FETCH, [studies, _basic(PASSWORD)])
        assert answer.get("status") in (200, 204), answer  # a preflight (Authorization), then the read
        assert answer["body"] in ("", "[]")
        refused = page.evaluate(FETCH, [studies, _basic("wrong")])
        assert refused.get("status") == 401, refused  # the page can read why: the refusal carries the headers
        page.goto(stranger + "/index.html")
        blocked = page.evaluate(FETCH, [studies, _basic(PASSWORD)])
        assert "error" in blocked and "Failed to fetch" in blocked["error"], blocked
    finally:
        page.close()


def test_without_the_setting_no_other_origin_reads_the_node(
    browser: BrowserContext, start_node: Callable[..., Node], page_origins: Callable[[], str]
) -> None:
    viewer = page_origins()
    node = start_node()  # auth none: open to anyone who reaches it, but not to other origins' scripts
    page = browser.new_page()
    try:
        page.goto(viewer + "/index.html")
        blocked = page.evaluate(FETCH, [f"http://127.0.0.1:{node.http_port}/dicom-web/studies", ""])
        assert "error" in blocked, blocked
    finally:
        page.close()


@pytest.mark.parametrize("origin", ["viewer.hospital.example", "https://viewer.hospital.example/",
                                    "https://viewer.hospital.example/ohif", "ftp://viewer.hospital.example",
                                    "https://", " https://viewer.hospital.example", "https://u:p@viewer.example"])
def test_what_is_no_web_origin_is_refused_with_an_example(origin: str) -> None:
    with pytest.raises(pydantic.ValidationError, match="is not a web origin: .* such as https://"):
        DicomwebSettings(cors_origins=[origin])


def test_any_origin_only_without_authentication_and_origins_are_compared_in_lower_case() -> None:
    with pytest.raises(pydantic.ValidationError, match="'\\*' .* refused while dicomweb.auth is 'basic'"):
        DicomwebSettings(cors_origins=["*"])
    assert DicomwebSettings(auth="none", cors_origins=["*"]).cors_origins == ["*"]
    assert DicomwebSettings(cors_origins=["HTTPS://Viewer.Hospital.Example:8443"]).cors_origins == [
        "https://viewer.hospital.example:8443"]
