"""Store-backed answers for the command line and the API: a user's list, a segment's list, an
item's audience. Each call uses the stored model for the store as it is now
(:mod:`automation.recommend.persist`: new events folded in per user, a refit only when the
segmentation changed), so the answer is always current without a refit per call.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine

from automation.errors import NotFoundError
from automation.recommend.base import Recommendation, Recommender, Rules
from automation.recommend.context import NO_SEGMENT
from automation.recommend.registry import make_recommender
from automation.recommend.store import SegmentMap, current_segments, load_interactions

SERVICE_RULES = Rules(recent_days=30.0, max_per_category=3)


def fit_from_store(
    engine: Engine,
    model: str = "hybrid",
    rules: Rules | None = None,
    seed: int = 0,
    **params: Any,
) -> tuple[Recommender, SegmentMap]:
    """A backend fitted on every event in the store, with the current segments."""
    segments = current_segments(engine)
    inter = load_interactions(engine, segments=segments)
    rec = make_recommender(model, rules or SERVICE_RULES, seed, **params).fit(inter)
    return rec, segments


def _model(engine: Engine, model: str, rules: Rules | None = None) -> Recommender:
    """The stored model when it is current (updated or refitted and stored when not); a model
    with non-default rules is fitted for the call."""
    if rules is not None and rules != SERVICE_RULES:
        return fit_from_store(engine, model, rules)[0]
    from automation.recommend.persist import current_model

    return current_model(engine, model)[0]


def _segment_dict(rec: Recommender, code: int, provisional: bool) -> dict[str, Any] | None:
    if code == NO_SEGMENT:
        return None
    ctx = rec.context
    return {
        "id": str(ctx.segment_ids[code]),
        "name": str(ctx.segment_names[code]),
        "provisional": provisional,
    }


def _items(recs: list[Recommendation]) -> list[dict[str, Any]]:
    return [r.to_dict() for r in recs]


def recommend_user(
    engine: Engine,
    user_id: str,
    n: int = 10,
    model: str = "hybrid",
    filter_seen: bool = True,
    rules: Rules | None = None,
) -> dict[str, Any]:
    """``{"user_id", "segment", "items", "history"}`` for one user.

    A user the store does not know yet (or without a segment) goes through the cold-start path:
    a provisional segment (from their items, else the one most newcomers are in) and its
    popularity.
    """
    rec = _model(engine, model, rules)
    ctx = rec.context
    rows = ctx.rows_of([user_id])
    fitted = int(ctx.user_segment[rows[0]]) if rows[0] >= 0 else NO_SEGMENT
    seg = int(ctx.segments_for(rows)[0])
    items = rec.recommend(user_id, n=n, filter_seen=filter_seen)
    return {
        "user_id": user_id,
        "segment": _segment_dict(rec, seg, provisional=fitted == NO_SEGMENT),
        "items": _items(items),
        "history": {
            "known": bool(rows[0] >= 0),
            "orders": int(ctx.n_orders[rows[0]]) if rows[0] >= 0 else 0,
            "model": rec.name,
        },
    }


def recommend_segment(
    engine: Engine, segment_id: str, n: int = 10, model: str = "hybrid"
) -> dict[str, Any]:
    """``{"segment", "items"}``: what a newcomer of the segment would be shown."""
    rec = _model(engine, model)
    code = rec.context.segment_code(segment_id)
    if code == NO_SEGMENT:
        known = ", ".join(sorted(map(str, rec.context.segment_ids))) or (
            "none: run `shoal segment` first"
        )
        raise NotFoundError(f"no segment {segment_id!r} in the current segmentation ({known})")
    return {
        "segment": _segment_dict(rec, code, provisional=False),
        "items": _items(rec.recommend_segment(segment_id, n=n)),
    }


def audience(
    engine: Engine,
    item_id: str,
    n: int = 1000,
    model: str = "hybrid",
    filter_seen: bool = True,
) -> dict[str, Any]:
    """``{"item_id", "name", "price", "users": [{"user_id", "segment", "score"}]}``."""
    rec = _model(engine, model)
    ctx = rec.context
    if str(item_id) not in ctx.catalogue.index():
        raise NotFoundError(f"no item {item_id!r} in the store")
    pairs = rec.audience(item_id, n=n, filter_seen=filter_seen)
    i = rec.item_row(item_id)
    rows = ctx.rows_of([u for u, _ in pairs])
    segs = ctx.segments_for(rows)
    price = float(ctx.catalogue.prices[i])
    return {
        "item_id": str(item_id),
        "name": str(ctx.catalogue.names[i]),
        "price": None if price != price else round(price, 2),
        "users": [
            {
                "user_id": u,
                "segment": str(ctx.segment_ids[s]) if s != NO_SEGMENT else None,
                "score": round(score, 6),
            }
            for (u, score), s in zip(pairs, segs.tolist(), strict=True)
        ],
    }
