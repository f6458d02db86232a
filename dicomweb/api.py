"""The REST API: the paper's predict endpoint, done properly, and the jobs.

``POST /api/predict`` takes DICOM files (multipart/form-data, field
``files``, one or many, e.g. a whole folder), stores them like any received
instance, completes their series at once (the upload has ended) and returns
the jobs made for them, the files refused with the reason for each (400
when no file could be stored) and the files stored with a warning. The
model runs in the worker process, never here; ``GET /api/jobs/{id}`` gives
the state and, once run, the findings.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, HTTPException, Request, UploadFile

from dicomweb.deps import StoreDep
from uronode.completion import CompletionMonitor
from uronode.dicomfile import read_instance
from uronode.errors import InvalidInstance, OutOfResources
from uronode.jobs import JobQueue
from uronode.settings import Settings
from uronode.types import Job, JobState

router = APIRouter(prefix="/api", tags=["API"])

MAX_UPLOAD_BYTES = 2 * 1024**3


def get_settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


def job_json(job: Job, queue: JobQueue) -> dict[str, Any]:
    data = asdict(job)
    data["state"] = str(job.state)
    findings = queue.findings(job.id)
    data["findings"] = json.loads(findings) if findings else None
    return data


@router.post("/predict", summary="Upload DICOM files and run the model on their series")
async def predict(
    request: Request,
    store: StoreDep,
    settings: Annotated[Settings, Depends(get_settings)],
    files: Annotated[list[UploadFile], File(description="DICOM files (one, several or a folder)")],
) -> dict[str, Any]:
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > MAX_UPLOAD_BYTES:
        raise HTTPException(413, detail=f"uploads are limited to {MAX_UPLOAD_BYTES} bytes")
    series: dict[str, str] = {}
    rejected, warnings = [], []
    for upload in files:
        content = await upload.read()
        name = upload.filename or "(unnamed)"
        if not content:
            rejected.append({"file": name, "reason": "an empty file (0 bytes)"})
            continue
        if len(content) < 132 or content[128:132] != b"DICM":
            rejected.append({"file": name, "reason": "not a DICOM file (no DICM prefix)"})
            continue
        try:
            header, warning = read_instance([content])
            store.put(header, [content], calling_ae="UPLOAD")
        except InvalidInstance as exc:
            rejected.append({"file": name, "reason": str(exc)})
            continue
        except OutOfResources as exc:
            raise HTTPException(507, detail=str(exc)) from exc
        if warning is not None:
            warnings.append({"file": name, "warning": warning})
        series[header.series_instance_uid] = header.study_instance_uid
    if not series:
        raise HTTPException(400, detail={"message": "no DICOM file among the upload", "rejected": rejected})
    queue = JobQueue(store)
    monitor = CompletionMonitor(
        store, queue, grace_s=settings.scp.completion_grace_s, quiet_s=settings.scp.completion_quiet_s,
        model=settings.inference.model,
    )
    done = {c.series_instance_uid: c for c in monitor.complete_now(list(series))}
    result = []
    for uid, study in series.items():
        completed = done.get(uid)
        jobs = queue.for_series(uid)
        result.append({
            "series_instance_uid": uid,
            "study_instance_uid": study,
            "job_id": completed.job_id if completed else (jobs[-1].id if jobs else None),
            "skipped": completed.reason if completed and completed.job_id is None else None,
        })
    return {"series": result, "rejected": rejected, "warnings": warnings}


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
