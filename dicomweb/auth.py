"""HTTP authentication: basic (user and password) or bearer tokens, on every path but health.

Browsers ask for the password once and send it with every same-origin
request, OHIF's DICOMweb requests included, so the viewer needs no
credentials in its configuration. A failure is a 401 with
``WWW-Authenticate: Basic``.

A remote worker's token (``queue.worker_tokens_file``) opens only what a worker
needs: reading series (``GET /dicom-web/...``), storing results (STOW-RS,
``POST /dicom-web/studies``) and the claim API (``/api/queue/...``).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import os
import re
import secrets
from pathlib import Path

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from uronode.claims import WorkerTokens
from uronode.settings import Settings

log = logging.getLogger(__name__)

OPEN_PATHS = ("/healthz", "/readyz")
PASSWORD_FILE = "http-password"
STOW_PATH = re.compile(r"^/dicom-web/studies(/[^/]+)?$")


def worker_may(method: str, path: str) -> bool:
    """What a remote worker's token opens: read series, store results, claim and complete jobs."""
    if path.startswith("/api/queue/"):
        return True
    if method in ("GET", "HEAD") and path.startswith("/dicom-web/"):
        return True
    return method == "POST" and STOW_PATH.match(path) is not None


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
    log.warning("HTTP user %r; its password was made and stored in %s", settings.dicomweb.username, path)
    return password


class BasicAuth:
    """ASGI middleware: lets a request through with the right user and password or token, else 401."""

    def __init__(
        self, app: ASGIApp, username: str, password: str, tokens: list[str], worker_tokens: WorkerTokens | None = None
    ) -> None:
        self.app = app
        self.expected = base64.b64encode(f"{username}:{password}".encode()).decode()
        self.tokens = list(tokens)
        self.worker_tokens = worker_tokens

    def allowed(self, header: str, method: str = "GET", path: str = "/") -> bool:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "basic":
            try:
                base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                return False
            return hmac.compare_digest(value.strip(), self.expected)
        if scheme.lower() == "bearer":
            if any(hmac.compare_digest(value.strip(), t) for t in self.tokens):
                return True
            return (
                self.worker_tokens is not None and worker_may(method, path)
                and self.worker_tokens.worker(value) is not None
            )
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if scope["path"].startswith("/api/queue/") or self.allowed(
            headers.get("authorization", ""), scope["method"], scope["path"]
        ):  # the claim API checks its workers' tokens itself
            await self.app(scope, receive, send)
            return
        response = JSONResponse(
            {"detail": "authentication required"},
            status_code=401,
            headers={"WWW-Authenticate": 'Basic realm="uronode", charset="UTF-8"'},
        )
        await response(scope, receive, send)
