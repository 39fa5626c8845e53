"""``create_app(settings)``: the FastAPI application; resources open in its lifespan.

Routers by role: ``routes_ingest`` (Segment-compatible writes), ``routes_read`` (support tools,
marketers), ``routes_admin`` (refresh, erasure, health, metrics), ``routes_dashboard`` (the
dashboard at ``/``). Errors share one JSON shape (:mod:`automation.service.errors`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request, Response
from starlette.routing import Match

from automation.config import Settings
from automation.service import errors
from automation.service.deps import read_token
from automation.service.folder import Folder
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

    @app.middleware("http")
    async def timing(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        path = "unmatched"
        for route in request.app.router.routes:
            if route.matches(request.scope)[0] == Match.FULL:
                path = getattr(route, "path", path)
                break
        state = getattr(request.app.state, "shoal", None)
        if state is not None:
            state.metrics.requests.labels(request.method, path, str(response.status_code)).observe(
                time.perf_counter() - started
            )
        return response

    return app


def app_from_env() -> FastAPI:
    """The app for ``uvicorn --factory`` (``shoal serve --workers N``): settings from the
    environment, one app per server process."""
    return create_app(Settings.from_env())
