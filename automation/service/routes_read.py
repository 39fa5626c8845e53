"""Reads: users (segment, routing, features, migrations), recommendations, segments,
migrations, item audiences, campaigns. Thin: each calls the library and shapes the answer."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi.concurrency import run_in_threadpool

from automation import api
from automation.campaigns import service as campaigns
from automation.errors import NotFoundError
from automation.service import lookup
from automation.service.deps import read_access, stored_id
from automation.service.schemas import ERRORS, AudienceOut, RecommendationsOut, UserOut
from automation.service.state import ServiceState

router = APIRouter(prefix="/v1", tags=["reads"], responses=ERRORS)


@router.get("/users/{user_id}", response_model=UserOut)
async def get_user(
    user_id: str,
    migrations: int = Query(10, ge=0, le=1000),
    state: ServiceState = Depends(read_access),
) -> dict[str, Any]:
    """A caller's segment, customer-service routing, features and latest migrations."""
    uid = stored_id(state, user_id)
    snap = state.snapshot
    if snap is not None:
        # On the event loop, not the thread pool (a hand-off there and back cost more than the
        # query): one indexed read in autocommit, which waits on no lock (PostgreSQL's MVCC,
        # SQLite's WAL).
        with state.reads.connect() as conn:
            fast = lookup.lookup(conn, snap, uid, migrations)
        if fast is not None:
            return {**fast, "user_id": user_id}
    # Not folded in yet: computed from the aggregates, in the thread pool.
    return await run_in_threadpool(_user_from_aggregates, state, uid, user_id, migrations)


def _user_from_aggregates(
    state: ServiceState, uid: str, user_id: str, migrations: int
) -> dict[str, Any]:
    data = api.user(state.engine, uid)
    return {
        "user_id": user_id,
        "as_of": data["as_of"],
        "segment": data["segment"],
        "routing": data["routing"],
        "features": data["features"],
        "migrations": data["history"][-migrations:] if migrations else [],
    }


def _recommender(state: ServiceState) -> Any:
    current = state.recommender
    if current is None:
        raise HTTPException(503, "recommendations are not ready yet (no segmentation, or fitting)")
    return current


@router.get("/users/{user_id}/recommendations", response_model=RecommendationsOut)
def recommendations(
    user_id: str, n: int = Query(10, ge=1, le=100), state: ServiceState = Depends(read_access)
) -> dict[str, Any]:
    """Top-n items with reasons, from the newest fitted model (unknown users: cold start)."""
    rec, _, mark = _recommender(state)
    uid = stored_id(state, user_id)
    ctx = rec.context
    rows = ctx.rows_of([uid])
    seg = int(ctx.segments_for(rows)[0])
    segment = None
    if seg >= 0:
        segment = {"id": str(ctx.segment_ids[seg]), "name": str(ctx.segment_names[seg])}
    items = [r.to_dict() for r in rec.recommend(uid, n=n)]
    return {"user_id": user_id, "segment": segment, "items": items, "fitted_at_batch": mark[0]}


@router.get("/items/{item_id}/audience", response_model=AudienceOut)
def item_audience(
    item_id: str, n: int = Query(100, ge=1, le=10_000), state: ServiceState = Depends(read_access)
) -> dict[str, Any]:
    """The users most likely to buy the item (a campaign audience)."""
    rec, _, _ = _recommender(state)
    if str(item_id) not in rec.context.catalogue.index():
        raise NotFoundError(f"no item {item_id!r} in the store")
    pairs = rec.audience(item_id, n=n)
    return {"item_id": item_id, "users": [{"user_id": u, "score": float(s)} for u, s in pairs]}


@router.get("/segments")
def list_segments(state: ServiceState = Depends(read_access)) -> dict[str, Any]:
    """The current segmentation: version, quality and every segment's profile."""
    return api.segments(state.engine)


@router.get("/segments/{segment_id}")
def get_segment(segment_id: str, state: ServiceState = Depends(read_access)) -> dict[str, Any]:
    """One segment now (profile) and its history (sizes per version, transitions)."""
    current = api.segments(state.engine)
    found = [s for s in current["segments"] if s["id"] == segment_id]
    history = api.history(state.engine, segment_id)
    return {"segment": found[0] if found else None, "history": history}


@router.get("/segments/{segment_id}/members")
def members(
    segment_id: str,
    as_of: datetime | None = None,
    page: int = Query(1, ge=1),
    page_size: int = Query(100, ge=1, le=10_000),
    state: ServiceState = Depends(read_access),
) -> dict[str, Any]:
    """Members of a segment, now or as of a past time, a page at a time."""
    frame = api.assignments(state.engine, as_of)
    ids = frame.loc[frame["segment_id"].astype(str) == segment_id, "user_id"].astype(str)
    start = (page - 1) * page_size
    return {
        "segment_id": segment_id,
        "as_of": as_of,
        "total": int(len(ids)),
        "page": page,
        "users": ids.iloc[start : start + page_size].tolist(),
    }


@router.get("/migrations")
def migrations(
    since: datetime | None = None,
    limit: int = Query(1000, ge=1, le=100_000),
    state: ServiceState = Depends(read_access),
) -> dict[str, Any]:
    """Recorded migrations since a time (event time), oldest first."""
    return {"migrations": api.migrations(state.engine, since=since, limit=limit)}


@router.get("/campaigns")
def list_campaigns(state: ServiceState = Depends(read_access)) -> dict[str, Any]:
    """Loaded campaigns with their results (uplift over a 30-day window)."""
    out = []
    for c in campaigns.list_campaigns(state.engine):
        up = campaigns.uplift(state.engine, c["name"], "30d")
        out.append({**c, "results": {"overall": up["overall"], "segments": up["segments"]}})
    return {"campaigns": out}
