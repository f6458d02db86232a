"""HTTP authentication, on by default: basic or a bearer token everywhere but health."""

from __future__ import annotations

import base64
from collections.abc import Callable

import httpx
from playwright.sync_api import BrowserContext

from tests.peers.processes import Node


def test_basic_and_token_authentication(start_node: Callable[..., Node], browser: BrowserContext) -> None:
    node = start_node(URONODE_DICOMWEB__AUTH="basic", URONODE_DICOMWEB__TOKENS='["worker-token-123"]')
    base = f"http://127.0.0.1:{node.http_port}"
    password_file = node.data_dir / "http-password"
    assert password_file.stat().st_mode & 0o777 == 0o600
    password = password_file.read_text().strip()
    assert len(password) >= 20
    assert httpx.get(f"{base}/healthz").status_code == 200  # health stays open for orchestrators
    for path in ("/dicom-web/studies", "/api/jobs", "/api/studies?accession=A1", "/upload", "/", "/viewer", "/metrics",
                 "/docs"):
        refused = httpx.get(f"{base}{path}")
        assert refused.status_code == 401, path
        assert refused.headers["www-authenticate"].startswith("Basic")
    assert httpx.get(f"{base}/dicom-web/studies", auth=("uronode", "wrong")).status_code == 401
    assert httpx.get(f"{base}/dicom-web/studies", auth=("uronode", password)).status_code == 200
    assert httpx.get(f"{base}/api/studies?accession=A1", auth=("uronode", password)).json() == {"studies": [],
                                                                                              "more": False}
    assert httpx.get(f"{base}/api/jobs", headers={"Authorization": "Bearer worker-token-123"}).status_code == 200
    assert httpx.get(f"{base}/api/jobs", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert "Synthetic" not in password  # a random password, not a default one
    # a doubled or trailing slash is mended before authentication sees the path: no way around it
    for path in ("//dicom-web/studies", "/dicom-web//studies", "/dicom-web/studies/", "/api//jobs/"):
        assert httpx.get(f"{base}{path}").status_code == 401, path
        assert httpx.get(f"{base}{path}", auth=("uronode", password)).status_code == 200, path

    # The viewer needs nothing in its configuration: the browser sends the credentials with every request.
    page = browser.new_page()
    page.set_extra_http_headers({"Authorization": "Basic " + base64.b64encode(f"uronode:{password}".encode()).decode()})
    page.goto(f"{base}/")
    assert page.evaluate("fetch('/dicom-web/studies').then(r => r.status)") == 200
    assert page.evaluate("fetch('/app-config.js').then(r => r.status)") == 200
    page.close()
