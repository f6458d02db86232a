"""The HTTP side's bounds on a request's head (probe 40): a header of hundreds of megabytes held the event loop
and grew the node, and connections trickling header lines stayed open for good. uvicorn with the node's
protocol (:mod:`uronode.app.httpguard`), as ``uronode serve`` runs it, on a real socket."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn
from starlette.types import Receive, Scope, Send

from tests.peers.processes import free_port, wait_until
from uronode.app import httpguard


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    assert scope["type"] == "http"
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    monkeypatch.setattr(httpguard, "HEAD_TIMEOUT_S", 1.5)
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False,
                            http=httpguard.GuardedHttpTools, loop="uvloop", lifespan="off")
    running = uvicorn.Server(config)
    thread = threading.Thread(target=running.run, daemon=True)
    thread.start()
    wait_until(lambda: running.started, 20, "uvicorn to start")
    try:
        yield port
    finally:
        running.should_exit = True
        thread.join(10)


def _get(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: node\r\nConnection: close\r\n\r\n")
        return sock.recv(1000)


def _answer(sock: socket.socket) -> bytes:
    sock.settimeout(10)
    data = b""
    while chunk := sock.recv(4096):
        data += chunk
    return data


def test_a_request_head_over_the_limit_is_refused_and_the_server_answers_others(server: int) -> None:
    with socket.create_connection(("127.0.0.1", server), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: node\r\nX-Big: ")
        sent = 0
        try:
            while sent < 8 * httpguard.MAX_HEAD_BYTES:
                sock.sendall(b"a" * 65536)
                sent += 65536
        except OSError:
            pass  # closed under us: refused
        answer = _answer(sock)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:100]  # refused, the connection closed (not read on)
    assert _get(server).startswith(b"HTTP/1.1 200")


def test_a_head_that_does_not_come_whole_in_time_is_closed_a_full_one_is_served(server: int) -> None:
    with socket.create_connection(("127.0.0.1", server), timeout=5) as slow:
        started = time.monotonic()
        slow.sendall(b"GET / HTTP/1.1\r\nHost: node\r\n")
        try:
            while time.monotonic() - started < 10:
                slow.sendall(b"X-Trickle: 1\r\n")  # a header line now and then, never the blank line
                time.sleep(0.3)
        except OSError:
            pass
        answer = _answer(slow)
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:100]
    assert time.monotonic() - started < 6
    with socket.create_connection(("127.0.0.1", server), timeout=5) as kept:  # two requests on one connection
        for _ in range(2):
            kept.sendall(b"GET / HTTP/1.1\r\nHost: node\r\n\r\n")
            assert kept.recv(1000).startswith(b"HTTP/1.1 200")
            time.sleep(1.0)  # idle between them: that is the keep-alive's, not the head's time
