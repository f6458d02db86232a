"""A page of another site cannot make a logged-in browser upload to the node (probe 27).

The radiologist has opened the node's upload page, so the browser holds the HTTP password and sends it with
every request to the node. A page on another origin (here the same address, another port: another origin, the
same site) builds DICOM files in script, puts them in a form's file field and submits the form to
``/api/predict``: a form may POST ``multipart/form-data`` anywhere without asking. Before, the node stored the
study, ran the model and sent the results to the PACS in the user's name. The browser says where the request
comes from (``Sec-Fetch-Site``), and the node refuses it; its own upload page still works
(``test_upload_page.py``).
"""

from __future__ import annotations

import base64
import http.server
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import BrowserContext

from tests.conftest import query
from tests.factory import write_series
from tests.peers.processes import Node, free_port

PASSWORD = "cross-site-password"


@pytest.fixture
def other_site(tmp_path: Path) -> Iterator[Callable[[str], str]]:
    """An HTTP server of another origin: ``put(html)`` serves the page and gives its URL."""
    root = tmp_path / "site"
    root.mkdir()
    port = free_port()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, directory=str(root), **kwargs)  # type: ignore[arg-type]

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def put(html: str) -> str:
        (root / "page.html").write_text(html)
        return f"http://127.0.0.1:{port}/page.html"

    try:
        yield put
    finally:
        server.shutdown()
        server.server_close()


def forging_page(action: str, paths: list[Path]) -> str:
    """A page that builds these DICOM files in script, puts them in a form's file field and submits the form to
    ``action``, as a page of any site may."""
    files = ",".join(f"'{base64.b64encode(p.read_bytes()).decode()}'" for p in paths)
    return f"""<!doctype html><html><body>
<form id="f" method="post" enctype="multipart/form-data" action="{action}">
<input id="files" type="file" name="files" multiple></form>
<script>
  const transfer = new DataTransfer();
  [{files}].forEach((b64, i) => transfer.items.add(new File([Uint8Array.from(atob(b64), (c) => c.charCodeAt(0))],
    'slice' + i + '.dcm', {{ type: 'application/dicom' }})));
  document.getElementById('files').files = transfer.files;
  document.getElementById('f').submit();
</script></body></html>"""


def test_a_form_of_another_site_cannot_upload_with_the_users_password(
    browser: BrowserContext, start_node: Callable[..., Node], other_site: Callable[[str], str], tmp_path: Path
) -> None:
    node = start_node(URONODE_DICOMWEB__AUTH="basic", URONODE_DICOMWEB__PASSWORD=PASSWORD)
    _, series, paths = write_series(tmp_path / "ct", 4, size=64, series_description="Made up by another site")
    page_url = other_site(forging_page(f"http://127.0.0.1:{node.http_port}/api/predict", paths))
    page = browser.new_page()
    try:
        logged_in = page.goto(f"http://uronode:{PASSWORD}@127.0.0.1:{node.http_port}/upload")
        assert logged_in is not None and logged_in.status == 200
        with page.expect_response(lambda r: r.url.endswith("/api/predict"), timeout=60_000) as answered:
            page.goto(page_url)
        response = answered.value
        assert response.request.header_value("authorization"), "the browser did not send the cached password"
        assert response.status == 403, response.text()
        assert "from a page of another site" in response.json()["detail"]
    finally:
        page.close()
    assert query(node.data_dir, "SELECT 1 FROM instances WHERE series_instance_uid = ?", series) == []


def test_on_plain_http_by_a_host_name_the_origin_and_host_decide(
    browser: BrowserContext, start_node: Callable[..., Node], other_site: Callable[[str], str], tmp_path: Path
) -> None:
    """Review 29: browsers send Sec-Fetch-Site only to HTTPS and localhost; a node reached over plain HTTP by a
    name on the hospital network is judged by the page's Origin against the Host. Its own upload page still
    uploads, and another site's form is still refused (the names are mapped to the loopback by the browser's
    flags, tests/browser/conftest.py)."""
    node = start_node(URONODE_DICOMWEB__AUTH="basic", URONODE_DICOMWEB__PASSWORD=PASSWORD)
    _, series, paths = write_series(tmp_path / "ct", 3, size=64, series_description="Sent by the upload page")
    _, forged, forged_paths = write_series(tmp_path / "forged", 2, size=64)
    form = other_site(forging_page(f"http://node.test:{node.http_port}/api/predict", forged_paths))
    form = form.replace("127.0.0.1", "evil.test")
    page = browser.new_page()
    try:
        page.goto(f"http://uronode:{PASSWORD}@node.test:{node.http_port}/upload")
        page.set_input_files("#files", [str(path) for path in paths])
        with page.expect_response(lambda r: r.url.endswith("/api/predict"), timeout=120_000) as answered:
            page.click("#predict")
        own = answered.value
        assert own.request.header_value("sec-fetch-site") is None  # plain HTTP, not localhost
        assert own.request.header_value("origin") == f"http://node.test:{node.http_port}"
        assert own.status == 200, own.text()
        with page.expect_response(lambda r: r.url.endswith("/api/predict"), timeout=60_000) as answered:
            page.goto(form)
        other = answered.value
        assert (other.request.header_value("origin") or "").startswith("http://evil.test:")
        assert other.request.header_value("authorization"), "the browser did not send the cached password"
        assert other.status == 403, other.text()
    finally:
        page.close()
    assert query(node.data_dir, "SELECT 1 FROM instances WHERE series_instance_uid = ?", series)
    assert query(node.data_dir, "SELECT 1 FROM instances WHERE series_instance_uid = ?", forged) == []
