"""The FastAPI application. State is built in ``lifespan`` and reached through dependencies."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException, Request

from dicomweb import qido, stow, viewer, wado
from dicomweb.deps import get_store
from uronode import __version__
from uronode.jobs import JobQueue
from uronode.settings import Settings
from uronode.store import Store
from uronode.types import JobState


def get_queue(request: Request) -> JobQueue:
    return JobQueue(get_store(request))


def create_app(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.store = Store(
            settings.storage.data_dir,
            fsync=settings.storage.fsync,
            max_disk_used_percent=settings.storage.max_disk_used_percent,
        )
        yield

    app = FastAPI(title="uronode", version=__version__, lifespan=lifespan)
    app.include_router(qido.router)
    app.include_router(wado.router)
    app.include_router(stow.router)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        """Alive."""
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz(store: Annotated[Store, Depends(get_store)]) -> dict[str, str]:
        """Ready to receive: the store is writable and under its disk watermark."""
        from uronode.errors import OutOfResources

        try:
            store.check_space()
        except OutOfResources as exc:
            raise HTTPException(503, detail=str(exc)) from exc
        return {"status": "ready"}

    @app.get("/api/jobs")
    def list_jobs(
        queue: Annotated[JobQueue, Depends(get_queue)], state: JobState | None = None, limit: int = 100
    ) -> list[dict[str, object]]:
        """Jobs, newest first."""
        return [_job_json(j) for j in queue.list(state, min(max(limit, 1), 1000))]

    @app.get("/api/jobs/{job_id}")
    def get_job(job_id: int, queue: Annotated[JobQueue, Depends(get_queue)]) -> dict[str, object]:
        job = queue.get(job_id)
        if job is None:
            raise HTTPException(404, detail=f"no job {job_id}")
        return _job_json(job)

    app.include_router(viewer.make_router(settings.dicomweb.viewer_dir))  # last: it catches every other path
    return app


def _job_json(job: object) -> dict[str, object]:
    from dataclasses import asdict

    data = asdict(job)  # type: ignore[call-overload]
    data["state"] = str(data["state"])
    return data
