"""Probe 27, a security review of the running node: what it found open, each against a real ``uronode serve``.

- the claim API read and parsed a whole JSON body before it checked the worker's token (1 GB of body took the
  HTTP process to 3.2 GB, unauthenticated): now a 401 before the body is read, and any body but STOW-RS's and
  the upload's is at most 8 MiB (413, by its length or once that much has come in chunks);
- a page of another site could POST an upload with the browser's cached password (the browser half is
  ``tests/browser/test_cross_site.py``): refused by where the browser says the request comes from;
- a bearer token with a character beyond ASCII was a 500 and a traceback, not a refusal;
- (review 29) a refusal of a page of another site escaped the audit's quota and said no reason;
- the index and the metadata cache were readable by every local account; no anti-framing header;
- each refused request was written to the audit log, 6 MB a second from one client: 60 a minute an address;
- (#6, next session) failed logins were not slowed: past 10 wrong passwords or tokens a minute from an address,
  its requests with credentials are answered 429 without being checked.
"""

from __future__ import annotations

import json
import socket
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from dicomweb.app import RefusalQuota, SameOrigin
from dicomweb.auth import GuessLimit
from dicomweb.workers import MAX_BODY_BYTES
from tests.factory import write_series
from tests.peers.processes import Node, storescu, wait_until
from uronode.claims import new_worker_token
from uronode.files import keep_private

PASSWORD = "probe27-password"
TOKEN = "probe27-script-token-\u00e9t\u00e9"


def raw_request(port: int, head: str, body: bytes = b"", wait_s: float = 30) -> tuple[str, float]:
    """Send ``head`` and ``body`` on a socket of its own; the status line of the answer and when it came (s)."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait_s) as sock:
        began = time.monotonic()
        sock.sendall(head.encode("latin-1") + b"\r\n" + body)
        answer = b""
        while b"\r\n" not in answer:
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
        return answer.split(b"\r\n", 1)[0].decode("latin-1"), time.monotonic() - began


def audit(node: Node) -> list[dict[str, object]]:
    path = node.data_dir / "audit.log"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture
def node(start_node: Callable[..., Node]) -> Node:
    return start_node(URONODE_DICOMWEB__AUTH="basic", URONODE_DICOMWEB__PASSWORD=PASSWORD,
                      URONODE_DICOMWEB__TOKENS=json.dumps([TOKEN]),
                      URONODE_DICOMWEB__CORS_ORIGINS='["http://viewer.example:9000"]',
                      URONODE_DELIVERY__KNOWN_AES='{"CT1": {"host": "127.0.0.1", "port": 104}}')  # unused: a caution


def test_the_claim_api_refuses_a_request_without_a_worker_token_before_reading_its_body(node: Node) -> None:
    """1 GB announced, 16 bytes sent: the 401 comes without the rest (before, the node waited for it all)."""
    head = (f"POST /api/queue/jobs/1/complete HTTP/1.1\r\nHost: 127.0.0.1:{node.http_port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {10**9}\r\n")
    status, _ = raw_request(node.http_port, head, b'{"claim": "xxxx"')
    assert status == "HTTP/1.1 401 Unauthorized"
    refused = [r for r in audit(node) if r.get("path") == "/api/queue/jobs/1/complete"]
    assert [(r["status"], r["auth"], r["reason"]) for r in refused] == [
        (401, "failed", "authentication failed: no credentials")]
    assert httpx.get(f"http://127.0.0.1:{node.http_port}/healthz", timeout=30).status_code == 200


def test_a_body_over_the_limit_is_refused_by_its_length_or_as_it_comes(node: Node) -> None:
    token = new_worker_token(node.data_dir / "worker-tokens", "gpu-1")
    base = f"http://127.0.0.1:{node.http_port}"
    head = (f"POST /api/queue/jobs/1/complete HTTP/1.1\r\nHost: 127.0.0.1:{node.http_port}\r\n"
            f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n")
    status, _ = raw_request(node.http_port, head + f"Content-Length: {MAX_BODY_BYTES + 1}\r\n", b"{")
    assert status == "HTTP/1.1 413 Request Entity Too Large"

    def chunks(total: int) -> Iterator[bytes]:  # a generator body: httpx sends it chunked, without a length
        piece = b" " * 65536
        for _ in range(total // len(piece) + 1):
            yield piece

    answer = httpx.post(f"{base}/api/queue/jobs/1/complete", content=chunks(MAX_BODY_BYTES + 65536),
                        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"}, timeout=60)
    assert answer.status_code == 413
    assert answer.json()["detail"] == "Content Too Large"
    # a small chunked body is handed on whole: the route answers it (no such job), as it would with a length
    small = httpx.post(f"{base}/api/queue/jobs/1/complete", content=iter([b'{"claim": "c", ', b'"results": []}']),
                       headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"}, timeout=60)
    assert small.status_code in (409, 422), small.text
    assert "Too Large" not in small.text


def test_a_bearer_token_beyond_ascii_is_refused_not_a_server_error(node: Node) -> None:
    base = f"http://127.0.0.1:{node.http_port}"
    for path in ("/api/jobs", "/dicom-web/studies", "/metrics"):
        answer = httpx.get(f"{base}{path}", headers={b"Authorization": "Bearer \u00e9".encode("latin-1")}, timeout=30)
        assert answer.status_code == 401, (path, answer.text)
    assert "Traceback" not in (node.proc.log_text() if node.proc else "")
    assert [r["reason"] for r in audit(node) if r.get("path") == "/api/jobs"] == [
        "authentication failed: unknown bearer token"]
    # a configured token beyond ASCII still opens, sent as UTF-8 bytes
    good = httpx.get(f"{base}/api/jobs", headers={b"Authorization": f"Bearer {TOKEN}".encode()}, timeout=30)
    assert good.status_code == 200, good.text


def test_an_upload_from_a_page_of_another_site_is_refused_and_stores_nothing(node: Node, tmp_path: Path) -> None:
    _, _, (path,) = write_series(tmp_path / "ct", 1, size=64)
    url = f"http://127.0.0.1:{node.http_port}/api/predict"

    def upload(**headers: str) -> httpx.Response:
        with path.open("rb") as f:
            return httpx.post(url, files={"files": (path.name, f, "application/dicom")}, auth=("uronode", PASSWORD),
                              headers=headers, timeout=120)

    refused = upload(**{"Origin": "http://127.0.0.1:8081", "Sec-Fetch-Site": "same-site"})
    assert refused.status_code == 403
    assert "from a page of another site (http://127.0.0.1:8081) is refused" in refused.json()["detail"]
    assert upload(Origin="http://evil.example").status_code == 403  # a browser without Sec-Fetch-Site
    assert not (node.data_dir / "instances").exists() or not any((node.data_dir / "instances").rglob("*.dcm"))
    assert [r["status"] for r in audit(node) if r.get("path") == "/api/predict"] == [403, 403]
    # the node's own page, a site it lets in, a browser that says nothing of the site, a program: taken
    assert upload(**{"Sec-Fetch-Site": "same-origin", "Origin": f"http://127.0.0.1:{node.http_port}"}).status_code \
        == 200
    assert upload(Origin="http://viewer.example:9000").status_code == 200
    assert upload(Origin=f"http://127.0.0.1:{node.http_port}").status_code == 200
    assert upload().status_code == 200
    # reading is never refused for its origin (CORS decides what the page may read)
    qido = httpx.get(f"http://127.0.0.1:{node.http_port}/dicom-web/studies", auth=("uronode", PASSWORD),
                     headers={"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"}, timeout=30)
    assert qido.status_code == 200


def test_same_origin_compares_the_origin_with_the_host_it_was_sent_to() -> None:
    gate = SameOrigin(app=None, allowed_origins=["https://viewer.example/"],  # type: ignore[arg-type]
                      trusted_proxies=["10.0.0.1"])

    def refused(scheme: str = "http", client: str = "10.9.9.9", **headers: str) -> bool:
        scope = {"type": "http", "method": "POST", "scheme": scheme, "client": (client, 40000),
                 "headers": [(k.lower().replace("_", "-").encode(), v.encode()) for k, v in headers.items()]}
        return gate.refusal(scope) is not None

    assert not refused()  # not a browser
    assert not refused(sec_fetch_site="none")  # typed by the user
    assert not refused(origin="https://viewer.example", sec_fetch_site="cross-site")
    assert not refused("https", origin="https://node.example", host="node.example:443")
    assert not refused("https", origin="https://node.example:8443", host="node.example:8443")
    assert refused("https", origin="https://node.example:8443", host="node.example")
    assert refused(origin="https://node.example", host="node.example")  # another scheme is another origin
    assert refused(sec_fetch_site="cross-site")
    assert refused(origin="null")  # a sandboxed page, a file
    # a proxy that rewrote Host names the browser's in X-Forwarded-Host: believed from a trusted proxy only
    assert not refused(client="10.0.0.1", origin="http://node.example", host="uronode:8080",
                       x_forwarded_host="node.example")
    assert refused(origin="http://node.example", host="uronode:8080", x_forwarded_host="node.example")
    anyone = SameOrigin(app=None, allowed_origins=["*"])  # type: ignore[arg-type]
    assert anyone.refusal({"type": "http", "method": "POST", "headers": [(b"sec-fetch-site", b"cross-site")]}) is None


def test_refusals_of_pages_of_other_sites_are_audited_with_their_reason_under_the_quota(node: Node) -> None:
    """Review 29: a refusal before authentication left no authentication in the scope, so each was written."""
    with httpx.Client(timeout=30) as client:
        for _ in range(70):
            answer = client.post(f"http://127.0.0.1:{node.http_port}/api/predict", content=b"x",
                                 headers={"Origin": "http://evil.example"})
            assert answer.status_code == 403
    wait_until(lambda: len([r for r in audit(node) if r.get("status") == 403]) >= 60, 30, "the audit records")
    time.sleep(0.5)
    refused = [r for r in audit(node) if r.get("status") == 403]
    assert len(refused) == 60
    assert refused[0]["reason"] == ("refused: a POST from a page of another site (http://evil.example) is refused:"
                                    " the node takes changes from its own pages and from dicomweb.cors_origins")
    log = node.proc.log_text() if node.proc else ""
    assert "HTTP request refused from 127.0.0.1: POST /api/predict: a POST from a page of another site" in log


def test_answers_forbid_framing_and_sniffing(node: Node) -> None:
    base = f"http://127.0.0.1:{node.http_port}"
    for path in ("/upload", "/", "/healthz", "/dicom-web/studies"):
        answer = httpx.get(f"{base}{path}", auth=("uronode", PASSWORD), timeout=30)
        assert answer.headers.get("x-frame-options") == "SAMEORIGIN", path
        assert answer.headers.get("x-content-type-options") == "nosniff", path
        # probe 51: answers with patient data are kept by no browser cache; the viewer's own files are
        assert (answer.headers.get("cache-control") == "no-store") == path.startswith("/dicom-web/"), path
    jobs = httpx.get(f"{base}/api/jobs", auth=("uronode", PASSWORD), timeout=30)
    assert jobs.status_code == 200 and jobs.headers.get("cache-control") == "no-store"
    refused = httpx.get(f"{base}/upload", timeout=30)
    assert refused.status_code == 401 and refused.headers.get("x-frame-options") == "SAMEORIGIN"


def test_the_node_keeps_patient_data_from_other_local_accounts(node: Node, tmp_path: Path) -> None:
    study, series, _ = write_series(tmp_path / "ct", 3, size=64)
    assert storescu(node.dicom_port, tmp_path / "ct").returncode == 0
    metadata = httpx.get(f"http://127.0.0.1:{node.http_port}/dicom-web/studies/{study}/series/{series}/metadata",
                         auth=("uronode", PASSWORD), timeout=30)
    assert metadata.status_code == 200
    # the test made the folder 0755 before the node started: the node closed it
    assert stat.S_IMODE(node.data_dir.stat().st_mode) == 0o750
    made = [p for p in node.data_dir.rglob("*") if p.name.startswith(("index.sqlite3", ".metadata"))]
    assert any(p.name == ".metadata.json" for p in made) and any(p.name == "index.sqlite3" for p in made), made
    opened = {str(p.relative_to(node.data_dir)): oct(p.stat().st_mode) for p in node.data_dir.rglob("*")
              if stat.S_IMODE(p.stat().st_mode) & 0o007}
    assert opened == {}
    log = node.proc.log_text() if node.proc else ""
    assert "scp.restrict_callers is off: any host may store series here and hold 8 of its 16 association slots" in log
    assert "delivery.known_aes lists 1 AE title(s) but no destination is of kind sender: they are not used" in log


def test_refused_requests_fill_the_audit_log_at_most_60_a_minute_from_an_address(node: Node) -> None:
    with httpx.Client(timeout=30) as client:
        for _ in range(75):
            assert client.get(f"http://127.0.0.1:{node.http_port}/dicom-web/studies").status_code == 401
    wait_until(lambda: len([r for r in audit(node) if r.get("status") == 401]) >= 60, 30, "the audit records")
    time.sleep(0.5)
    assert len([r for r in audit(node) if r.get("status") == 401]) == 60


def test_the_refusal_quota_counts_what_it_does_not_record() -> None:
    now = [0.0]
    quota = RefusalQuota(per_period=2, period_s=60, max_clients=2, clock=lambda: now[0])
    assert [quota.admit("a") for _ in range(5)] == [0, 0, None, None, None]
    assert quota.admit("b") == 0
    assert quota.admit("c") == 0 and quota.admit("d") == 0 and quota.admit("e") is None  # others share one
    now[0] = 61
    assert quota.admit("a") == 3  # a new minute: recorded, saying how many were not
    assert quota.admit("a") == 0


def test_closing_the_data_folder_keeps_its_group_and_setgid(tmp_path: Path) -> None:
    """Review 29: the folder's setgid bit (a backup group owning what is made in it) was cleared."""
    folder = tmp_path / "data"
    folder.mkdir()
    folder.chmod(0o2775)
    keep_private(folder)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o2770



def test_wrong_passwords_from_one_address_are_slowed_and_other_addresses_are_not(node: Node) -> None:
    url = f"http://127.0.0.1:{node.http_port}/dicom-web/studies"
    with httpx.Client(timeout=30) as client:
        for _ in range(30):  # a viewer's stale cached password, sent with many requests: one guess (review 30)
            assert client.get(url, auth=("uronode", "stale-password")).status_code == 401
        for n in range(9):
            assert client.get(url, auth=("uronode", f"guess-{n}")).status_code == 401
        # the eleventh different try is not checked: the right password is refused as well, and says until when
        locked = client.get(url, auth=("uronode", PASSWORD))
        assert locked.status_code == 429, locked.text
        assert 50 <= int(locked.headers["retry-after"]) <= 60
        assert "too many failed logins" in locked.json()["detail"]
        assert client.get(url, headers={"Authorization": "Bearer any-token"}).status_code == 429
        claim = client.post(f"http://127.0.0.1:{node.http_port}/api/queue/claim", json={},
                            headers={"Authorization": "Bearer any-worker-token"})
        assert claim.status_code == 429  # the claim API's worker tokens are guessed under the same limit
        # a request without credentials is no guess: still the 401 that makes a browser ask its user
        assert client.get(url).status_code == 401
    with httpx.Client(timeout=30, transport=httpx.HTTPTransport(local_address="127.0.0.2")) as other:
        assert other.get(url, auth=("uronode", PASSWORD)).status_code == 200
    wait_until(lambda: any(r.get("status") == 429 for r in audit(node)), 30, "the 429 in the audit log")
    slowed = [r for r in audit(node) if r.get("status") == 429]
    assert slowed[0]["auth"] == "failed" and slowed[0]["client"] == "127.0.0.1"
    assert "10 different wrong passwords or tokens from this address within 60 s" in str(slowed[0]["reason"])
    log = node.proc.log_text() if node.proc else ""
    assert "wrong user or password" in log


def test_the_guess_limit_counts_different_wrong_guesses_and_ends_with_its_period() -> None:
    now = [0.0]
    guesses = GuessLimit(limit=3, period_s=60, max_clients=2, clock=lambda: now[0])
    for _ in range(5):
        guesses.failed("a", "no credentials", "")  # a browser's first request, before it asks its user
        guesses.failed("a", "worker w's token does not open this request", "Bearer w")  # known, not a guess
        guesses.failed("a", "wrong user or password", "Basic c3RhbGU=")  # the same stale password again
    assert guesses.wait_s("a") == 0
    for n, failure in enumerate(("unknown bearer token", "unknown or revoked worker token")):
        now[0] += 10
        guesses.failed("a", failure, f"Bearer guess-{n}")
    assert guesses.wait_s("a") == 40  # three different guesses: locked until the end of the period begun at 0
    assert guesses.wait_s("b") == 0
    guesses.failed("b", "wrong user or password", "Basic Yjo=")
    for client in ("c", "d", "e", "f"):  # past max_clients: further addresses are not counted, never shared
        for n in range(3):
            guesses.failed(client, "wrong user or password", f"Basic {n}")
        assert guesses.wait_s(client) == 0
    now[0] = 61
    assert guesses.wait_s("a") == 0  # its period is over
    for n in range(3):
        guesses.failed("c", "wrong user or password", f"Basic {n}")  # a's period is over: room for c
    assert guesses.wait_s("c") == 60
