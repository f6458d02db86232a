"""The viewer behind ``dicomweb.auth = basic``, in a real browser: nothing it loads is refused. A browser fetches
a web-app manifest without credentials unless its link asks for them, so every opening of OHIF was refused
twice (HTTP 401) and written to the audit log as a failed authentication (probe 17). The credentials are given
in the address, as at the browser's prompt: the browser answers each challenge with them (the audit log keeps
those challenges), and a request that does not send them (the manifest, before) ends refused."""

from __future__ import annotations

from collections.abc import Callable

from playwright.sync_api import BrowserContext, Response

from tests.peers.processes import Node, wait_until

PASSWORD = "viewer-auth-password"


def test_the_viewer_opens_behind_basic_authentication_without_a_refused_request(
    browser: BrowserContext, start_node: Callable[..., Node]
) -> None:
    node = start_node(URONODE_DICOMWEB__AUTH="basic", URONODE_DICOMWEB__PASSWORD=PASSWORD)
    page = browser.new_page()
    manifests: list[int] = []
    refused: list[str] = []

    def answered(response: Response) -> None:
        if response.url.endswith("/manifest.json"):
            manifests.append(response.status)
        if response.status == 401:
            refused.append(response.url)

    page.on("response", answered)
    try:
        # the credentials as a user gives them at the browser's prompt: for the page and what it loads itself
        page.goto(f"http://uronode:{PASSWORD}@127.0.0.1:{node.http_port}/")
        page.wait_for_selector("[data-cy='study-list-results'], [data-cy='study-browser'], table", timeout=120_000)
        wait_until(lambda: bool(manifests), 60, "the browser to fetch the viewer's manifest")
        page.wait_for_timeout(1000)
        assert refused == [], refused  # the manifest was refused twice on every opening before
        assert set(manifests) == {200}
    finally:
        page.close()
