"""The FastAPI application. State is built in ``lifespan`` and reached through dependencies."""

from __future__ import annotations

import asyncio
import gc
import re
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dicomweb import api, ops, qido, stow, upload, viewer, wado, workers
from dicomweb.auth import BasicAuth, http_password
from dicomweb.ops import ReadyCheck
from uronode import __version__
from uronode.audit import AuditLog
from uronode.claims import WorkerTokens
from uronode.loops import Loops
from uronode.settings import Settings
from uronode.store import Store

AUDITED_PREFIXES = ("/dicom-web", "/api", "/upload")
CLIENT_CLOSED_REQUEST = 499


class HeadAsGet:
    """HEAD on a DICOMweb resource answered as its GET would be, without the body (RFC 9110 9.3.2: a server
    supports GET and HEAD); FastAPI's GET routes answer HEAD with 405. The answer is made as for GET and its
    body dropped, so a HEAD of a retrieve costs what its GET does."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD" or not scope["path"].startswith("/dicom-web/"):
            await self.app(scope, receive, send)
            return

        async def headers_only(message: Message) -> None:
            if message["type"] == "http.response.body":
                if not message.get("more_body", False):
                    await send({"type": "http.response.body", "body": b""})
                return
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, headers_only)


class CanonicalPaths:
    """A request path with doubled slashes (a base URL configured with a trailing slash, ``.../dicom-web/`` +
    ``/studies``) or a DICOMweb or API path with a trailing slash is answered as the plain path: both were a
    404 (the viewer's catch-all took them). The path is mended in place, not redirected, because a STOW-RS
    client does not repeat its body after a redirect; it is the outermost middleware, so authentication and
    the audit see the path the routes answer."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or ("//" not in path and not (path.endswith("/") and _ROUTED.match(path))):
            await self.app(scope, receive, send)
            return
        mended = _SLASHES.sub("/", path)
        if len(mended) > 1 and mended.endswith("/") and _ROUTED.match(mended):
            mended = mended[:-1]
        raw = scope.get("raw_path")
        if raw is not None:
            raw = _RAW_SLASHES.sub(b"/", raw)
            if len(raw) > 1 and raw.endswith(b"/") and not mended.endswith("/"):
                raw = raw[:-1]
        await self.app({**scope, "path": mended, "raw_path": raw}, receive, send)


_SLASHES = re.compile(r"/{2,}")
_RAW_SLASHES = re.compile(rb"/{2,}")
_ROUTED = re.compile(r"^/(dicom-web|api)/")
"""The paths whose trailing slash is dropped: the DICOMweb and API routes (the viewer's own paths keep it)."""


class AuditRequests:
    """ASGI middleware: one audit event per DICOMweb, API or upload request and per request that is not a GET.

    The event is written when the response starts, with its status (a long WADO stream is audited
    when it begins, not when it ends); a request that ends before any response is 500 when the
    application raised, 499 when the client went away first (nginx's "client closed request").
    Plain ASGI rather than Starlette's ``BaseHTTPMiddleware``, which runs every request through an extra
    task and memory stream: a cost a QIDO answer of a millisecond or two shows (docs/benchmarks.md).
    """

    def __init__(self, app: ASGIApp, audit: AuditLog) -> None:
        self.app = app
        self.audit = audit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        method: str = scope["method"]
        if not (path.startswith(AUDITED_PREFIXES) or method != "GET"):
            await self.app(scope, receive, send)
            return
        recorded = False

        def record(status: int) -> None:
            nonlocal recorded
            recorded = True
            user = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"x-forwarded-user"), None)
            client = scope.get("client")
            self.audit.record("http", method=method, path=path[:300], status=status,
                              client=client[0] if client else None, user=user)

        async def send_recording(message: Message) -> None:
            if message["type"] == "http.response.start" and not recorded:
                record(int(message["status"]))
            await send(message)

        try:
            await self.app(scope, receive, send_recording)
        except (ClientDisconnect, asyncio.CancelledError):
            if not recorded:
                record(CLIENT_CLOSED_REQUEST)
            raise
        except Exception:
            if not recorded:
                record(500)  # what the server answers when the application raises before it starts a response
            raise


def create_app(settings: Settings, loops: Loops | None = None, ready_checks: Sequence[ReadyCheck] = ()) -> FastAPI:
    """The HTTP side of the node.

    ``loops`` are the node's background loops and ``ready_checks`` its other conditions (its model's
    folder is there), both watched by ``/readyz``; the node (:mod:`uronode.app.node`) passes them in,
    so this package knows nothing of the model or of how the node is put together.
    """

    worker_tokens = WorkerTokens(settings.queue.tokens_file(settings.storage.data_dir))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.settings = settings
        app.state.worker_tokens = worker_tokens
        app.state.loops = loops
        app.state.ready_checks = tuple(ready_checks)
        app.state.store = Store(
            settings.storage.data_dir,
            fsync=settings.storage.fsync,
            max_disk_used_percent=settings.storage.max_disk_used_percent,
        )
        # What start-up loaded lives as long as the process: out of the collector's full passes, which
        # otherwise walk it all on the event loop (113 ms measured while a large STOW was being stored).
        gc.freeze()
        yield

    app = FastAPI(title="uronode", version=__version__, lifespan=lifespan)
    audit = AuditLog(settings.storage.data_dir)

    app.add_middleware(HeadAsGet)
    app.add_middleware(AuditRequests, audit=audit)
    app.include_router(qido.router)
    app.include_router(wado.router)
    app.include_router(stow.router)
    app.include_router(api.router)
    app.include_router(upload.router)
    app.include_router(ops.router)
    app.include_router(workers.router)
    app.include_router(viewer.make_router(settings.dicomweb.viewer_dir))  # last: it catches every other path
    if settings.dicomweb.auth == "basic":
        app.add_middleware(
            BasicAuth,
            username=settings.dicomweb.username,
            password=http_password(settings),
            tokens=settings.dicomweb.tokens,
            worker_tokens=worker_tokens,
        )
    app.add_middleware(CanonicalPaths)  # outermost: every other part sees the mended path
    return app
