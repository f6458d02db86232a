"""The FastAPI application. State is built in ``lifespan`` and reached through dependencies."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException

from dicomweb import api, qido, stow, upload, viewer, wado
from dicomweb.deps import get_store
from uronode import __version__
from uronode.settings import Settings
from uronode.store import Store


def create_app(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.settings = settings
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
    app.include_router(api.router)
    app.include_router(upload.router)

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

    app.include_router(viewer.make_router(settings.dicomweb.viewer_dir))  # last: it catches every other path
    return app
