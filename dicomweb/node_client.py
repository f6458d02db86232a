"""The node's HTTP side as a remote worker uses it: the claim API and WADO-RS, with a worker's token.

Standard library only. A node that does not answer (restarting, the network
cut) is asked again with backoff for up to ``patience_s`` before
:class:`NodeUnreachable`; a 409 is :class:`Refused` (the job is done, stale or
held by another claim: the worker drops it), a 401 :class:`Unauthorized`.
Results go back by STOW-RS through :func:`dicomweb.stow_client.stow`.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from dicomweb.stow_client import StowResult, stow
from uronode.types import DocumentReference

RETRY_STATUSES = (429, 502, 503, 504)
"""Answers asked again within the client's patience: the node busy or restarting, or (429) its address locked
for a while after wrong guesses from it (``dicomweb.auth.GuessLimit``; asked again after ``Retry-After``)."""


class NodeUnreachable(ConnectionError):
    """The node did not answer within the client's patience."""


class Refused(Exception):
    """The node answered 404, 409 or 422: the claim, heartbeat or completion is not accepted; says why."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"HTTP {status}: {detail}")
        self.status = status
        self.detail = detail


class Unauthorized(Exception):
    """The node does not know this worker's token (HTTP 401)."""


@dataclass(frozen=True, slots=True)
class ClaimReply:
    token: str
    lease_s: float
    job_id: int
    study_instance_uid: str
    series_instance_uid: str
    generation: int
    model: str
    attempts: int
    reports: tuple[tuple[str, DocumentReference], ...] = ()
    """The series' current reports, each with the model ("name version") that made it."""
    rejected: frozenset[str] = frozenset()
    """UIDs of the series' earlier results that a rejection note may name: the new results must not take them."""


SERIES_ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'
"""What a remote worker asks for a series in: as stored. The worker decodes any syntax; without ``*`` the
node would re-encode every compressed instance as Explicit VR Little Endian (PS3.18's default), the very
work remote workers take off it, and refuse a series it cannot re-encode (Big Endian) with 406."""


class NodeClient:
    def __init__(self, base_url: str, token: str, *, timeout_s: float = 120.0, patience_s: float = 120.0) -> None:
        self.base = base_url.rstrip("/")
        self.token = token
        self.timeout_s = timeout_s
        self.patience_s = patience_s

    def _open(self, method: str, path: str, body: Any = None, accept: str = "application/json") -> Any:
        """The response (to be closed by the caller), asking again while the node does not answer."""
        headers = {"Authorization": f"Bearer {self.token}", "Accept": accept}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        deadline = time.monotonic() + self.patience_s
        wait = 0.2
        while True:
            request = urllib.request.Request(self.base + path, data=data, headers=headers, method=method)
            try:
                return urllib.request.urlopen(request, timeout=self.timeout_s)
            except urllib.error.HTTPError as exc:
                detail = exc.read().decode(errors="replace")[:500]
                if exc.code == 401:
                    raise Unauthorized(f"{method} {path}: {detail}") from None
                if exc.code in (403, 404, 409, 422):  # 403: a claim without its message's key, a study not held
                    try:
                        detail = str(json.loads(detail).get("detail", detail))
                    except (ValueError, AttributeError):
                        pass
                    raise Refused(exc.code, detail) from None
                if exc.code not in RETRY_STATUSES:
                    raise RuntimeError(f"{method} {path}: HTTP {exc.code}: {detail}") from None
                problem = f"HTTP {exc.code}: {detail}"
                after = exc.headers.get("Retry-After", "") if exc.headers else ""
                if after.isdigit():  # the node says when: not sooner (review 31: a 429 failed the worker's job)
                    wait = max(wait, min(float(after), 60.0))
            except (urllib.error.URLError, OSError) as exc:
                problem = str(exc)
            if time.monotonic() + wait > deadline:
                raise NodeUnreachable(f"{method} {self.base}{path}: {problem}")
            time.sleep(wait)
            wait = min(wait * 2, 5.0)

    def _json(self, method: str, path: str, body: Any = None) -> Any:
        with self._open(method, path, body) as response:
            return json.loads(response.read() or b"null")

    def whoami(self) -> str:
        """The worker name the node knows this token by (:class:`Unauthorized` for a token it does not know)."""
        return str(self._json("GET", "/api/queue/worker")["worker"])

    def claim(self, job_id: int, generation: int, key: str) -> ClaimReply:
        reply = self._json("POST", f"/api/queue/jobs/{job_id}/claim", {"generation": generation, "key": key})
        job = reply["job"]
        return ClaimReply(
            token=reply["claim"], lease_s=float(reply["lease_s"]), job_id=int(job["id"]),
            study_instance_uid=job["study_instance_uid"], series_instance_uid=job["series_instance_uid"],
            generation=int(job["generation"]), model=job["model"], attempts=int(job["attempts"]),
            reports=tuple((str(r["model"]), DocumentReference(r["study_instance_uid"], r["series_instance_uid"],
                                                             r["sop_class_uid"], r["sop_instance_uid"]))
                          for r in reply.get("reports", ())),  # a node of before 2026-12-06 sends none
            rejected=frozenset(str(u) for u in reply.get("rejected", ())),  # nor does one of before 2026-12-07
        )

    def heartbeat(self, job_id: int, claim: str) -> float:
        return float(self._json("POST", f"/api/queue/jobs/{job_id}/heartbeat", {"claim": claim})["lease_until"])

    def complete(
        self, job_id: int, claim: str, results: Sequence[str], findings: dict[str, Any], seconds: float | None
    ) -> str:
        body = {"claim": claim, "results": list(results), "findings": findings, "seconds": seconds}
        return str(self._json("POST", f"/api/queue/jobs/{job_id}/complete", body)["state"])

    def fail(self, job_id: int, claim: str, reason: str) -> None:
        self._json("POST", f"/api/queue/jobs/{job_id}/fail", {"claim": claim, "reason": reason[:2000]})

    def give_back(self, job_id: int, claim: str, reason: str) -> None:
        """The job back to the node's queue, the try not counted (its results refused for the node's disk)."""
        self._json("POST", f"/api/queue/jobs/{job_id}/give-back", {"claim": claim, "reason": reason[:2000]})

    def retrieve_series(self, study: str, series: str, folder: Path) -> list[Path]:
        """WADO-RS: every instance of the series, each written to a file in ``folder``."""
        folder.mkdir(parents=True, exist_ok=True)
        with self._open("GET", f"/dicom-web/studies/{study}/series/{series}", accept=SERIES_ACCEPT) as response:
            boundary = _boundary(response.headers.get("Content-Type", ""))
            return _write_parts(response, boundary, folder)

    def store(self, files: Sequence[tuple[Path, str]]) -> list[StowResult]:
        """STOW-RS ``(path, SOP Instance UID)`` pairs to the node; one result per file.

        What the node did not take because it did not answer is sent again (storing an identical
        instance again is a success) until it does, or for ``patience_s``."""
        deadline = time.monotonic() + self.patience_s
        wait = 0.2
        while True:
            results = stow(f"{self.base}/dicom-web/studies", files, token=self.token, timeout_s=self.timeout_s)
            if not any(r.unreachable for r in results) or time.monotonic() + wait > deadline:
                return results
            time.sleep(wait)
            wait = min(wait * 2, 5.0)


def _boundary(content_type: str) -> bytes:
    for item in content_type.split(";"):
        key, _, value = item.strip().partition("=")
        if key.lower() == "boundary" and value:
            return value.strip('"').encode()
    raise ValueError(f"the WADO-RS response names no boundary: {content_type[:200]!r}")


def _write_parts(stream: BinaryIO, boundary: bytes, folder: Path) -> list[Path]:
    """Each part of a multipart/related body that gives its Content-Length (the node's WADO-RS does)."""
    paths: list[Path] = []
    delimiter = b"--" + boundary
    while True:
        raw = stream.readline()
        if not raw:
            raise ValueError("the WADO-RS body ended before its closing delimiter")
        line = raw.rstrip(b"\r\n")
        if not line:
            continue  # the CRLF closing the previous part
        if line == delimiter + b"--":
            return paths
        if line != delimiter:
            raise ValueError(f"the WADO-RS body has {line[:60]!r} where a part should start")
        length = None
        while (header := stream.readline().rstrip(b"\r\n")) != b"":
            name, _, value = header.decode("latin-1").partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
        if length is None:
            raise ValueError("a WADO-RS part has no Content-Length")
        path = folder / f"{len(paths) + 1:05d}.dcm"
        with path.open("wb") as out:
            remaining = length
            while remaining:
                chunk = stream.read(min(remaining, 1 << 20))
                if not chunk:
                    raise ValueError("the WADO-RS body ended inside a part")
                out.write(chunk)
                remaining -= len(chunk)
        paths.append(path)
