"""STOW-RS client (PS3.18 10.5): send stored instances to a DICOMweb server and read its verdict on each.

Uses only the standard library. One request carries a batch of instances as
``multipart/related; type="application/dicom"``; the response's
ReferencedSOPSequence and FailedSOPSequence (DICOM JSON) say which were
stored. An HTTP error, or an instance the server does not mention, is a failure.
"""

from __future__ import annotations

import base64
import json
import secrets
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from uronode.settings import url_for_people

REFERENCED_SOP_SEQUENCE = "00081199"
FAILED_SOP_SEQUENCE = "00081198"
REFERENCED_SOP_INSTANCE_UID = "00081155"
FAILURE_REASON = "00081197"
OUT_OF_RESOURCES = 0xA700
"""The FailureReason of an instance refused for want of the server's resources (PS3.18 I.2.2: A7xx)."""


@dataclass(frozen=True, slots=True)
class StowResult:
    sop_instance_uid: str
    ok: bool
    reason: str | None
    unreachable: bool = False
    """The server did not answer (no connection, or 502, 503, 504): trying again later may succeed."""
    out_of_resources: bool = False
    """The server refused it for want of resources (FailureReason A700): trying again later may succeed."""


def multipart_body(paths: Sequence[Path], boundary: str) -> bytes:
    """A STOW-RS request body: each file as one ``application/dicom`` part."""
    parts = []
    for path in paths:
        parts.append(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode())
        parts.append(path.read_bytes())
        parts.append(b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts)


def _uids_in(body: dict[str, object], sequence: str) -> dict[str, object]:
    """SOP Instance UID -> its FailureReason (None where the item gives none) of each item of ``sequence``; an
    item that names no instance is keyed ``#n``."""
    found: dict[str, object] = {}
    element = body.get(sequence)
    if not isinstance(element, dict):
        return found
    for item in element.get("Value", []) or []:
        if not isinstance(item, dict):
            continue
        uid = (item.get(REFERENCED_SOP_INSTANCE_UID) or {}).get("Value", [None])[0]
        reason = (item.get(FAILURE_REASON) or {}).get("Value", [None])[0]
        found[str(uid) if uid else f"#{len(found)}"] = reason  # "#n": an item that names no instance
    return found


def stow(
    url: str,
    files: Sequence[tuple[Path, str]],
    *,
    username: str | None = None,
    password: str | None = None,
    token: str | None = None,
    timeout_s: float = 60.0,
) -> list[StowResult]:
    """POST ``(path, SOP Instance UID)`` pairs to ``url`` (the studies endpoint); one result per file, in order."""
    if not files:
        return []
    boundary = secrets.token_hex(16)
    try:
        body = multipart_body([p for p, _ in files], boundary)
    except OSError as exc:
        return [StowResult(uid, False, f"cannot read the files to send: {exc}") for _, uid in files]
    headers = {
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
        "Accept": "application/dicom+json",
    }
    if token:
        headers["Authorization"] = f"Bearer {token}"
    elif username is not None:
        pair = f"{username}:{password or ''}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
    parts = urlsplit(url)  # the studies endpoint: /studies after the path, a query kept after it (review 52)
    path = parts.path.rstrip("/")
    endpoint = urlunsplit(parts._replace(path=path if path.endswith("/studies") else f"{path}/studies", fragment=""))
    request = urllib.request.Request(endpoint, data=body, headers=headers, method="POST")
    url = url_for_people(url)  # as the reasons below name it: a token in its query left out
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            status, payload = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, payload = exc.code, exc.read()
        if status != 409:  # 409: none stored; the body still says why for each
            why = _detail(payload)
            return [StowResult(uid, False, f"STOW-RS to {url} answered HTTP {status}{f': {why}' if why else ''}",
                               status in (502, 503, 504))
                    for _, uid in files]
    except (urllib.error.URLError, OSError) as exc:
        return [StowResult(uid, False, f"STOW-RS to {url} failed: {exc}", True) for _, uid in files]
    try:
        verdict = json.loads(payload) if payload else {}
    except ValueError:
        verdict = {}
    if isinstance(verdict, list):  # some servers wrap the response data set in a list
        verdict = verdict[0] if verdict else {}
    stored = _uids_in(verdict, REFERENCED_SOP_SEQUENCE)
    failed = _uids_in(verdict, FAILED_SOP_SEQUENCE)
    # a body refused whole for want of space before its parts were read (the node's spool) names no instance
    unnamed = {code for key, code in failed.items() if key.startswith("#")}
    results = []
    for _, uid in files:
        if uid in failed:
            code = failed[uid]
            results.append(StowResult(uid, False, f"STOW-RS to {url}: " + (
                "failed" if code is None else f"failure reason {code}"), out_of_resources=code == OUT_OF_RESOURCES))
        elif uid in stored:
            results.append(StowResult(uid, True, None))
        elif unnamed == {OUT_OF_RESOURCES} and not stored:
            results.append(StowResult(uid, False, f"STOW-RS to {url}: failure reason {OUT_OF_RESOURCES} (the "
                                                  "server's resources) for the whole request", out_of_resources=True))
        else:
            results.append(StowResult(uid, False, f"STOW-RS to {url} answered HTTP {status} without this instance"))
    return results


def _detail(payload: bytes) -> str:
    """The reason an error response gives (a JSON ``detail``, as uronode and FastAPI answer), shortened; "" where
    it gives none (a worker refused by the node says why in its job's reason: review 36)."""
    try:
        detail = json.loads(payload).get("detail")
    except (ValueError, AttributeError):
        return ""
    return str(detail)[:300] if isinstance(detail, str) else ""
