"""HTTP authentication: basic (user and password) or bearer tokens, on every path but health.

Browsers ask for the password once and send it with every same-origin
request, OHIF's DICOMweb requests included, so the viewer needs no
credentials in its configuration. A failure is a 401 with
``WWW-Authenticate: Basic``.

A remote worker's token (``queue.worker_tokens_file``) opens only what a worker
needs: reading series (``GET /dicom-web/...``), storing results (STOW-RS,
``POST /dicom-web/studies``) and the claim API (``/api/queue/...``), and of
DICOMweb only what its jobs hold (:func:`worker_refusal`): it reads the series
of a job it holds (``/dicom-web/studies/{study}/series/{series}`` and what is
under it) and stores into that job's study, while its claim is live (running,
held by that worker, the lease not over: :func:`uronode.claims.holds`). Any
other study, series or search is a 403 saying why (``worker W holds no job in
study S``); a STOW-RS without a study in the path is held to the study its
parts name (:mod:`dicomweb.stow`). The check is here, after the path is mended
(:class:`dicomweb.app.CanonicalPaths`) and before any route, so that no
DICOMweb route, present or future, answers a worker without it.

Who asked is kept in the request's scope (:class:`Authentication`, under
``AUTHENTICATION``) for the audit log, which also records each refusal; a
refusal is a warning in the log too, at most one a minute per client address.
The client's address and the user a reverse proxy names (``X-Forwarded-For``,
``X-Forwarded-User``) are believed only from ``dicomweb.trusted_proxies``
(:func:`requester`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import logging
import math
import os
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeAlias

from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from dicomweb.deps import store_in
from uronode.claims import WorkerTokens, holds
from uronode.settings import Settings
from uronode.store import Store

log = logging.getLogger(__name__)

OPEN_PATHS = ("/healthz", "/readyz")
PASSWORD_FILE = "http-password"
STOW_PATH = re.compile(r"^/dicom-web/studies(/[^/]+)?$")
SERIES_PATH = re.compile(r"^/dicom-web/studies/([^/]+)/series/([^/]+)(?:/.*)?$")
"""A series and what is under it (instances, frames, metadata, renderings, bulk data): what a worker may read."""
STUDY_PATH = re.compile(r"^/dicom-web/studies/([^/]+)(?:/.*)?$")
AUTHENTICATION = "uronode.authentication"
"""The scope key under which :class:`BasicAuth` leaves its :class:`Authentication` of the request."""
CLAIM_MAX = 200
"""Characters kept of a forwarded user name or address (what a client sends is not trusted to be short)."""

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Authentication:
    """How a request authenticated: ``kind`` is ``basic``, ``token`` (one of ``dicomweb.tokens``), ``worker``
    (a remote worker's token) or ``failed``; ``user`` names who (the basic user name, ``token #N`` for the
    N-th configured token, the worker's name), never a password or token; ``failure`` says why it failed, or,
    for a worker, why the request is outside the jobs it holds (answered 403, :func:`worker_refusal`); ``status``
    is what a failed one is answered (401; 429 past :class:`GuessLimit`)."""

    kind: Literal["basic", "token", "worker", "failed"]
    user: str | None = None
    failure: str | None = None
    status: int = 401

    @property
    def accepted(self) -> bool:
        return self.kind != "failed"


@dataclass(frozen=True)
class Requester:
    """Where a request came from. ``client`` is the socket's address, or, when that is a trusted proxy, the
    address it forwarded (``X-Forwarded-For``), with the proxy's own in ``proxy``; ``forwarded_user`` is what
    ``X-Forwarded-User`` says, believed (``believed``) only from a trusted proxy."""

    client: str | None
    proxy: str | None = None
    forwarded_user: str | None = None
    believed: bool = False


def trusted_addresses(entries: Iterable[str]) -> frozenset[IPNetwork]:
    """The trusted proxies (``dicomweb.trusted_proxies``, checked when the settings are read), each an address
    (a network of one) or a network; an IPv4-mapped IPv6 address is its IPv4 address, as :func:`_address` reads."""
    networks = set()
    for entry in entries:
        try:
            network = ipaddress.ip_network(entry.strip(), strict=False)
        except ValueError:
            continue
        mapped = network.network_address.ipv4_mapped if isinstance(network, ipaddress.IPv6Network) else None
        if mapped is not None and network.prefixlen >= 96:
            network = ipaddress.ip_network(f"{mapped}/{network.prefixlen - 96}", strict=False)
        networks.add(network)
    return frozenset(networks)


def _trusted(address: IPAddress | None, trusted: frozenset[IPNetwork]) -> bool:
    """Whether ``address`` is one of the ``trusted`` proxies (in one of their networks)."""
    return address is not None and any(address in network for network in trusted)


def requester(scope: Scope, trusted: frozenset[IPNetwork]) -> Requester:
    """Who sent the request, believing forwarded headers only from a trusted proxy.

    Behind a trusted proxy the client is the last address in ``X-Forwarded-For`` that is not itself a
    trusted proxy (proxies append the address they received from, so only the right end is theirs)."""
    peer = scope.get("client")
    address = peer[0] if peer else None
    forwarded_user: str | None = None
    forwarded_for: list[str] = []
    for name, value in scope["headers"]:
        if name == b"x-forwarded-user" and forwarded_user is None:
            forwarded_user = value.decode("latin-1")[:CLAIM_MAX] or None
        elif name == b"x-forwarded-for":
            forwarded_for.append(value.decode("latin-1"))
    if not _trusted(_address(address), trusted):
        return Requester(address, forwarded_user=forwarded_user)
    hops = [hop.strip() for hop in ",".join(forwarded_for).split(",") if hop.strip()]
    client = next((hop for hop in reversed(hops) if not _trusted(_address(hop), trusted)), hops[0] if hops else None)
    if client is None:
        return Requester(address, forwarded_user=forwarded_user, believed=True)
    known = _address(client)
    return Requester(str(known) if known else client[:CLAIM_MAX], address, forwarded_user, believed=True)


def _address(text: str | None) -> IPAddress | None:
    """The IP address in ``text`` (``1.2.3.4``, ``1.2.3.4:5678``, ``::1``, ``[::1]:5678``), or None."""
    if not text:
        return None
    for candidate in (text, text.strip("[]"), text.rpartition(":")[0].strip("[]")):
        try:
            address = ipaddress.ip_address(candidate)
        except ValueError:
            continue
        mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
        return mapped or address  # ::ffff:127.0.0.1 from a dual-stack socket is 127.0.0.1
    return None


def worker_may(method: str, path: str) -> bool:
    """What a remote worker's token opens: read series, store results, claim and complete jobs."""
    if path.startswith("/api/queue/"):
        return True
    if method in ("GET", "HEAD") and path.startswith("/dicom-web/"):
        return True
    return method == "POST" and STOW_PATH.match(path) is not None


def worker_refusal(store: Store | None, worker: str, method: str, path: str) -> str | None:
    """Why remote ``worker`` may not make this DICOMweb request (a 403), or None: it may read only the series
    of a job it holds and store only into such a job's study (:func:`uronode.claims.holds`). Everything else
    under ``/dicom-web/`` (searches, whole studies, other series) is refused: deny unless allowed."""
    if store is None:
        return f"worker {worker}: the node's store is not open"
    if method == "POST":
        stow = STOW_PATH.match(path)
        if stow is None:
            return f"worker {worker}'s token does not open {method} {path[:200]}"
        if stow.group(1) is None:  # the parts' study is held to the worker's jobs by dicomweb.stow
            return None if holds(store, worker) else f"worker {worker} holds no job"
        study = stow.group(1)[1:]
        return None if holds(store, worker, study) else f"worker {worker} holds no job in study {study[:80]}"
    series = SERIES_PATH.match(path)
    if series is not None:
        study, uid = series.group(1), series.group(2)
        if holds(store, worker, study, uid):
            return None
        if holds(store, worker, study):
            return f"worker {worker} holds no job on series {uid[:80]} of study {study[:80]}"
        return f"worker {worker} holds no job in study {study[:80]}"
    study_path = STUDY_PATH.match(path)
    if study_path is not None and not holds(store, worker, study_path.group(1)):
        return f"worker {worker} holds no job in study {study_path.group(1)[:80]}"
    return f"worker {worker} may read only the series of the jobs it holds, not {path[:200]}"


def http_password(settings: Settings) -> str:
    """The configured password, or the node's own (made once, kept in the data folder)."""
    if settings.dicomweb.password:
        return settings.dicomweb.password
    path = Path(settings.storage.data_dir) / PASSWORD_FILE
    if path.is_file():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    password = secrets.token_urlsafe(18)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(password + "\n")
    if _held_data(path.parent):  # a node that ran before
        # probe 41: a lost password file was replaced with the first start's words, which said nothing of it
        log.error("HTTP user %r: the password file %s was missing in a data folder that holds a node's data: a new"
                  " password was made and stored there; every client, browser and viewer that kept the old one is"
                  " refused until given it (or set dicomweb.password)", settings.dicomweb.username, path)
    else:
        log.warning("HTTP user %r; its password was made and stored in %s", settings.dicomweb.username, path)
    return password


def _held_data(folder: Path) -> bool:
    """Whether the data folder's index already holds instances or jobs (a node ran there before)."""
    index = folder / "index.sqlite3"
    if not index.is_file():
        return False
    try:
        conn = sqlite3.connect(f"file:{index}?mode=ro", uri=True, timeout=5)
        try:
            return bool(conn.execute("SELECT EXISTS (SELECT 1 FROM instances) OR EXISTS (SELECT 1 FROM jobs)")
                        .fetchone()[0])
        finally:
            conn.close()
    except sqlite3.Error:
        return False


OTHER_ADDRESSES = "other addresses"


def address_key(remembered: dict[str, Any], client: str | None, now: float, period_s: float,
                max_clients: int) -> str:
    """The key a client's refusals are counted under in ``remembered`` (each value a tuple that begins with when
    its period began): the client's address, or, once ``max_clients`` addresses are remembered within their
    periods, one key the further ones share, so that a guesser with many addresses is bounded too. Addresses
    whose period is over are forgotten, in place."""
    key = client or "an unknown address"
    if key not in remembered and len(remembered) >= max_clients:
        for stale in [k for k, v in remembered.items() if now - v[0] >= period_s]:
            del remembered[stale]
        if len(remembered) >= max_clients:
            key = OTHER_ADDRESSES
    return key


class RefusalWarnings:
    """Warnings about refused authentication that cannot flood the log: one per client address a period
    (``interval_s``), saying how many more were refused since; the audit log has each one.

    At most ``max_clients`` addresses are remembered, each for one period; past them, refusals from further
    addresses share one warning a period, so a guesser with many addresses still writes a bounded number.
    """

    OTHERS = OTHER_ADDRESSES

    def __init__(self, interval_s: float = 60.0, max_clients: int = 256,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be above 0, not {interval_s!r}")
        if max_clients < 1:
            raise ValueError(f"max_clients must be at least 1, not {max_clients!r}")
        self.interval_s = interval_s
        self.max_clients = max_clients
        self.clock = clock
        self._last: dict[str, tuple[float, int]] = {}  # client -> (when warned, refusals not warned since)
        self._lock = threading.Lock()  # the middleware (event loop) and the claim API (thread pool) share it

    def refused(self, client: str | None, method: str, path: str, failure: str,
                what: str = "authentication failed") -> None:
        """Warn of a refusal (``what``: a 401's "authentication failed", a 403's "request refused")."""
        with self._lock:
            self._refused(client, method, path, failure, what)

    def _refused(self, client: str | None, method: str, path: str, failure: str, what: str) -> None:
        now = self.clock()
        key = address_key(self._last, client, now, self.interval_s, self.max_clients)
        warned, unsaid = self._last.get(key, (None, 0))
        if warned is not None and now - warned < self.interval_s:
            self._last[key] = (warned, unsaid + 1)
            return
        self._last[key] = (now, 0)
        since = f"; {unsaid} more refused since the last warning (each is in the audit log)" if unsaid else ""
        log.warning("HTTP %s from %s: %s %s: %s%s", what, key, method, path[:200], failure, since)


class GuessLimit:
    """At most ``limit`` different wrong passwords or tokens from one client address a period (``period_s``):
    past them, every request of that address that carries credentials is refused (429, ``Retry-After``) until
    the period is over, without its credentials being checked, so that a password cannot be guessed faster
    than ``limit`` a period from one address (probe 27: failed logins were not slowed).

    Different guesses are counted, not refused requests (review 30): a viewer whose cached password went stale
    sends it with many requests at once, and is one wrong guess, not a lockout of its user. A request without
    credentials (a browser's first, before it asks its user) is no guess. Periods are fixed, beginning with an
    address's first wrong guess; what is kept of a guess is a salted 8-byte hash. At most ``max_clients``
    addresses are counted at a time: past them, further addresses are not counted (never one shared count,
    which would let one guesser with many addresses lock everyone out: review 30).
    """

    GUESSES = frozenset({"wrong user or password", "unknown bearer token", "malformed basic credentials",
                         "unknown or revoked worker token"})

    def __init__(self, limit: int = 10, period_s: float = 60.0, max_clients: int = 8192,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.period_s = period_s
        self.max_clients = max_clients
        self.clock = clock
        self._salt = secrets.token_bytes(16)
        self._guesses: dict[str, tuple[float, set[bytes]]] = {}  # client -> (when its period began, its guesses)
        self._lock = threading.Lock()  # the middleware (event loop) and the claim API (thread pool) share it

    def wait_s(self, client: str | None) -> float:
        """How long ``client`` must wait before its credentials are checked again; 0 when they are checked now."""
        with self._lock:
            began, seen = self._guesses.get(client or "", (0.0, set()))
            waited = self.clock() - began
            return self.period_s - waited if len(seen) >= self.limit and waited < self.period_s else 0.0

    def failed(self, client: str | None, failure: str | None, credentials: str) -> None:
        """Count a refused request's ``credentials`` (its ``Authorization`` header) if ``failure`` says they were
        a wrong guess."""
        if failure not in self.GUESSES:
            return
        guess = hashlib.blake2b(credentials.encode("utf-8", "surrogateescape"), key=self._salt,
                                digest_size=8).digest()
        key = client or ""
        with self._lock:
            now = self.clock()
            known = self._guesses.get(key)
            began, seen = known if known is not None else (now, set())
            if known is None or now - began >= self.period_s:
                if known is None and len(self._guesses) >= self.max_clients:
                    for stale in [k for k, (b, _) in self._guesses.items() if now - b >= self.period_s]:
                        del self._guesses[stale]
                    if len(self._guesses) >= self.max_clients:
                        return  # not counted: see the class's documentation
                began, seen = now, set()
            if len(seen) < self.limit:
                seen.add(guess)
            self._guesses[key] = (began, seen)


def guess_limit_reached(guesses: GuessLimit) -> str:
    """Why a request of an address past the limit is refused (the audit's reason and the log's)."""
    return f"{guesses.limit} different wrong passwords or tokens from this address within {guesses.period_s:g} s"


def too_many_guesses(failure: str, wait_s: float) -> JSONResponse:
    """The 429 of a request from an address past :class:`GuessLimit`."""
    return JSONResponse({"detail": f"too many failed logins: {failure}; try again in {math.ceil(wait_s)} s"},
                        status_code=429, headers={"Retry-After": str(math.ceil(wait_s))})


class BasicAuth:
    """ASGI middleware: lets a request through with the right user and password or token, else 401.

    Its :class:`Authentication` of each request it checks is left in the scope (``AUTHENTICATION``) for the
    audit, which wraps it; each refusal is also a rate-limited warning (:class:`RefusalWarnings`)."""

    def __init__(
        self, app: ASGIApp, username: str, password: str, tokens: list[str], worker_tokens: WorkerTokens | None = None,
        trusted_proxies: Iterable[str] = (), warnings: RefusalWarnings | None = None,
        guesses: GuessLimit | None = None,
    ) -> None:
        self.app = app
        self.username = username
        self.expected = base64.b64encode(f"{username}:{password}".encode()).decode()
        self.tokens = list(tokens)
        self.worker_tokens = worker_tokens
        self.trusted = trusted_addresses(trusted_proxies)
        self.warnings = warnings or RefusalWarnings()
        self.guesses = guesses or GuessLimit()

    def authenticate(self, header: str, method: str = "GET", path: str = "/") -> Authentication:
        """Who the ``Authorization`` header names, or why it names no one this request is open to."""
        if not header:
            return Authentication("failed", failure="no credentials")
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "basic":
            try:
                base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                return Authentication("failed", failure="malformed basic credentials")
            if hmac.compare_digest(value.strip().encode("latin-1"), self.expected.encode("latin-1")):
                return Authentication("basic", self.username)
            return Authentication("failed", failure="wrong user or password")
        if scheme.lower() == "bearer":
            # as bytes: compare_digest refuses str with a character beyond ASCII (probe 27: a 500 and a traceback
            # for each such header, not a refusal); the header is Latin-1, a token UTF-8
            given = value.strip().encode("latin-1")
            matched = [n for n, t in enumerate(self.tokens, 1) if hmac.compare_digest(given, t.encode())]
            if matched:
                return Authentication("token", f"token #{matched[0]}")
            worker = self.worker_tokens.worker(value) if self.worker_tokens is not None else None
            if worker is not None and worker_may(method, path):
                return Authentication("worker", worker)
            if worker is not None:
                return Authentication("failed", failure=f"worker {worker}'s token does not open this request")
            return Authentication("failed", failure="unknown bearer token")
        return Authentication("failed", failure="unsupported authentication scheme")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS or scope["path"].startswith("/api/queue/"):
            await self.app(scope, receive, send)  # the claim API: ClaimGate checks its workers' tokens first
            return
        header = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"authorization"), "")
        client = requester(scope, self.trusted).client
        wait_s = self.guesses.wait_s(client) if header else 0.0
        if wait_s > 0:
            failure = guess_limit_reached(self.guesses)
            scope[AUTHENTICATION] = Authentication("failed", failure=failure, status=429)
            self.warnings.refused(client, scope["method"], scope["path"], failure)
            await too_many_guesses(failure, wait_s)(scope, receive, send)
            return
        authentication = self.authenticate(header, scope["method"], scope["path"])
        scope[AUTHENTICATION] = authentication  # in place: the audit around this middleware reads it
        worker = authentication.user if authentication.kind == "worker" else None
        if worker is not None and scope["path"].startswith("/dicom-web/"):  # a worker reads only what it holds
            reason = await run_in_threadpool(worker_refusal, store_in(scope), worker, scope["method"], scope["path"])
            if reason is not None:
                scope[AUTHENTICATION] = Authentication("worker", worker, failure=reason)
                self.warnings.refused(client, scope["method"], scope["path"], reason, "request refused")
                await JSONResponse({"detail": reason}, status_code=403)(scope, receive, send)
                return
        if authentication.accepted:
            await self.app(scope, receive, send)
            return
        self.guesses.failed(client, authentication.failure, header)
        self.warnings.refused(client, scope["method"], scope["path"], authentication.failure or "refused")
        response = JSONResponse(
            {"detail": "authentication required"},
            status_code=401,
            headers={"WWW-Authenticate": 'Basic realm="uronode", charset="UTF-8"'},
        )
        await response(scope, receive, send)
