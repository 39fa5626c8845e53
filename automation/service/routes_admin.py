"""Admin and operations: refresh, erasure, health, Prometheus metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from automation.service.deps import get_state, stored_id, write_access
from automation.service.schemas import ERRORS
from automation.service.state import ServiceState
from automation.store.erase import erase_user

router = APIRouter(tags=["admin"], responses=ERRORS)


@router.post("/v1/refresh", status_code=202)
def refresh(state: ServiceState = Depends(write_access)) -> dict[str, Any]:
    """Fold pending events and refit the recommender now, in the background (with a broker,
    the workers' update is enqueued too)."""
    if state.channels is not None:
        state.channels.refresh()
    state.enqueue_update()
    return {"status": "scheduled"}


@router.delete("/v1/users/{user_id}")
def erase(user_id: str, state: ServiceState = Depends(write_access)) -> dict[str, Any]:
    """Erase a user: every row about them, their share of the segment statistics; the
    recommender is refitted without them in the background."""
    removed = erase_user(state.engine, stored_id(state, user_id))
    with state.lock:
        state.recommender = None  # never serve factors that still hold the erased user
        state.snapshot = None  # nor their features
    if state.channels is not None:
        state.channels.refit()  # refitted without them at once
    return {"user_id": user_id, "erased": True, "rows": removed}


@router.get("/healthz")
def healthz(state: ServiceState = Depends(get_state)) -> dict[str, Any]:
    """Liveness and the store's reachability."""
    from automation.service.folder import store_mark

    mark = store_mark(state)  # also proves the store answers
    return {
        "status": "ok",
        "database": state.engine.dialect.name,
        "recommender_ready": state.recommender is not None,
        "recommender_at": None if state.recommender is None else list(state.recommender[2]),
        "snapshot_version": None if state.snapshot is None else state.snapshot.version,
        "store_at": list(mark),
    }


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {}}, "description": "Metrics"}},
)
def metrics(state: ServiceState = Depends(get_state)) -> Response:
    """Prometheus text format: request latencies, events by outcome, background folds."""
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
