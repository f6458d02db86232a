"""Dependencies shared by the routers: the store built in the app's lifespan."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from starlette.types import Scope

from uronode.store import Store


def get_store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


def store_in(scope: Scope) -> Store | None:
    """The store of the app a request's ``scope`` is for, as middleware sees it (Starlette puts the app in
    the scope before its middleware runs); None before the app's lifespan built it."""
    app = scope.get("app")
    store: Store | None = getattr(app.state, "store", None) if app is not None else None
    return store


StoreDep = Annotated[Store, Depends(get_store)]
