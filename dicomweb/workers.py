"""The claim API for remote workers (``uronode worker``): claim a job, renew its lease, complete it.

Every route takes a worker's bearer token (``queue.worker_tokens_file``), whatever
``dicomweb.auth`` is: a claim records which worker holds it. No token, or one the
node does not know: 401. A job that is done, whose generation is stale, or that
another live claim holds: 409 (the worker drops its message). A completion from a
claim that no longer holds the job: 409, and nothing changes. A completion naming
results the store lacks: 422 (store them by STOW-RS first). ``docs/distributed.md``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from dicomweb.auth import (
    AUTHENTICATION,
    Authentication,
    GuessLimit,
    RefusalWarnings,
    guess_limit_reached,
    requester,
    too_many_guesses,
    trusted_addresses,
)
from uronode.audit import AuditLog
from uronode.claims import ClaimConflict, Claims, NoSuchJob, ResultsMissing, WorkerTokens
from uronode.errors import OutOfResources
from uronode.outbox import Outbox
from uronode.settings import Settings, model_folder, model_label
from uronode.supersede import current_reports, findings_model, rejected_uids

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 8 * 1024 * 1024
"""The most a claim API request's body may hold (413 past it, by its Content-Length before any of it is read, or
once that much has come): a completion naming 10,000 results with its findings is far under it. FastAPI parses a
JSON body whole, before any dependency runs (probe 27: nothing bounded it)."""
router = APIRouter(prefix="/api/queue", tags=["Remote workers"], max_body_size=MAX_BODY_BYTES)
PREFIX = "/api/queue/"


def bearer(header: str) -> str | None:
    scheme, _, value = header.partition(" ")
    return value.strip() or None if scheme.lower() == "bearer" else None


def identify(tokens: WorkerTokens, header: str) -> Authentication:
    """Which remote worker the ``Authorization`` header names, or why it names none."""
    token = bearer(header)
    name = tokens.worker(token) if token else None
    if name is not None:
        return Authentication("worker", name)
    return Authentication("failed", failure="no credentials" if not header else "not a bearer token"
                          if token is None else "unknown or revoked worker token")


def _unauthorized(failure: str | None) -> tuple[dict[str, str], dict[str, str]]:
    """A refused claim API request's 401: its body and headers."""
    return {"detail": f"a worker's bearer token is required ({failure})"}, {"WWW-Authenticate": "Bearer"}


def get_worker(request: Request) -> str:
    """The remote worker this request comes from (its token's name), else 401. Either way the request's
    :class:`Authentication` is left for the audit, as the authentication layer leaves it on other paths, and a
    refusal is a rate-limited warning (probe 20: the claim API's requests were audited without who or why).
    :class:`ClaimGate` has refused a request without a worker's token before its body was read, and left who
    sent it in the scope; without the gate (the router mounted elsewhere) the token is checked here."""
    authentication: Authentication | None = request.scope.get(AUTHENTICATION)
    if authentication is None:
        authentication = identify(request.app.state.worker_tokens, request.headers.get("authorization", ""))
        request.scope[AUTHENTICATION] = authentication
    if authentication.user is None:
        _warn(request, authentication.failure or "refused", "authentication failed")
        body, headers = _unauthorized(authentication.failure)
        raise HTTPException(401, detail=body["detail"], headers=headers)
    return authentication.user


class ClaimGate:
    """ASGI middleware: a claim API request (``/api/queue/...``) without a known worker's token is a 401 before
    its body is read. Probe 27: the routes' token check is a dependency, which FastAPI runs after it has read and
    parsed the whole JSON body; one unauthenticated 1 GB body took the node's HTTP process to 3.2 GB. Audited
    and warned of as :func:`get_worker` does (the audit middleware wraps this one)."""

    def __init__(self, app: ASGIApp, tokens: WorkerTokens, warnings: RefusalWarnings,
                 trusted_proxies: Iterable[str] = (), guesses: GuessLimit | None = None) -> None:
        self.app = app
        self.tokens = tokens
        self.warnings = warnings
        self.trusted = trusted_addresses(trusted_proxies)
        self.guesses = guesses or GuessLimit()  # the node's one, shared with BasicAuth (create_app)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(PREFIX):
            await self.app(scope, receive, send)
            return
        header = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"authorization"), "")
        client = requester(scope, self.trusted).client
        if header and (wait_s := self.guesses.wait_s(client)) > 0:
            failure = guess_limit_reached(self.guesses)
            scope[AUTHENTICATION] = Authentication("failed", failure=failure, status=429)
            self.warnings.refused(client, scope["method"], scope["path"], failure)
            await too_many_guesses(failure, wait_s)(scope, receive, send)
            return
        authentication = await run_in_threadpool(identify, self.tokens, header)  # it may read the tokens file
        scope[AUTHENTICATION] = authentication  # in place: the route's get_worker and the audit read it
        if authentication.user is not None:
            await self.app(scope, receive, send)
            return
        self.guesses.failed(client, authentication.failure, header)
        self.warnings.refused(client, scope["method"], scope["path"], authentication.failure or "refused")
        body, headers = _unauthorized(authentication.failure)
        await JSONResponse(body, status_code=401, headers=headers)(scope, receive, send)


def _warn(request: Request, failure: str, what: str) -> None:
    settings: Settings = request.app.state.settings
    client = requester(request.scope, trusted_addresses(settings.dicomweb.trusted_proxies)).client
    warnings: RefusalWarnings = request.app.state.refusal_warnings
    warnings.refused(client, request.method, request.url.path, failure, what)


def refuse(request: Request, worker: str, reason: str) -> HTTPException:
    """A 403 for ``worker``, audited and warned of as a refusal with its reason."""
    request.scope[AUTHENTICATION] = Authentication("worker", worker, failure=reason)
    _warn(request, reason, "request refused")
    return HTTPException(403, detail=reason)


WorkerDep = Annotated[str, Depends(get_worker)]


def get_claims(request: Request) -> Claims:
    settings: Settings = request.app.state.settings
    return Claims(request.app.state.store, lease_s=settings.queue.lease_s, claim_timeout_s=settings.queue.claim_timeout_s)


ClaimsDep = Annotated[Claims, Depends(get_claims)]


class ClaimRequest(BaseModel):
    generation: int = Field(ge=1)
    key: str = Field(min_length=1, max_length=200)
    """The job message's claim key (``uronode.claims.claim_key``)."""


class HeartbeatRequest(BaseModel):
    claim: str = Field(min_length=1, max_length=200)


class CompleteRequest(BaseModel):
    claim: str = Field(min_length=1, max_length=200)
    results: list[str] = Field(max_length=10000)
    """SOP Instance UIDs of the results, stored by STOW-RS before."""
    findings: dict[str, Any]
    seconds: float | None = Field(None, ge=0)


class FailRequest(BaseModel):
    claim: str = Field(min_length=1, max_length=200)
    reason: str = Field(min_length=1, max_length=2000)


def _conflict(exc: Exception) -> HTTPException:
    if isinstance(exc, NoSuchJob):
        return HTTPException(404, detail=str(exc))
    if isinstance(exc, ResultsMissing):
        return HTTPException(422, detail=str(exc))
    return HTTPException(409, detail=str(exc))


@router.post("/jobs/{job_id}/claim", summary="Claim a job for one lease")
async def claim_job(job_id: int, body: ClaimRequest, request: Request, worker: WorkerDep,
                    claims: ClaimsDep) -> dict[str, Any]:
    if not await run_in_threadpool(claims.key_matches, job_id, body.generation, body.key):
        raise refuse(request, worker, f"worker {worker}: the claim's key is not the one of job {job_id}'s message "
                                      "(a job is claimed with the message the broker gave)")
    try:  # no job is handed out while its results could not be stored (probe 24; the node's own worker waits too)
        await run_in_threadpool(claims.store.check_space)
    except OutOfResources as exc:
        await run_in_threadpool(claims.held_back, job_id)
        raise HTTPException(409, detail=f"job {job_id} is not handed out while the node's {exc} (its results could "
                                        "not be stored); it is published again later") from exc
    try:
        claim = await run_in_threadpool(claims.claim, job_id, body.generation, worker)
    except (ClaimConflict, NoSuchJob) as exc:
        raise _conflict(exc) from exc
    job = claim.job
    log.info("job %d series %s claimed by %s (attempt %d)", job.id, job.series_instance_uid, worker, job.attempts)
    # the series' current reports, by model: the worker's report names those of its own model as the ones it
    # replaces (its Predecessor Documents Sequence), as a local worker's does
    reports = await run_in_threadpool(lambda: current_reports(claims.store.conn(), job.series_instance_uid))
    # and the UIDs its results must not take (rejected earlier: review 35), as a local worker avoids them
    rejected = await run_in_threadpool(lambda: rejected_uids(claims.store.conn(), job.series_instance_uid))
    return {
        "claim": claim.token, "lease_s": claim.lease_s, "lease_until": claim.lease_until,
        "job": {"id": job.id, "study_instance_uid": job.study_instance_uid,
                "series_instance_uid": job.series_instance_uid, "generation": job.series_generation,
                "model": job.model, "attempts": job.attempts},
        "reports": [{"model": model, "study_instance_uid": ref.study_instance_uid,
                     "series_instance_uid": ref.series_instance_uid, "sop_class_uid": ref.sop_class_uid,
                     "sop_instance_uid": ref.sop_instance_uid} for model, ref in reports],
        "rejected": sorted(rejected),
    }


@router.get("/worker", summary="Which worker this token names (a worker checks its token at start)")
async def whoami(worker: WorkerDep) -> dict[str, str]:
    return {"worker": worker}


@router.post("/jobs/{job_id}/heartbeat", summary="Renew a claim's lease")
async def heartbeat(job_id: int, body: HeartbeatRequest, worker: WorkerDep, claims: ClaimsDep) -> dict[str, Any]:
    try:
        lease_until = await run_in_threadpool(claims.heartbeat, job_id, body.claim, worker)
    except (ClaimConflict, NoSuchJob) as exc:
        raise _conflict(exc) from exc
    return {"lease_until": lease_until}


@router.post("/jobs/{job_id}/complete", summary="Record a claim's results and owe them to the destinations")
async def complete(
    job_id: int, body: CompleteRequest, worker: WorkerDep, claims: ClaimsDep, request: Request
) -> dict[str, Any]:
    settings: Settings = request.app.state.settings
    outbox = Outbox(claims.store, max_attempts=settings.delivery.max_attempts, backoff_s=settings.delivery.backoff_s,
                    backoff_max_s=settings.delivery.backoff_max_s)
    try:
        state = await run_in_threadpool(
            lambda: claims.complete(job_id, body.claim, worker, results=body.results, findings=json.dumps(body.findings),
                                    seconds=body.seconds, destinations=settings.delivery.destinations, outbox=outbox)
        )
    except ClaimConflict as exc:
        await run_in_threadpool(claims.refused)
        log.warning("job %d: completion from %s refused: %s", job_id, worker, exc)
        raise _conflict(exc) from exc
    except (NoSuchJob, ResultsMissing) as exc:
        raise _conflict(exc) from exc
    AuditLog(claims.store.root).record(
        "job_finished", job_id=job_id, state=state.value, worker=worker, results=body.results,
        stones=len(body.findings.get("stones", [])), seconds=body.seconds,
    )
    log.info("job %d completed by %s: %d result instance(s), %s", job_id, worker, len(body.results), state)
    ran, ours = findings_model(json.dumps(body.findings)), node_model(settings)
    if ran and ours and ran != ours:
        log.warning("job %d: worker %s ran model %s, where this node's %r is %s: a worker left at an earlier (or"
                    " later) version? Its results are kept and delivered; upgrade the workers with the node"
                    " (docs/operations.md, \"Upgrading uronode\")", job_id, worker, ran, settings.inference.model, ours)
    return {"state": state.value}


def node_model(settings: Settings) -> str:
    """The node's model as results name it ("name version", from its card), "" where the node cannot read it (a
    node that runs no model itself may hold none): what a remote worker's completion is compared with (probe 43:
    a worker left at an earlier version wrote its own model's results under the same model name, unsaid). It is
    looked up as the node's own worker loads it."""
    return model_label(model_folder(settings.inference.model, settings.inference.models_dir))


@router.post("/jobs/{job_id}/fail", summary="Give a claimed job up as failed, with the reason")
async def fail(job_id: int, body: FailRequest, worker: WorkerDep, claims: ClaimsDep) -> dict[str, Any]:
    try:
        await run_in_threadpool(claims.fail, job_id, body.claim, worker, body.reason)
    except ClaimConflict as exc:
        await run_in_threadpool(claims.refused)
        log.warning("job %d: failure from %s refused: %s", job_id, worker, exc)
        raise _conflict(exc) from exc
    except NoSuchJob as exc:
        raise _conflict(exc) from exc
    AuditLog(claims.store.root).record("job_finished", job_id=job_id, state="failed", worker=worker, reason=body.reason)
    log.warning("job %d failed on %s: %s", job_id, worker, body.reason)
    return {"state": "failed"}


@router.post("/jobs/{job_id}/give-back", summary="Give a claimed job back, the try not counted (the node's disk)")
async def give_back(job_id: int, body: FailRequest, worker: WorkerDep, claims: ClaimsDep) -> dict[str, Any]:
    """Review 27: a remote job whose results the node refused for a full disk failed for good, where the node's
    own worker gives such a job back."""
    try:
        await run_in_threadpool(claims.give_back, job_id, body.claim, worker, body.reason)
    except ClaimConflict as exc:
        await run_in_threadpool(claims.refused)
        raise _conflict(exc) from exc
    except NoSuchJob as exc:
        raise _conflict(exc) from exc
    AuditLog(claims.store.root).record("job_given_back", job_id=job_id, worker=worker, reason=body.reason)
    return {"state": "queued"}
