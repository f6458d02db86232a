"""Operations endpoints: liveness, readiness and Prometheus metrics.

The metrics are read from the node's database when scraped, so they are the
same whichever process did the work (receivers, worker, delivery) and
survive restarts.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import Response

from dicomweb.deps import StoreDep
from uronode.errors import OutOfResources
from uronode.loops import Loops
from uronode.metrics import CONTENT_TYPE, exposition

router = APIRouter(tags=["operations"])

ReadyCheck = Callable[[], str | None]
"""A condition the node adds to ``/readyz`` (its model's folder is there): None while it holds,
else the reason it does not."""


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """Alive: the HTTP server answers."""
    return {"status": "ok"}


@router.get("/readyz")
def readyz(request: Request, store: StoreDep) -> dict[str, object]:
    """Ready: the store is writable and under its disk watermark, the node's own conditions hold (the
    model's folder is there) and every background loop beats (503 naming each one that does not)."""
    try:
        store.check_space()
        probe = store.tmp_dir / ".ready"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OutOfResources as exc:
        raise HTTPException(503, detail=str(exc)) from exc
    except OSError as exc:
        raise HTTPException(503, detail=f"the store is not writable: {exc.strerror or exc}") from exc
    checks: tuple[ReadyCheck, ...] = request.app.state.ready_checks
    for check in checks:
        if (problem := check()) is not None:
            raise HTTPException(503, detail=problem)
    loops: Loops | None = request.app.state.loops
    if loops is not None and (problems := loops.problems()):
        raise HTTPException(503, detail="; ".join(problems))
    return {"status": "ready", "loops": loops.names if loops is not None else []}


@router.get("/metrics", response_class=Response)
def metrics(store: StoreDep) -> Response:
    """Prometheus text format, read from the database (:mod:`uronode.metrics`)."""
    return Response(exposition(store.db), media_type=CONTENT_TYPE)
