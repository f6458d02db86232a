"""The REST API: the paper's predict endpoint, done properly, and the jobs.

``POST /api/predict`` takes DICOM files (multipart/form-data, field
``files``, one or many, e.g. a whole folder), takes them in as any received
instance (:func:`uronode.ingest.take_instance`), completes their series at once (the upload has ended) and returns
the jobs made for them, the files refused with the reason for each (400
when no file could be stored) and the files stored with a warning. The
model runs in the worker process, never here; ``GET /api/jobs/{id}`` gives
the state and, once run, the findings. The form is read as STOW-RS bodies
are (:mod:`dicomweb.multipart`): spooled to the data area as it arrives, then
stored in the thread pool, so that an upload of a whole series neither fills
the memory nor holds up other requests.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from starlette.concurrency import run_in_threadpool

from dicomweb.auth import AUTHENTICATION
from dicomweb.deps import StoreDep
from dicomweb.multipart import (
    NO_PARTS,
    BodyTooLarge,
    MalformedMultipart,
    MultipartSpool,
    SpooledPart,
    boundary_of,
    open_spool,
    spool_request,
)
from dicomweb.stow import open_request
from uronode import queries
from uronode.associations import Associations
from uronode.completion import NORMAL_END, UPLOAD, CompletionMonitor
from uronode.dicomfile import identity_value
from uronode.ingest import PICTURE_REFUSAL_PREFIX, Verdict, take_instance
from uronode.jobs import JobQueue
from uronode.outbox import Outbox
from uronode.settings import Settings
from uronode.store import Store
from uronode.supersede import superseded_by
from uronode.types import CompletedSeries, Job, JobState, SeriesDisposition, StoreOutcome

router = APIRouter(prefix="/api", tags=["API"])
log = logging.getLogger(__name__)

MAX_UPLOAD_BYTES = 2 * 1024**3
"""The largest upload ``/api/predict`` takes; the upload page is served with it (``dicomweb.upload``)."""
TOO_LARGE = f"uploads are limited to {MAX_UPLOAD_BYTES / 1024**3:g} GB"
STILL_RECEIVING = "still receiving: instances of this series arrived during the upload"


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def job_json(job: Job, queue: JobQueue) -> dict[str, Any]:
    """The job as ``GET /api/jobs/{id}`` gives it: its fields, its findings once it has run, and
    ``superseded_by``: the later job whose results replaced its own (the series re-opened by late instances and
    analysed again), or null; ``withdrawn`` (one of its fields): why its results were withdrawn (every image of
    its series sent again in another series), or null."""
    data = asdict(job)
    data["state"] = str(job.state)
    findings = queue.findings(job.id)
    data["findings"] = json.loads(findings) if findings else None
    data["superseded_by"] = None
    if job.state in (JobState.DELIVERED, JobState.DELIVERING, JobState.FAILED):
        data["superseded_by"] = superseded_by(queue.store.conn(), job.id, job.series_instance_uid, findings)
    return data


_FILES = "files"
_FORM = {
    "requestBody": {
        "required": True,
        "content": {"multipart/form-data": {"schema": {
            "type": "object",
            "required": [_FILES],
            "properties": {_FILES: {
                "type": "array", "items": {"type": "string", "format": "binary"},
                "description": "DICOM files (one, several or a folder)",
            }},
        }}},
    },
}
"""The form ``/api/predict`` takes, for the OpenAPI documentation (the handler reads the body itself)."""


def _no_files(index: int | None = None) -> RequestValidationError:
    """422 as FastAPI words it: no ``files`` field, or one of its entries is not a file."""
    if index is None:
        return RequestValidationError([{"type": "missing", "loc": ("body", _FILES), "msg": "Field required",
                                        "input": None}])
    return RequestValidationError([{"type": "value_error", "loc": ("body", _FILES, index),
                                    "msg": "Value error, Expected UploadFile, received: <class 'str'>",
                                    "input": None}])


@router.post("/predict", summary="Upload DICOM files and run the model on their series", openapi_extra=_FORM)
async def predict(
    request: Request,
    store: StoreDep,
    settings: Annotated[Settings, Depends(get_settings)],
) -> dict[str, Any]:
    """The form is spooled to the data area as it arrives and stored in the thread pool (see ``dicomweb.multipart``)."""
    length = request.headers.get("content-length")
    size = int(length) if length is not None and length.isdigit() else None
    if size is not None and size > MAX_UPLOAD_BYTES:
        raise HTTPException(413, detail=TOO_LARGE)
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise _no_files()
    boundary = boundary_of(content_type)
    if boundary is None:
        raise HTTPException(400, detail="the Content-Type names no boundary")
    try:
        spool = await run_in_threadpool(open_spool, store, boundary, size)
    except MalformedMultipart as exc:
        raise HTTPException(400, detail=str(exc)) from exc
    association = None
    outcome = "aborted"  # stored files of an upload cut short complete by the quiet rule
    try:
        parts = await spool_request(request, spool, MAX_UPLOAD_BYTES)
        # the upload, an association of its own while its files are stored: its series wait for it (probe 48)
        association = await run_in_threadpool(open_request, request, store, request.scope.get(AUTHENTICATION),
                                              caller=UPLOAD, hold_series=False)
        answer = await run_in_threadpool(_take_upload, store, settings, spool, parts, association)
        outcome = NORMAL_END
        return answer
    except MalformedMultipart as exc:
        if str(exc) == NO_PARTS:
            raise _no_files() from exc
        raise HTTPException(400, detail=str(exc)) from exc
    except BodyTooLarge as exc:
        raise HTTPException(413, detail=TOO_LARGE) from exc
    finally:
        await run_in_threadpool(spool.close)
        if association is not None:
            await run_in_threadpool(Associations(store.db).close, association, outcome)


def _take_upload(store: Store, settings: Settings, spool: MultipartSpool, parts: list[SpooledPart],
                 association: int | None = None) -> dict[str, Any]:
    """Store the uploaded files, complete their series, say what became of each (in the thread pool). The
    files are stored as ``association``'s, which holds their series until the upload ends: they are completed
    here, once every file is in, never by the completion loop half-way."""
    files: list[tuple[str, SpooledPart]] = []
    for part in parts:
        _, params = part.disposition()
        if params.get("name") != _FILES:
            continue  # a field the API does not take
        if "filename" not in params:
            raise _no_files(len(files))
        files.append((params["filename"] or "(unnamed)", part))
    if not files:
        raise _no_files()
    if spool.lost is not None:
        raise HTTPException(507, detail=spool.lost)
    series: dict[str, str] = {}
    rejected, warnings = [], []
    for name, part in files:
        with spool.content(part) as content:
            report = take_instance(store, [content], source="UPLOAD", association_id=association)
        if report.verdict is Verdict.OUT_OF_RESOURCES:
            raise HTTPException(507, detail=report.reason)
        if not report.stored or report.header is None:
            rejected.append({"file": name, "reason": report.reason})
            continue
        if report.outcome is StoreOutcome.REPLACED:  # probe 48: said of C-STORE alone
            log.info("instance %s from an upload: other bytes under a SOP Instance UID already stored; replaced, "
                     "series %s re-opened", report.header.sop_instance_uid, report.header.series_instance_uid)
        if report.verdict is Verdict.STORED_WITH_WARNING:
            warnings.append({"file": name, "warning": report.reason})
        series[report.header.series_instance_uid] = report.header.study_instance_uid
    if not series:
        pictures = rejected and all((r["reason"] or "").startswith(PICTURE_REFUSAL_PREFIX) for r in rejected)
        message = "no DICOM file among the upload" + (
            ", only pictures: the node reads DICOM images; export them as DICOM from the PACS or the viewer"
            if pictures else "")
        raise HTTPException(400, detail={"message": message, "rejected": rejected})
    queue = JobQueue(store)
    destinations = settings.delivery.destinations
    monitor = CompletionMonitor(
        store, queue, grace_s=settings.scp.completion_grace_s, quiet_s=settings.scp.completion_quiet_s,
        model=settings.inference.model, contrast_series=settings.inference.contrast_series,
        sharp_kernel_series=settings.inference.sharp_kernel_series,
        other_region_series=settings.inference.other_region_series,
        # a series the upload empties (its images in another series) has its results withdrawn: notes owed
        outbox=Outbox(store, max_attempts=settings.delivery.max_attempts, backoff_s=settings.delivery.backoff_s,
                      backoff_max_s=settings.delivery.backoff_max_s) if destinations else None,
        destinations=destinations,
    )
    done = {c.series_instance_uid: c for c in monitor.complete_now(list(series))}
    for uid in series.keys() - done.keys():  # unchanged files of a series skipped when it came unasked
        if (taken := monitor.take_asked(uid)) is not None:
            done[uid] = taken
    result = [
        {"series_instance_uid": uid, "study_instance_uid": study,
         **_series_labels(store, study, uid), **_outcome(store, queue, uid, done.get(uid))}
        for uid, study in series.items()
    ]
    # a patient's CD holds several studies, sometimes of another patient too: each patient's together, the newest
    # study first, its series in their numbers' order (probe 48: three blocks titled alike, a prior first)
    result.sort(key=_upload_order)
    # the same person as the index compares them (review 45: "DOE^ANNA" and "DOE^ANNA^^^" made two)
    patients = len({(identity_value("PatientID", r["patient_id"] or ""), identity_value("PatientName",
                                                                                       r["patient_name"] or ""))
                    for r in result})
    return {"series": result, "rejected": rejected, "warnings": warnings, "patients": patients}


def _upload_order(series: dict[str, Any]) -> tuple[str, str, int, str, int]:
    """Where a series of an upload's answer stands: by patient, the newest study first, by its number."""
    date = series["study_date"] or ""
    number = series["series_number"]
    return (identity_value("PatientID", series["patient_id"] or ""),
            identity_value("PatientName", series["patient_name"] or ""), -int(date) if date.isdigit() else 0,
            series["study_instance_uid"], number if isinstance(number, int) else 1 << 31)


def _series_labels(store: Store, study: str, uid: str) -> dict[str, Any]:
    """What a person knows the series by: modality, description, number and its count of images; and its study
    and patient as the index has them (name, ID, birth date, study date, accession number, description): an
    upload of a patient's CD holds priors and sometimes another patient (probe 48: the page named none of them)."""
    row = queries.series_row(store.db, uid)
    version = queries.series_version(store.db, study, uid)
    of_study = store.conn().execute(
        "SELECT patient_name, patient_id, patient_birth_date, study_date, accession_number, study_description"
        " FROM studies WHERE study_instance_uid = ?", (study,)).fetchone()
    return {
        "modality": row["modality"] if row is not None else None,
        "series_description": row["series_description"] if row is not None else None,
        "series_number": row["series_number"] if row is not None else None,
        "instances": version[0] if version is not None else 0,
        **{key: (of_study[key] if of_study is not None else None) for key in _STUDY_LABELS},
    }


_STUDY_LABELS = ("patient_name", "patient_id", "patient_birth_date", "study_date", "accession_number",
                 "study_description")


def _outcome(store: Store, queue: JobQueue, uid: str, completed: CompletedSeries | None) -> dict[str, Any]:
    """The series' job, or why it has none: completed by this upload, or as it was left before it.

    A series this upload did not complete is one whose instances were all there already (the same
    bytes uploaded again: its earlier job is ``reused``, or its earlier reason for being skipped is
    given again) or one that is still receiving (an instance arrived meanwhile).
    """
    if completed is not None:
        return {"job_id": completed.job_id, "skipped": completed.reason if completed.job_id is None else None,
                "reused": False, "created_at": None}
    row = queries.series_row(store.db, uid)
    if row is None or row["state"] != "complete":
        return {"job_id": None, "skipped": STILL_RECEIVING, "reused": False, "created_at": None}
    if row["disposition"] == SeriesDisposition.SKIPPED:
        return {"job_id": None, "skipped": row["reason"], "reused": False, "created_at": None}
    jobs = queue.for_series(uid)
    if not jobs:
        return {"job_id": None, "skipped": "its job is no longer kept", "reused": False, "created_at": None}
    return {"job_id": jobs[-1].id, "skipped": None, "reused": True, "created_at": jobs[-1].created_at}


@router.get("/jobs", summary="Jobs, newest first")
def list_jobs(store: StoreDep, state: JobState | None = None, limit: int = 100) -> list[dict[str, Any]]:
    queue = JobQueue(store)
    return [job_json(j, queue) for j in queue.list(state, min(max(limit, 1), 1000))]


@router.get("/jobs/{job_id}", summary="One job: state, reason, findings")
def get_job(job_id: int, store: StoreDep) -> dict[str, Any]:
    queue = JobQueue(store)
    job = queue.get(job_id)
    if job is None:
        raise HTTPException(404, detail=f"no job {job_id}")
    return job_json(job, queue)


@router.get("/studies", summary="What the node did with each series of a study: received, analysed or skipped and why")
def list_studies(store: StoreDep, study: str | None = None, accession: str | None = None,
                 patient_id: str | None = None) -> dict[str, Any]:
    """The studies named by a Study Instance UID (``study``), an Accession Number (``accession``) or a Patient ID
    (``patient_id``), the first given, newest first: each series the node received with its state, what became
    of it (``disposition``: ``queued`` for the model or ``skipped``, with the ``reason``), its jobs and where their
    results went (``results``: destination, state, instances). What ``uronode study`` prints (probe 47: a
    skipped series was in no answer over HTTP, so an administrator without a shell on the node could not see why
    a scout, a reformat or a contrast phase got no result). ``more``: more studies matched than are given."""
    named = {key: value for key, value in (("study", study), ("accession", accession), ("patient_id", patient_id))
             if value}
    if not named:
        raise HTTPException(400, detail="name a study: ?study=<Study Instance UID>, ?accession=<Accession Number> or "
                                        "?patient_id=<Patient ID>")
    key, value = next(iter(named.items()))
    studies, more = queries.study_overview(store.db, **{key: value})
    return {"studies": studies, "more": more}
