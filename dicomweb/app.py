"""The FastAPI application. State is built in ``lifespan`` and reached through dependencies."""

from __future__ import annotations

import asyncio
import gc
import re
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from urllib.parse import parse_qsl

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dicomweb import api, ops, qido, stow, upload, viewer, wado, workers
from dicomweb.auth import (
    AUTHENTICATION,
    Authentication,
    BasicAuth,
    GuessLimit,
    RefusalWarnings,
    address_key,
    http_password,
    requester,
    trusted_addresses,
)
from dicomweb.ops import ReadyCheck
from uronode import __version__
from uronode.audit import AuditLog
from uronode.claims import WorkerTokens
from uronode.loops import Loops
from uronode.settings import SECRET_NAME, Settings
from uronode.store import Store

AUDITED_PREFIXES = ("/dicom-web", "/api", "/upload")
REFUSAL = "uronode.refusal"
"""The scope key under which a middleware that refuses a request before authentication (:class:`SameOrigin`) leaves
why, for the audit."""
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


async def _refuse(scope: Scope, receive: Receive, send: Send, status: int, detail: str) -> None:
    await JSONResponse({"detail": detail}, status_code=status)(scope, receive, send)


SECURITY_HEADERS = [(b"x-frame-options", b"SAMEORIGIN"), (b"x-content-type-options", b"nosniff")]
"""On every answer: no page of another site frames the viewer or the upload page (clickjacking), and no browser
takes a JSON or DICOM answer for a script or a page (probe 27)."""
PATIENT_DATA_HEADERS = [(b"cache-control", b"no-store")]
"""On every DICOMweb and API answer (images, headers, findings, names): kept by no browser's or proxy's cache, as
on a shared reading-room workstation they would outlive the session (probe 51). The viewer's own files, which hold
no patient data, are cached as before."""
_PATIENT_DATA_PATHS = ("/dicom-web/", "/api/")


class SecurityHeaders:
    """ASGI middleware: :data:`SECURITY_HEADERS` on every response, and :data:`PATIENT_DATA_HEADERS` on those of
    the DICOMweb and API paths, where the application set none of its own."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        wanted = [*SECURITY_HEADERS, *(PATIENT_DATA_HEADERS if scope["path"].startswith(_PATIENT_DATA_PATHS) else ())]

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                extra = [(name, value) for name, value in wanted if name not in present]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, with_headers)


class SameOrigin:
    """ASGI middleware: a request that changes something (any method but GET, HEAD and OPTIONS) sent by a
    browser from a page of another site is a 403, unless that site is one of ``dicomweb.cors_origins``.

    Probe 27: a browser sends the basic credentials it has cached with every request to the node, a form's
    too, and an HTML form may POST ``multipart/form-data`` to another site without asking it first; a page
    of any site a logged-in user opened uploaded a made-up study through ``/api/predict``, whose results went
    to the PACS in that user's name. The browser says where a request comes from: ``Sec-Fetch-Site``
    (``same-origin``, ``none`` for one the user typed: let through), else ``Origin`` compared with the
    ``Host`` it was sent to. Clients that are not browsers (storescu-like STOW-RS tools, dicomweb-client,
    the remote workers) send neither and are let through. Browsers send ``Sec-Fetch-Site`` only to HTTPS and
    localhost, so on plain HTTP the ``Host`` decides: a reverse proxy must pass the browser's on (nginx
    ``proxy_set_header Host $http_host``, as ``deploy/nginx.conf``), or name it in ``X-Forwarded-Host``,
    believed from ``dicomweb.trusted_proxies`` only. A refusal is audited with its reason (under the audit's
    quota of refusals) and warned of, at most once a minute per address, so that an administrator sees why."""

    SAFE = frozenset({"GET", "HEAD", "OPTIONS"})

    def __init__(self, app: ASGIApp, allowed_origins: Iterable[str] = (), trusted_proxies: Iterable[str] = (),
                 warnings: RefusalWarnings | None = None) -> None:
        self.app = app
        self.allowed = frozenset(origin.rstrip("/").lower() for origin in allowed_origins)
        self.trusted = trusted_addresses(trusted_proxies)
        self.warnings = warnings or RefusalWarnings()

    def refusal(self, scope: Scope) -> str | None:
        """Why this request is refused as cross-site, or None."""
        headers = {name: value.decode("latin-1") for name, value in scope["headers"]}
        site = headers.get(b"sec-fetch-site", "").strip().lower()
        origin = headers.get(b"origin", "").strip().rstrip("/").lower()
        if site in ("same-origin", "none"):
            return None
        if "*" in self.allowed or (origin and origin in self.allowed):
            return None  # "*": any page, as dicomweb.cors_origins allows it (without authentication only)
        if not site:
            if not origin:
                return None  # not a browser
            hosts = [headers.get(b"host", "")]
            if self.trusted and requester(scope, self.trusted).believed:  # a proxy that rewrote Host names it
                hosts.append(headers.get(b"x-forwarded-host", "").split(",")[0])
            scheme = str(scope.get("scheme", "http"))  # the proxy's X-Forwarded-Proto, believed (ForwardedScheme)
            for host in (h.strip().lower() for h in hosts if h.strip()):
                if origin in (f"{scheme}://{host}", f"{scheme}://{_without_default_port(host, scheme)}"):
                    return None
        return (f"a {scope['method']} from a page of another site ({origin or site}) is refused: the node takes "
                f"changes from its own pages and from dicomweb.cors_origins")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in self.SAFE or (reason := self.refusal(scope)) is None:
            await self.app(scope, receive, send)
            return
        scope[REFUSAL] = reason  # in place: the audit around this middleware reads it
        self.warnings.refused(requester(scope, self.trusted).client, scope["method"], scope["path"], reason,
                              "request refused")
        await _refuse(scope, receive, send, 403, reason)


def _without_default_port(host: str, scheme: str) -> str:
    default = {"http": ":80", "https": ":443"}.get(scheme, "")
    return host[: -len(default)] if default and host.endswith(default) else host


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


class ForwardedScheme:
    """A request that a trusted proxy (``dicomweb.trusted_proxies``) forwarded keeps the scheme the client used
    (``X-Forwarded-Proto``), so that the URLs the node writes into its answers (STOW-RS RetrieveURL, QIDO-RS
    RetrieveURL, bulk data) are the ``https://`` ones the client reached it by. From any other client the header
    is ignored. The client's address is the audit's business (:func:`dicomweb.auth.requester`)."""

    def __init__(self, app: ASGIApp, trusted_proxies: Iterable[str] = ()) -> None:
        self.app = app
        self.trusted = trusted_addresses(trusted_proxies)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.trusted and requester(scope, self.trusted).believed:
            proto = next((v for k, v in scope["headers"] if k == b"x-forwarded-proto"), b"")
            scheme = proto.decode("latin-1").split(",")[0].strip().lower()
            if scheme in ("http", "https"):
                scope = {**scope, "scheme": scheme}
        await self.app(scope, receive, send)


class RefusalQuota:
    """How many of a client address's refused requests the audit log records: the first ``per_period`` of each
    period, then none until the period ends; the next one recorded says how many were not (probe 27: one client
    without credentials grew the audit log, on the instances' disk, by 6 MB a second).

    At most ``max_clients`` addresses are remembered, each for one period; past them, further addresses share
    one quota, so a guesser with many addresses still writes a bounded number."""

    def __init__(self, per_period: int = 60, period_s: float = 60.0, max_clients: int = 256,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.per_period = per_period
        self.period_s = period_s
        self.max_clients = max_clients
        self.clock = clock
        self._seen: dict[str, tuple[float, int, int]] = {}  # client -> (period began, recorded, not recorded)

    def admit(self, client: str | None) -> int | None:
        """None: do not record this refusal (it is counted); else record it, with how many of this client's
        refusals were not recorded before it."""
        now = self.clock()
        key = address_key(self._seen, client, now, self.period_s, self.max_clients)
        began, recorded, skipped = self._seen.get(key, (now, 0, 0))
        if now - began >= self.period_s:
            began, recorded = now, 0
        if recorded >= self.per_period:
            self._seen[key] = (began, recorded, skipped + 1)
            return None
        self._seen[key] = (began, recorded + 1, 0)
        return skipped


class AuditRequests:
    """ASGI middleware: one audit event per DICOMweb, API or upload request, per request that is not a GET, and
    per request that authentication refused (any path: password guessing leaves a trace).

    The event is written when the response starts, with its status (a long WADO stream is audited
    when it begins, not when it ends); a request that ends before any response is 500 when the
    application raised, 499 when the client went away first (nginx's "client closed request").
    It wraps :class:`~dicomweb.auth.BasicAuth`, so its refusals (401) are audited, with ``auth`` ``failed``
    and the ``reason``; a request that got through has ``auth`` (``basic``, ``token``, ``worker``) and
    ``user`` (who authenticated: never a password or token). ``client`` is the socket's address and
    ``X-Forwarded-User`` is ``claimed_user``, not ``user``, unless the socket's address is one of
    ``dicomweb.trusted_proxies``: then ``client`` is the address the proxy forwarded, ``proxy`` the proxy's,
    and ``user`` the user it names (:func:`~dicomweb.auth.requester`).
    Plain ASGI rather than Starlette's ``BaseHTTPMiddleware``, which runs every request through an extra
    task and memory stream: a cost a QIDO answer of a millisecond or two shows (docs/benchmarks.md).
    """

    def __init__(self, app: ASGIApp, audit: AuditLog, trusted_proxies: Iterable[str] = (),
                 refusals: RefusalQuota | None = None) -> None:
        self.app = app
        self.audit = audit
        self.trusted = trusted_addresses(trusted_proxies)
        self.refusals = refusals or RefusalQuota()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        method: str = scope["method"]
        recorded = False

        def record(status: int) -> None:
            nonlocal recorded
            recorded = True
            party = requester(scope, self.trusted)
            authentication: Authentication | None = scope.get(AUTHENTICATION)
            user = party.forwarded_user if party.believed and party.forwarded_user else None
            if user is None and authentication is not None and authentication.accepted:
                user = authentication.user
            fields: dict[str, object] = {"method": method, "path": path[:300], "status": status,
                                         "client": party.client, "user": user}
            if query := audited_query(scope.get("query_string", b"")):
                fields["query"] = query
            if authentication is not None:
                fields["auth"] = authentication.kind
                if authentication.failure:  # who it was is known when a worker asks outside its jobs: refused
                    what = "authentication failed" if not authentication.accepted else "refused"
                    fields["reason"] = f"{what}: {authentication.failure}"
            if (refusal := scope.get(REFUSAL)) is not None:
                fields["reason"] = f"refused: {refusal}"
            if refusal is not None or (authentication is not None and not authentication.accepted):
                if (unrecorded := self.refusals.admit(party.client)) is None:
                    return
                if unrecorded:
                    fields["unrecorded_before"] = unrecorded
            if party.proxy is not None:
                fields["proxy"] = party.proxy
            if party.forwarded_user is not None and not party.believed:
                fields["claimed_user"] = party.forwarded_user
            self.audit.record("http", **fields)

        if not (path.startswith(AUDITED_PREFIXES) or method != "GET"):
            try:
                await self.app(scope, receive, send)
            finally:  # a plain GET is audited only when authentication refused it
                refused: Authentication | None = scope.get(AUTHENTICATION)
                if refused is not None and not refused.accepted:
                    record(refused.status)
            return

        async def send_recording(message: Message) -> None:
            if message["type"] == "http.response.start" and not recorded:
                record(int(message["status"]))
            await send(message)

        try:
            await self.app(scope, receive, send_recording)
        except ClientDisconnect:  # the client went away mid-body: recorded, and nobody is left to answer (probe 29:
            if not recorded:  # each was also a 5 kB traceback in the node's log)
                record(CLIENT_CLOSED_REQUEST)
        except asyncio.CancelledError:
            if not recorded:
                record(CLIENT_CLOSED_REQUEST)
            raise
        except Exception:
            if not recorded:
                record(500)  # what the server answers when the application raises before it starts a response
            raise


QUERY_AT_MOST = 500
"""The most characters of a request's query an ``http`` audit event keeps."""


def audited_query(raw: bytes) -> str:
    """A request's query as its ``http`` audit event keeps it: a search's criteria, which can name a patient
    (``PatientName=...``), so that the trail says who looked up whom (probe 51: it said only that a search was
    made); the value of a parameter whose name sounds like a credential is left out (the node reads none there,
    but a client may send one)."""
    if not raw:
        return ""
    pairs = [(name, "..." if SECRET_NAME.search(name) else value)
             for name, value in parse_qsl(raw.decode("latin-1"), keep_blank_values=True)]
    return "&".join(f"{name}={value}" for name, value in pairs)[:QUERY_AT_MOST]


CORS_HEADERS = ("Authorization", "Accept", "Content-Type")
"""What a viewer's page on another origin may send: its credentials, the media types it asks for, STOW-RS bodies."""
CORS_EXPOSED = ("Warning", "Content-Location", "Content-Disposition")
"""What its script may read besides the simple headers: STOW-RS's and the upload's notes, a WADO-RS file's name."""


def add_cors(app: FastAPI, origins: Sequence[str]) -> None:
    """Starlette's CORS middleware for ``dicomweb.cors_origins``: reads (GET, HEAD) and STOW-RS or uploads
    (POST) from those origins' pages, the credentials in an Authorization header, never the browser's own
    (no cookies, no cached basic credentials); preflights remembered for 10 minutes."""
    app.add_middleware(CORSMiddleware, allow_origins=list(origins), allow_methods=["GET", "HEAD", "POST"],
                       allow_headers=list(CORS_HEADERS), expose_headers=list(CORS_EXPOSED), allow_credentials=False,
                       max_age=600)


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
    app.include_router(qido.router)
    app.include_router(wado.router)
    app.include_router(stow.router)
    app.include_router(api.router)
    app.include_router(upload.router)
    app.include_router(ops.router)
    app.include_router(workers.router)
    app.include_router(viewer.make_router(settings.dicomweb.viewer_dir))  # last: it catches every other path
    # Starlette runs the middleware added last first: CanonicalPaths, SecurityHeaders, ForwardedScheme, (CORS),
    # AuditRequests, SameOrigin, BasicAuth, ClaimGate, HeadAsGet.
    app.state.refusal_warnings = warnings = RefusalWarnings()  # one per node: the claim API's refusals too
    guesses = GuessLimit()  # one per node: a token guessed on the claim API counts as one guessed elsewhere
    app.add_middleware(workers.ClaimGate, tokens=worker_tokens, warnings=warnings,
                       trusted_proxies=settings.dicomweb.trusted_proxies, guesses=guesses)
    if settings.dicomweb.auth == "basic":
        app.add_middleware(
            BasicAuth,
            username=settings.dicomweb.username,
            password=http_password(settings),
            tokens=settings.dicomweb.tokens,
            worker_tokens=worker_tokens,
            trusted_proxies=settings.dicomweb.trusted_proxies,
            warnings=warnings,
            guesses=guesses,
        )
    # outside authentication: a page of another site is refused whatever credentials its browser sends
    app.add_middleware(SameOrigin, allowed_origins=settings.dicomweb.cors_origins,
                       trusted_proxies=settings.dicomweb.trusted_proxies, warnings=warnings)
    # around authentication, so that what it refuses is audited
    app.add_middleware(AuditRequests, audit=audit, trusted_proxies=settings.dicomweb.trusted_proxies)
    if settings.dicomweb.cors_origins:
        # around authentication: a browser's preflight carries no credentials, and a refusal (401) needs the
        # headers for the calling page to read it
        add_cors(app, settings.dicomweb.cors_origins)
    app.add_middleware(ForwardedScheme, trusted_proxies=settings.dicomweb.trusted_proxies)
    app.add_middleware(SecurityHeaders)
    app.add_middleware(CanonicalPaths)  # outermost: every other part sees the mended path
    return app
