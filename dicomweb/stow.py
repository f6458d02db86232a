"""STOW-RS (PS3.18 10.5): store instances sent over HTTP, through the same store and completion path as C-STORE.

The response names every instance: ReferencedSOPSequence for those stored
(with WarningReason B007 for one stored with a warning, such as excess pixel
data), FailedSOPSequence with a FailureReason (A700 out of resources, A900
data set does not match, C000 cannot understand) for the others. Status 200
when all were stored without warnings, 202 when some were stored and others
failed or warned, 409 when none; 415 for a body that is not multipart/related
with parts of type exactly ``application/dicom`` (metadata and bulk data,
``application/dicom+xml`` or ``+json``, is not taken), 413 above the size
limit, 400 for a study in the path that is not a UID and for a broken body
(no boundary, no part, a part without headers, no closing delimiter): nothing
of those is stored. The response's RetrieveURL (0008,1190, Type 2) is the
study's: the one the path names, or the one study of all instances stored;
empty otherwise. What went wrong with each part is also said in words, in
one ``Warning`` header (``299 uronode "part 2: ..."``, PS3.18 8.4.2).

A remote worker stores only into the study of a job it holds
(:func:`dicomweb.auth.worker_refusal` checks a study in the path before the
body is read). Without a study in the path, its parts must all name one
study, and one it holds; that study is then the request's, so each part is
held to it as a STOW-RS into that study is (A900 otherwise). And every part
must be one of the node's results: made by uronode, of a result class (SEG,
Secondary Capture, SR, key objects), replacing no received instance and in
no series of received images (probe 20: a worker's token replaced a source
CT's pixels and added a series of its own). Anything else is a 403 saying
why, and nothing is stored.

A sender's request is an association of its own for series completion
(:meth:`uronode.associations.Associations.open`, ``hold_series``), open from
its start until it is answered (released, a refusal of its body included) or
its body is cut off or the node fails it (aborted): a series sent in several
requests waits for the last one, not for a pause while the next one's body
uploads.

The body goes to a spool file in the data area as it arrives
(:mod:`dicomweb.multipart`), and each part is taken in as a C-STORE is
(:func:`uronode.ingest.take_instance`: read, checked, fsynced, indexed) in
the thread pool: a large STOW holds no memory and
never blocks the event loop. A body the disk cannot take twice (the spool,
then the instances) is still read to the end, and each of its parts fails
with out of resources.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse
from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from python_multipart.multipart import parse_options_header
from starlette.concurrency import run_in_threadpool

from dicomweb.auth import AUTHENTICATION, Authentication, requester, trusted_addresses
from dicomweb.deps import StoreDep
from dicomweb.multipart import (
    BodyTooLarge,
    MalformedMultipart,
    MultipartSpool,
    SpooledPart,
    boundary_of,
    open_spool,
    spool_request,
)
from uronode.associations import Associations
from uronode.claims import holds
from uronode.completion import NORMAL_END, OWN_MANUFACTURER
from uronode.dicomfile import is_valid_uid
from uronode.errors import InvalidInstance, OutOfResources
from uronode.header import read_instance, to_file_format
from uronode.ingest import Expected, Verdict, take_instance
from uronode.settings import Settings
from uronode.store import Store
from uronode.supersede import STRUCTURED_REPORT_PREFIX
from uronode.types import InstanceHeader

router = APIRouter(prefix="/dicom-web", tags=["STOW-RS"])

MAX_BODY_BYTES = 4 * 1024**3
OUT_OF_RESOURCES, DOES_NOT_MATCH, CANNOT_UNDERSTAND = 0xA700, 0xA900, 0xC000
_NOT_HEADER_TEXT = re.compile(r"[^\x20-\x7e\xa0-\xff]")
"""What a header value may not hold (control characters, beyond Latin-1): replaced by '?'."""
STOW_RS = "STOW-RS"
"""What brought an instance (the index's calling AE of it), and the calling AE a request is recorded under as an
association (with the user who authenticated)."""
SEND_DICOM = 'send multipart/related; type="application/dicom"'


WARNING_DATA_SET_DOES_NOT_MATCH = 0xB007
RESULT_SOP_CLASSES = frozenset({"1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.7"})
"""SEG and Secondary Capture: with the SR classes (``STRUCTURED_REPORT_PREFIX``, key objects among them), what
the node's writers make, and so all that a remote worker's token may store."""


def _ref(
    sop_class: str | None, sop: str | None, reason: int | None = None, url: str | None = None,
    warning: int | None = None,
) -> dict[str, Any]:
    item: dict[str, Any] = {}
    if sop_class:
        item["00081150"] = {"vr": "UI", "Value": [sop_class]}
    if sop:
        item["00081155"] = {"vr": "UI", "Value": [sop]}
    if reason is not None:
        item["00081197"] = {"vr": "US", "Value": [reason]}
    if warning is not None:
        item["00081196"] = {"vr": "US", "Value": [warning]}
    if url:
        item["00081190"] = {"vr": "UR", "Value": [url]}
    return item


def _warning_header(notes: list[str]) -> dict[str, str]:
    """One ``Warning`` header (RFC 7234 5.5, as PS3.18 uses it) saying what went wrong with each part."""
    if not notes:
        return {}
    if len(notes) > 20:
        notes = [*notes[:20], f"and {len(notes) - 20} more"]
    texts = [_NOT_HEADER_TEXT.sub("?", note).replace("\\", "/").replace('"', "'") for note in notes]
    return {"Warning": ", ".join(f'299 uronode "{text}"' for text in texts)}


def _check_content_type(content_type: str) -> None:
    """415 unless the body is multipart/related of parts of type exactly application/dicom (PS3.18 10.5.1)."""
    media, params = parse_options_header(content_type)
    part_type = params.get(b"type", b"").decode("latin-1").strip().lower()
    if media != b"multipart/related" or not part_type:
        raise HTTPException(415, detail=SEND_DICOM)
    if part_type != "application/dicom":
        raise HTTPException(415, detail=f"{SEND_DICOM}: the node takes DICOM files only, not metadata and bulk "
                                        f"data or other parts ({part_type[:60]})")


async def _store(request: Request, store: StoreDep, study: str | None) -> JSONResponse:
    if study is not None and not is_valid_uid(study):
        raise HTTPException(400, detail=f"the study in the path, {study[:80]!r}, is not a UID")
    content_type = request.headers.get("content-type", "")
    _check_content_type(content_type)
    boundary = boundary_of(content_type)
    if boundary is None:
        raise HTTPException(400, detail="the Content-Type names no boundary")
    length = request.headers.get("content-length")
    size = int(length) if length is not None and length.isdigit() else None
    if size is not None and size > MAX_BODY_BYTES:
        raise HTTPException(413, detail=f"the body is larger than {MAX_BODY_BYTES} bytes")
    base = str(request.base_url).rstrip("/") + "/dicom-web"
    try:
        spool = await run_in_threadpool(open_spool, store, boundary, size)
    except MalformedMultipart as exc:
        raise HTTPException(400, detail=str(exc)) from exc
    authentication: Authentication | None = request.scope.get(AUTHENTICATION)
    worker = authentication.user if authentication is not None and authentication.kind == "worker" else None
    # a sender's request, an association of its own from now on: its series wait for it (a remote worker's
    # results are no received series)
    association = None if worker is not None else await run_in_threadpool(open_request, request, store, authentication)
    # a body cut off (the client gone) or an error of the node: its series wait for the quiet period; one answered,
    # refused for what it is (4xx: nothing of it was stored) or not, ends as a release (review 38)
    outcome = "aborted"
    try:
        parts = await spool_request(request, spool, MAX_BODY_BYTES)
        if worker is not None:
            try:
                study = await run_in_threadpool(_worker_study, store, spool, parts, worker, study)
            except WorkerRefused as exc:  # audited with its reason, as the middleware's refusals are
                request.scope[AUTHENTICATION] = Authentication("worker", worker, failure=str(exc))
                raise HTTPException(403, detail=str(exc)) from exc
        response = await run_in_threadpool(_store_parts, store, spool, parts, study, base, association)
        outcome = NORMAL_END
        return response
    except MalformedMultipart as exc:
        outcome = NORMAL_END
        raise HTTPException(400, detail=str(exc)) from exc
    except BodyTooLarge as exc:
        outcome = NORMAL_END
        raise HTTPException(413, detail=str(exc)) from exc
    finally:
        await run_in_threadpool(spool.close)
        if association is not None:
            await run_in_threadpool(Associations(store.db).close, association, outcome)


def open_request(request: Request, store: Store, authentication: Authentication | None, *, caller: str = STOW_RS,
                 hold_series: bool = True) -> int | None:
    """The request recorded as an association of ``caller`` (and who authenticated) from its client's address
    (:meth:`Associations.open`): the series it stores wait for it to end. A STOW-RS request also holds the series
    that sender's earlier requests left receiving (``hold_series``); an upload to ``/api/predict`` completes its
    own series when it ends (probe 48: a series whose files lay far apart in a CD's upload was completed, analysed
    and delivered half-received while the rest was still being stored). None when the index is full (each part
    then fails as out of resources)."""
    settings: Settings | None = getattr(request.app.state, "settings", None)
    trusted = trusted_addresses(settings.dicomweb.trusted_proxies) if settings is not None else frozenset()
    client = requester(request.scope, trusted).client or "unknown"
    user = authentication.user if authentication is not None and authentication.accepted else None
    grace_s = settings.scp.completion_grace_s if settings is not None else 0.0
    try:
        return Associations(store.db).open(f"{caller} {user}" if user else caller, client, hold_series=hold_series,
                                           grace_s=grace_s)
    except OutOfResources:
        return None


class WorkerRefused(Exception):
    """A remote worker's STOW-RS goes outside the studies of the jobs it holds (HTTP 403); says why."""


def _worker_study(store: Store, spool: MultipartSpool, parts: list[SpooledPart], worker: str,
                  study: str | None) -> str | None:
    """The one study ``worker``'s parts name (``study``, where the path names it), if it holds a job in it; else
    :class:`WorkerRefused`. None when the spool lost the body (every part then fails with out of resources and
    nothing is stored). Every part must be one of the node's results (:func:`_not_a_result`): a worker's token
    stores what the node's writers make, never received images (probe 20)."""
    if spool.lost is not None:
        return study
    studies: set[str] = set()
    for number, part in enumerate(parts, start=1):
        if part.content_type == "application/dicom":
            with spool.content(part) as content:
                header = _header_of(content)
                refusal = _not_a_result(store, header, worker, content) if header is not None else None
            if header is not None:
                studies.add(header.study_instance_uid)
                if refusal is not None:
                    raise WorkerRefused(f"worker {worker}: part {number} ({header.sop_instance_uid[:80]}) {refusal}")
    if study is not None:
        return study  # the path's study: the authentication layer checked the claim, each part is held to it
    if not studies:
        raise WorkerRefused(f"worker {worker}: no part names a study it could store into")
    if len(studies) > 1:
        raise WorkerRefused(f"worker {worker}: its parts name {len(studies)} studies; "
                            "a worker stores into one study at a time")
    (study,) = studies
    if not holds(store, worker, study):
        raise WorkerRefused(f"worker {worker} holds no job in study {study[:80]}")
    return study


def _not_a_result(store: Store, header: InstanceHeader, worker: str, content: bytes | memoryview) -> str | None:
    """Why an instance a worker sends is none of the node's results, or None: results are made by the node
    (Manufacturer ``uronode``), of a result class (SEG, Secondary Capture, SR, key objects), and neither
    replace a received instance nor join a series of received images; nor replace another analysis's
    result (one recorded for a series the worker holds no job on, or made by another model: review 23)."""
    if header.manufacturer != OWN_MANUFACTURER:
        return f"is not made by uronode (Manufacturer {header.manufacturer[:64]!r}): a worker stores only results"
    if header.sop_class_uid not in RESULT_SOP_CLASSES and not header.sop_class_uid.startswith(STRUCTURED_REPORT_PREFIX):
        return f"is of SOP class {header.sop_class_uid[:64]}, which is no result's: a worker stores only results"
    if store.conn().execute("SELECT 1 FROM rejected WHERE sop_instance_uid = ?",
                            (header.sop_instance_uid,)).fetchone() is not None:
        # a worker of before 2026-12-07 makes such results again under the UIDs a rejection note named (review 36:
        # refused only at completion, its results stayed in the node's store and its job failed a lease later)
        return ("takes the UID of a result withdrawn or superseded earlier, which a rejection note may name: "
                "upgrade the worker (it gives such results other UIDs)")
    existing = store.get_instance(header.sop_instance_uid)
    if existing is not None and existing.header.manufacturer != OWN_MANUFACTURER:
        return "would replace a received instance: a worker stores only results"
    recorded = store.conn().execute("SELECT source_series_uid, model FROM results WHERE sop_instance_uid = ?",
                                    (header.sop_instance_uid,)).fetchone() if existing is not None else None
    if recorded is not None and not (holds(store, worker, series=recorded["source_series_uid"])
                                     and recorded["model"] == _model_of_part(content)):
        return "would replace a result of another analysis: a worker stores only its own job's results"
    received = store.conn().execute(
        "SELECT 1 FROM instances WHERE series_instance_uid = ? AND manufacturer != ? LIMIT 1",
        (header.series_instance_uid, OWN_MANUFACTURER)).fetchone()
    if received is not None:
        return "is in a series of received images: a worker stores only results, in series of their own"
    return None


def _model_of_part(content: bytes | memoryview) -> str:
    """The model that made a result ("name version", as the results table names it: ManufacturerModelName and the
    first of SoftwareVersions), or "" when the part does not say."""
    try:
        whole = content if len(content) >= 132 and content[128:132] == b"DICM" else to_file_format(content)
        ds = dcmread(io.BytesIO(bytes(whole)), stop_before_pixels=True,
                     specific_tags=["ManufacturerModelName", "SoftwareVersions"])
    except (InvalidInstance, InvalidDicomError, ValueError, OSError, EOFError):
        return ""
    versions = ds.get("SoftwareVersions")
    version = (versions[0] if isinstance(versions, MultiValue) else versions) if versions else ""
    name = str(ds.get("ManufacturerModelName", "") or "")
    return f"{name} {version}" if name and version else ""


def _header_of(content: bytes | memoryview) -> InstanceHeader | None:
    """A part's header, read as it will be taken in; None when it cannot be read (the part then fails as it
    would have: held to the request's study, it cannot be stored elsewhere)."""
    try:
        whole = content if len(content) >= 132 and content[128:132] == b"DICM" else to_file_format(content)
        header, _ = read_instance([whole])
    except InvalidInstance:
        return None
    return header


def _store_parts(
    store: Store, spool: MultipartSpool, parts: list[SpooledPart], study: str | None, base: str,
    association: int | None = None,
) -> JSONResponse:
    """Store each part (in the thread pool: this fsyncs and commits) and answer as PS3.18 says."""
    stored, failed, notes = [], [], []
    studies: set[str] = set()
    warned = False
    for number, part in enumerate(parts, start=1):
        if part.content_type != "application/dicom":
            failed.append(_ref(None, None, CANNOT_UNDERSTAND))
            notes.append(f"part {number}: {part.content_type or 'no type'}, not application/dicom")
            continue
        if spool.lost is not None:
            failed.append(_ref(None, None, OUT_OF_RESOURCES))
            notes.append(f"part {number}: {spool.lost}")
            continue
        with spool.content(part) as content:
            outcome = _store_part(store, content, study, base, association)
        if outcome.note is not None:
            notes.append(f"part {number}: {outcome.note}")
        if outcome.study is None:
            failed.append(outcome.item)
        else:
            stored.append(outcome.item)
            studies.add(outcome.study)
            warned = warned or outcome.warned
    retrieve_study = study if study is not None else next(iter(studies)) if len(studies) == 1 else None
    response: dict[str, Any] = {  # in tag order, as DICOM JSON lists them
        "00081190": {"vr": "UR", "Value": [f"{base}/studies/{retrieve_study}"]} if retrieve_study else {"vr": "UR"},
    }
    if failed:
        response["00081198"] = {"vr": "SQ", "Value": failed}
    if stored:
        response["00081199"] = {"vr": "SQ", "Value": stored}
    status = 200 if not failed and not warned else 202 if stored else 409
    return JSONResponse(response, status_code=status, media_type="application/dicom+json",
                        headers=_warning_header(notes))


@dataclass(frozen=True)
class _Outcome:
    """One part taken in or not: its item of the response, what to say about it, and where it went."""

    item: dict[str, Any]
    note: str | None
    warned: bool
    study: str | None
    """The study it was stored in; None when it was not stored."""


_FAILURE_REASONS = {
    Verdict.CANNOT_UNDERSTAND: CANNOT_UNDERSTAND,
    Verdict.DOES_NOT_MATCH: DOES_NOT_MATCH,
    Verdict.OUT_OF_RESOURCES: OUT_OF_RESOURCES,
}


def _store_part(store: Store, content: bytes | memoryview, study: str | None, base: str,
                association: int | None = None) -> _Outcome:
    """One application/dicom part taken in as a C-STORE is (one of the node's results the node holds already, a
    remote worker's job run again among them, keeps the node's copy: ``Store.put``)."""
    report = take_instance(store, [content], source=STOW_RS, bare_data_sets=True,
                           expected=Expected(study_instance_uid=study), association_id=association)
    header = report.header
    sop_class, sop = (header.sop_class_uid, header.sop_instance_uid) if header is not None else (None, None)
    if not report.stored or header is None:
        reason = _in_words(report.reason or report.verdict.value, len(content))
        return _Outcome(_ref(sop_class, sop, _FAILURE_REASONS[report.verdict]), reason, False, None)
    url = f"{base}/studies/{header.study_instance_uid}/series/{header.series_instance_uid}" \
          f"/instances/{header.sop_instance_uid}"
    warned = report.verdict is Verdict.STORED_WITH_WARNING
    item = _ref(sop_class, sop, url=url, warning=WARNING_DATA_SET_DOES_NOT_MATCH if warned else None)
    return _Outcome(item, f"stored with a warning: {report.reason}" if warned else None, warned,
                    header.study_instance_uid)


def _in_words(reason: str, size: int) -> str:
    """Why a part was refused, an empty part said as such."""
    return "not a DICOM data set: the part is empty (0 bytes)" if size == 0 else reason


@router.post("/studies", summary="Store instances")
async def store_instances(request: Request, store: StoreDep) -> JSONResponse:
    return await _store(request, store, None)


@router.post("/studies/{study}", summary="Store instances into a study")
async def store_study_instances(study: str, request: Request, store: StoreDep) -> JSONResponse:
    return await _store(request, store, study)
