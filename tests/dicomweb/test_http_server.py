"""The node's HTTP server: the compiled parser and loop it names, and one audit event per audited request."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from starlette.requests import ClientDisconnect
from starlette.types import Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from dicomweb.app import AuditRequests, create_app
from tests.peers.processes import Node, wait_until
from uronode.app.httpguard import GuardedHttpTools
from uronode.app.node import http_config
from uronode.audit import AuditLog
from uronode.settings import Settings


def _mapped(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


def _events(node: Node) -> list[dict[str, object]]:
    lines = (node.data_dir / "audit.log").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["event"] == "http"]


def test_the_node_names_httptools_and_uvloop(tmp_path: Path) -> None:
    """Named, so that uvicorn cannot fall back to h11 and asyncio's loop without a word."""
    settings = Settings(storage={"data_dir": tmp_path}, dicomweb={"auth": "none"})
    config = http_config(create_app(settings), settings)
    assert (config.http, config.loop) == (GuardedHttpTools, "uvloop")  # httptools, its request head bounded
    config.load()  # what uvicorn does at start-up: fails when either is missing
    assert issubclass(config.http_protocol_class, HttpToolsProtocol)


def test_serves_with_httptools_and_uvloop(start_node: Callable[..., Node]) -> None:
    node = start_node()
    assert node.proc is not None
    with httpx.Client(base_url=f"http://127.0.0.1:{node.http_port}") as http:
        assert http.get("/dicom-web/studies").status_code == 200  # the server has parsed a request
    maps = _mapped(node.proc.popen.pid)
    # uvicorn falls back to h11 and asyncio's own loop without a word; the node names both, so neither is missing
    assert "httptools" in maps and "uvloop" in maps


def test_each_audited_request_is_one_event_with_its_status(start_node: Callable[..., Node]) -> None:
    node = start_node()
    base = f"http://127.0.0.1:{node.http_port}"
    with httpx.Client(base_url=base) as http:
        assert http.get("/healthz").status_code == 200  # a GET outside DICOMweb, the API and uploads: not audited
        assert http.get("/dicom-web/studies", headers={"X-Forwarded-User": "dr.who"}).status_code == 200
        assert http.get("/dicom-web/studies/1.2.3").status_code == 404  # no such study to retrieve
        assert http.get("/dicom-web/studies", params={"limit": "x"}).status_code == 400
        # probe 51: a search is audited with what it looked for; a credential-like parameter's value is not kept
        assert http.get("/dicom-web/studies", params={"PatientName": "Doe^J*", "api_key": "s3cret"}).status_code == 200
        assert http.post("/nowhere", content=b"").status_code in (404, 405)  # any method but GET is audited
    events = _events(node)
    assert [(e["method"], e["path"], e["status"]) for e in events] == [
        ("GET", "/dicom-web/studies", 200),
        ("GET", "/dicom-web/studies/1.2.3", 404),
        ("GET", "/dicom-web/studies", 400),
        ("GET", "/dicom-web/studies", 200),
        ("POST", "/nowhere", events[-1]["status"]),
    ]
    assert [e.get("query") for e in events] == [None, None, "limit=x", "PatientName=Doe^J*&api_key=...", None]
    # a user named by a client that is no trusted proxy is what it claims, not who it is
    assert events[0]["user"] is None and events[0]["claimed_user"] == "dr.who" and events[1]["user"] is None
    assert all(e["client"] == "127.0.0.1" for e in events)


def test_a_stow_the_client_drops_mid_body_is_audited_and_logs_no_traceback(start_node: Callable[..., Node]) -> None:
    node = start_node()
    head = (f"POST /dicom-web/studies HTTP/1.1\r\nHost: 127.0.0.1:{node.http_port}\r\n"
            "Content-Type: multipart/related; type=\"application/dicom\"; boundary=cut\r\n"
            f"Content-Length: {10 * 2**20}\r\n\r\n--cut\r\nContent-Type: application/dicom\r\n\r\n")
    with socket.create_connection(("127.0.0.1", node.http_port), timeout=30) as sock:
        sock.sendall(head.encode() + b"\0" * 200_000)
    audit = node.data_dir / "audit.log"
    wait_until(lambda: audit.exists() and any(e["status"] == 499 for e in _events(node)), 30,
               "the dropped upload's audit record")
    assert node.proc is not None
    assert "Traceback" not in node.proc.log_text() and "Exception in ASGI application" not in node.proc.log_text()
    assert httpx.get(f"http://127.0.0.1:{node.http_port}/healthz", timeout=30).status_code == 200


@pytest.mark.parametrize(("raised", "status", "passed_on"),
                         [(ClientDisconnect(), 499, False), (RuntimeError("bug"), 500, True)])
def test_a_request_that_ends_before_any_response_is_audited_with_why(
        tmp_path: Path, raised: Exception, status: int, passed_on: bool) -> None:
    """A client gone mid-body is recorded and not passed on: nobody is left to answer, and the server logged each
    as an error with a 5 kB traceback (probe 29). A fault of the application is passed on, to be logged."""
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        raise raised

    async def receive() -> Message:
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        raise AssertionError("nothing is sent")

    middleware = AuditRequests(app, AuditLog(tmp_path))
    scope: Scope = {"type": "http", "method": "POST", "path": "/dicom-web/studies", "headers": [],
                    "client": ("127.0.0.1", 5)}
    with ThreadPoolExecutor(1) as thread:  # a loop of its own: the browser tests leave one running here
        done = thread.submit(asyncio.run, middleware(scope, receive, send))
        if passed_on:
            with pytest.raises(type(raised)):
                done.result()
        else:
            done.result()
    (event,) = [json.loads(line) for line in (tmp_path / "audit.log").read_text().splitlines()]
    assert (event["event"], event["method"], event["status"]) == ("http", "POST", status)
