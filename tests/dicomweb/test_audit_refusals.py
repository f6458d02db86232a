"""The audit log of a node with authentication: every refusal is in it, and who asked is who authenticated.

Found by probing (probe6, section 6): requests that authentication refused (401) were in no log at all, so
password guessing left no trace, and any client could write any user name into the audit trail with
``X-Forwarded-User``.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable

import httpx
import pytest

from dicomweb.auth import RefusalWarnings
from tests.peers.processes import Node, wait_until

WARNING = "HTTP authentication failed from 127.0.0.1"


def _events(node: Node) -> list[dict[str, object]]:
    lines = (node.data_dir / "audit.log").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["event"] == "http"]


def test_every_refused_request_is_audited_and_warned_about_once_a_minute(start_node: Callable[..., Node]) -> None:
    node = start_node(URONODE_DICOMWEB__AUTH="basic", URONODE_DICOMWEB__TOKENS='["script-token-1"]')
    proc = node.proc
    assert proc is not None
    wrong = "Basic " + base64.b64encode(b"uronode:guessed-password-7").decode()
    with httpx.Client(base_url=f"http://127.0.0.1:{node.http_port}") as http:
        assert http.get("/api/jobs").status_code == 401  # no credentials
        assert http.get("/dicom-web/studies", headers={"Authorization": wrong}).status_code == 401
        assert http.get("/metrics").status_code == 401  # a GET outside the audited paths: its refusal is audited
        assert http.get("/api//jobs/").status_code == 401  # audited as the path authentication judged
        assert http.post("/api/predict", headers={"Authorization": "Bearer not-a-token"}).status_code == 401
    refused = _events(node)
    assert [(e["method"], e["path"], e["status"], e["auth"]) for e in refused] == [
        ("GET", "/api/jobs", 401, "failed"),
        ("GET", "/dicom-web/studies", 401, "failed"),
        ("GET", "/metrics", 401, "failed"),
        ("GET", "/api/jobs", 401, "failed"),
        ("POST", "/api/predict", 401, "failed"),
    ]
    assert all(e["client"] == "127.0.0.1" and e["user"] is None for e in refused)
    assert [e["reason"] for e in refused] == [
        "authentication failed: no credentials",
        "authentication failed: wrong user or password",
        "authentication failed: no credentials",
        "authentication failed: no credentials",
        "authentication failed: unknown bearer token",
    ]
    audit = (node.data_dir / "audit.log").read_text()
    assert "guessed-password-7" not in audit and wrong not in audit and "not-a-token" not in audit
    # one warning for the five: a guesser cannot flood the log, and the audit log has each refusal
    wait_until(lambda: WARNING in proc.log_text(), 10, "the warning about the refusals")
    assert proc.log_text().count(WARNING) == 1
    assert "guessed-password-7" not in proc.log_text()


def test_the_audit_names_who_authenticated_not_who_a_client_claims_to_be(start_node: Callable[..., Node]) -> None:
    node = start_node(URONODE_DICOMWEB__AUTH="basic", URONODE_DICOMWEB__TOKENS='["script-token-1"]')
    password = (node.data_dir / "http-password").read_text().strip()
    claim = {"X-Forwarded-User": "dr.house@radiology"}
    with httpx.Client(base_url=f"http://127.0.0.1:{node.http_port}") as http:
        assert http.get("/api/jobs", auth=("uronode", password), headers=claim).status_code == 200
        bearer = {**claim, "Authorization": "Bearer script-token-1"}
        assert http.get("/dicom-web/studies", headers=bearer).status_code == 200
        assert http.get("/api/jobs", headers=claim).status_code == 401
    basic, token, refused = _events(node)
    assert (basic["user"], basic["auth"], basic["claimed_user"]) == ("uronode", "basic", "dr.house@radiology")
    assert (token["user"], token["auth"], token["claimed_user"]) == ("token #1", "token", "dr.house@radiology")
    assert (refused["user"], refused["auth"], refused["claimed_user"]) == (None, "failed", "dr.house@radiology")
    assert all(e["client"] == "127.0.0.1" and "proxy" not in e for e in (basic, token, refused))
    assert "script-token-1" not in (node.data_dir / "audit.log").read_text()


def test_a_trusted_proxy_names_the_user(start_node: Callable[..., Node]) -> None:
    node = start_node(URONODE_DICOMWEB__AUTH="basic", URONODE_DICOMWEB__TRUSTED_PROXIES='["127.0.0.1"]')
    password = (node.data_dir / "http-password").read_text().strip()
    with httpx.Client(base_url=f"http://127.0.0.1:{node.http_port}") as http:
        named = {"X-Forwarded-User": "dr.house@radiology"}
        assert http.get("/dicom-web/studies", auth=("uronode", password), headers=named).status_code == 200
        assert http.get("/dicom-web/studies", auth=("uronode", password)).status_code == 200
    named_event, plain = _events(node)
    assert (named_event["user"], named_event["auth"]) == ("dr.house@radiology", "basic")
    assert "claimed_user" not in named_event
    assert plain["user"] == "uronode"  # the proxy named no one: who authenticated


def test_the_client_address_is_forwarded_only_by_a_trusted_proxy(start_node: Callable[..., Node]) -> None:
    """Needs uvicorn's own proxy-header handling off (``uronode.app.node.http_config``): it believes
    ``X-Forwarded-For`` from loopback by default and would hide the socket's address from the audit."""
    forwarded = {"X-Forwarded-For": "198.51.100.9, 203.0.113.7", "X-Forwarded-User": "dr.house@radiology"}
    untrusted = start_node(URONODE_DICOMWEB__AUTH="none")
    trusted = start_node(URONODE_DICOMWEB__AUTH="none", URONODE_DICOMWEB__TRUSTED_PROXIES='["127.0.0.1"]')
    for node in (untrusted, trusted):
        assert httpx.get(f"http://127.0.0.1:{node.http_port}/dicom-web/studies", headers=forwarded).status_code == 200
    (spoofed,) = _events(untrusted)
    assert (spoofed["client"], spoofed["user"], spoofed["claimed_user"]) == ("127.0.0.1", None, "dr.house@radiology")
    (proxied,) = _events(trusted)
    assert (proxied["client"], proxied["proxy"], proxied["user"]) == ("203.0.113.7", "127.0.0.1", "dr.house@radiology")


def test_refusal_warnings_are_one_a_period_per_address_and_bounded_over_addresses(
        caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    warnings = RefusalWarnings(interval_s=60, max_clients=2, clock=lambda: now[0])
    with caplog.at_level("WARNING", logger="dicomweb.auth"):
        for _ in range(3):
            warnings.refused("10.0.0.1", "GET", "/api/jobs", "wrong user or password")
        warnings.refused("10.0.0.2", "GET", "/api/jobs", "no credentials")
        for n in range(3, 50):  # a guesser with many addresses: they share one warning
            warnings.refused(f"10.0.0.{n}", "GET", "/api/jobs", "no credentials")
        now[0] = 61.0
        warnings.refused("10.0.0.1", "GET", "/api/jobs", "wrong user or password")
    said = caplog.messages
    assert len(said) == 4
    assert said[0].startswith("HTTP authentication failed from 10.0.0.1: GET /api/jobs: wrong user or password")
    assert said[1].startswith("HTTP authentication failed from 10.0.0.2")
    assert said[2].startswith("HTTP authentication failed from other addresses")
    assert said[3].endswith("2 more refused since the last warning (each is in the audit log)")
    with pytest.raises(ValueError, match="interval_s"):
        RefusalWarnings(interval_s=0)
    with pytest.raises(ValueError, match="max_clients"):
        RefusalWarnings(max_clients=0)


def test_a_trusted_proxy_keeps_the_https_scheme_in_the_urls_the_node_writes(start_node: Callable[..., Node]) -> None:
    """With uvicorn's proxy headers off, the scheme a TLS proxy forwards is taken from trusted proxies only:
    the RetrieveURL a search returns is the ``https://`` one the client reached the node by."""
    from dicomweb_client.api import DICOMwebClient

    from tests.factory import ct_slice, uid

    study = uid("proxy", "study")
    proto = {"X-Forwarded-Proto": "https", "Accept": "application/dicom+json"}
    urls = []
    for proxies in ("[]", '["127.0.0.1"]'):
        node = start_node(URONODE_DICOMWEB__AUTH="none", URONODE_DICOMWEB__TRUSTED_PROXIES=proxies)
        base = f"http://127.0.0.1:{node.http_port}/dicom-web"
        DICOMwebClient(url=base).store_instances([ct_slice(study, uid("proxy", "series"), 0, size=16)])
        (found,) = httpx.get(f"{base}/studies", headers=proto, timeout=30).json()
        urls.append(found["00081190"]["Value"][0])
    assert urls[0].startswith("http://127.0.0.1:") and urls[1].startswith("https://127.0.0.1:")
    assert urls[1].endswith(f"/dicom-web/studies/{study}")


def test_a_trusted_proxy_network_forwards_the_client_address(start_node: Callable[..., Node]) -> None:
    """probe7 finding 9: a container network's proxy has no fixed address; its subnet is trusted."""
    forwarded = {"X-Forwarded-For": "198.51.100.9, 203.0.113.7", "X-Forwarded-User": "dr.house@radiology"}
    node = start_node(URONODE_DICOMWEB__AUTH="none", URONODE_DICOMWEB__TRUSTED_PROXIES='["127.0.0.0/8"]')
    assert httpx.get(f"http://127.0.0.1:{node.http_port}/dicom-web/studies", headers=forwarded).status_code == 200
    (proxied,) = _events(node)
    assert (proxied["client"], proxied["proxy"], proxied["user"]) == ("203.0.113.7", "127.0.0.1", "dr.house@radiology")


@pytest.mark.parametrize(("peer", "believed"), [
    ("172.18.0.3", True), ("::ffff:172.18.0.3", True), ("172.19.0.3", False), ("fd00::7", True), ("fe80::1", False),
])
def test_a_request_from_a_trusted_network_is_believed_and_one_from_outside_it_is_not(peer: str, believed: bool) -> None:
    from dicomweb.auth import requester, trusted_addresses

    trusted = trusted_addresses(["172.18.0.0/16", "fd00::/8"])
    scope = {"client": (peer, 4711), "headers": [(b"x-forwarded-for", b"198.51.100.9, 172.18.0.2")]}
    found = requester(scope, trusted)
    assert found.believed is believed
    # the hop the proxy network itself added is skipped: the client is the last address outside it
    assert found.client == ("198.51.100.9" if believed else peer)
