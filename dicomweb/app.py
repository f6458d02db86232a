"""The FastAPI application. State is built in ``lifespan`` and reached through dependencies."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from dicomweb import api, ops, qido, stow, upload, viewer, wado
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
    app.include_router(ops.router)
    app.include_router(viewer.make_router(settings.dicomweb.viewer_dir))  # last: it catches every other path
    return app
