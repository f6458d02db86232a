"""Operations endpoints: liveness, readiness and Prometheus metrics.

The metrics are read from the node's database when scraped, so they are the
same whichever process did the work (receivers, worker, delivery) and
survive restarts.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import Response

from dicomweb.deps import StoreDep
from uronode.db import damage_said, is_damage
from uronode.errors import OutOfResources
from uronode.loops import Loops
from uronode.metrics import CONTENT_TYPE, exposition

router = APIRouter(tags=["operations"])

DATABASE_TIMEOUT_S = 5.0
"""``/readyz`` says the index is locked when its write lock cannot be had within this long."""

ReadyCheck = Callable[[bool], str | None]
"""A condition the node adds to ``/readyz`` (its model's folder is there): None while it holds,
else the reason it does not. It is called with whether the store takes work now (writable, under its
watermark, its index not locked): a check that follows from the store's state (no job is taken) says
nothing while the store's own line says why."""


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """Alive: the HTTP server answers."""
    return {"status": "ok"}


@router.get("/readyz")
def readyz(request: Request, store: StoreDep) -> dict[str, object]:
    """Ready: the store is writable (its temporary and its instances folders) and under its disk watermark,
    the index takes a write within :data:`DATABASE_TIMEOUT_S`, the node's own conditions hold (the model's
    folder is there, the worker is neither crash-looping nor frozen) and every background loop beats and
    does not fail round after round. Else 503, its ``detail`` naming every check that failed (``; ``
    between them)."""
    problems: list[str] = []
    try:
        store.check_space()
        for folder in (store.tmp_dir, store.instances_dir):
            probe = folder / ".ready"
            probe.write_bytes(b"ok")
            probe.unlink()
    except OutOfResources as exc:
        problems.append(str(exc))
    except OSError as exc:
        problems.append(f"the store is not writable: {exc.strerror or exc} ({getattr(exc, 'filename', '')})")
    if (locked := store.db.probe(DATABASE_TIMEOUT_S)) is not None:
        problems.append(locked)
    checks: tuple[ReadyCheck, ...] = request.app.state.ready_checks
    store_takes_work = not problems
    for check in checks:
        try:
            problem = check(store_takes_work)
        except sqlite3.Error as exc:  # probe 49: a damaged page answered 500 until the minute's scan found it
            problem = damage_said(store.db.path, exc) if is_damage(exc) else f"the index cannot be read: {exc}"
        if problem is not None:
            problems.append(problem)
    loops: Loops | None = request.app.state.loops
    if loops is not None:
        problems.extend(loops.problems())
    if problems:
        raise HTTPException(503, detail="; ".join(problems))
    return {"status": "ready", "loops": loops.names if loops is not None else []}


@router.get("/metrics", response_class=Response)
def metrics(store: StoreDep) -> Response:
    """Prometheus text format, read from the database (:mod:`uronode.metrics`)."""
    return Response(exposition(store.db), media_type=CONTENT_TYPE)
