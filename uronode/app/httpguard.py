"""uvicorn's httptools protocol with bounds on a request's head (probe 40).

uvicorn reads a request's line and headers without a limit of size or time: one connection streaming a header
value of 400 MB held the event loop for minutes (every page, DICOMweb and `/healthz` unanswered) and grew the
node by 600 MB, and thousands of connections trickling header lines stayed open for good, each holding a file
descriptor. Here a request whose head is not complete after ``MAX_HEAD_BYTES`` is answered 431 and its connection
closed, and a connection whose request head has not come whole within ``HEAD_TIMEOUT_S`` of its start (or of
the connection's, for the first request) is answered 408 and closed. Bodies are not touched: STOW-RS and the
upload page stream theirs, bounded elsewhere (``dicomweb.multipart``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from uronode.logs import Sometimes

log = logging.getLogger(__name__)

MAX_HEAD_BYTES = 1024 * 1024
"""A request line and headers larger than this are refused (a browser's stay under 16 KiB; a long QIDO URL or a
proxy's many headers under a few hundred)."""
HEAD_TIMEOUT_S = 30.0
"""How long a request's head may take to arrive whole."""


class GuardedHttpTools(HttpToolsProtocol):
    """:class:`HttpToolsProtocol` with a request head bounded in size and time."""

    _refusals = Sometimes()
    """Told one line a minute, however many come."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_bytes = 0
        self._in_head = True
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        if self._in_head and self._head_bytes > MAX_HEAD_BYTES and not self.transport.is_closing():
            self._refuse(431, "Request Header Fields Too Large",
                         f"the request's line and headers are larger than {MAX_HEAD_BYTES} bytes")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if not self._in_head:  # a further request on a kept-alive connection: its own head's bounds
            self._in_head, self._head_bytes = True, 0
            self._start_head_timer()

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._stop_head_timer()
        super().on_headers_complete()

    def _start_head_timer(self) -> None:
        self._stop_head_timer()
        self._head_timer = self.loop.call_later(HEAD_TIMEOUT_S, self._head_too_slow)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if self._in_head and not self.transport.is_closing():
            self._refuse(408, "Request Timeout", f"the request's head did not come whole within {HEAD_TIMEOUT_S:g} s")

    def _refuse(self, status: int, phrase: str, why: str) -> None:
        body = why.encode("ascii")
        self.transport.write(b"".join([
            f"HTTP/1.1 {status} {phrase}\r\n".encode("ascii"),
            b"content-type: text/plain; charset=utf-8\r\n",
            b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
            b"connection: close\r\n\r\n", body]))
        self.transport.close()
        self._in_head = False
        if (count := self._refusals.happened()) is not None:
            client = f"{self.client[0]}:{self.client[1]}" if self.client else "?"
            log.warning("HTTP connection from %s closed: %s (%d refused so)", client, why, count)
