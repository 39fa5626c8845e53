"""``create_app(settings)``: the FastAPI application; resources open in its lifespan.

Routers by role: ``routes_ingest`` (Segment-compatible writes), ``routes_read`` (support tools,
marketers), ``routes_admin`` (refresh, erasure, health, metrics), ``routes_dashboard`` (the
dashboard at ``/``). Errors share one JSON shape (:mod:`automation.service.errors`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from automation.config import Settings
from automation.service import errors
from automation.service.deps import read_token
from automation.service.folder import Folder, freeze_heap
from automation.service.state import ServiceState
from automation.store.db import open_store

log = logging.getLogger("shoal.service")


def create_app(settings: Settings | None = None, background: bool = True) -> FastAPI:
    """The service for ``settings`` (default: the environment).

    ``background`` starts the background process that refits the recommender (without a
    broker it also runs the incremental updates and the campaigns: the embedded default) and
    the thread that loads what it stores (:mod:`automation.service.folder`).
    """
    chosen = settings or Settings.from_env()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = ServiceState(open_store(chosen.database_url), chosen)
        with state.engine.connect() as conn:  # new users then skip the upsert (keys.py)
            state.keys.prime(conn)
        app.state.shoal = state
        folder = Folder(state, embedded=not chosen.broker_url) if background else None
        app.state.folder = folder
        freeze_heap()
        if folder is not None:
            folder.start()
        try:
            yield
        finally:
            if folder is not None:
                folder.stop()
            state.engine.dispose()

    from automation.service import routes_admin, routes_dashboard, routes_ingest, routes_read

    app = FastAPI(
        title="Shoal",
        summary="Behavioural segments, recommendations and campaigns for e-commerce.",
        version="0.1.0",
        lifespan=lifespan,
    )
    errors.install(app)
    app.include_router(routes_ingest.router)
    # Reads need the token only when configured so; the spec then documents it.
    guard = [Depends(read_token)] if chosen.api_reads == "token" else []
    app.include_router(routes_read.router, dependencies=guard)
    app.include_router(routes_admin.router)
    app.include_router(routes_dashboard.router, dependencies=guard)
    app.include_router(routes_dashboard.pages)

    app.add_middleware(Timing)
    return app


class Timing:
    """Request latency by route and status into ``/metrics``: a plain ASGI middleware (Starlette's
    ``BaseHTTPMiddleware`` runs every response through a task group and a memory stream, a
    large share of a support lookup's CPU)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500]

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            _observe(scope, status[0], time.perf_counter() - started)


def _observe(scope: Scope, status: int, seconds: float) -> None:
    app = scope.get("app")
    state = getattr(app.state, "shoal", None) if app is not None else None
    if app is None or state is None:
        return
    route = scope.get("route")  # set by the router on a match (Starlette >= 0.41)
    if route is None:
        route = next((r for r in app.router.routes if r.matches(scope)[0] == Match.FULL), None)
    path = getattr(route, "path", None) or "unmatched"
    state.metrics.requests.labels(scope["method"], path, str(status)).observe(seconds)


def app_from_env() -> FastAPI:
    """The app for ``uvicorn --factory`` (``shoal serve --workers N``): settings from the
    environment, one app per server process."""
    return create_app(Settings.from_env())
