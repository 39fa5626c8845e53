"""Erasure of one user (a data-subject request): every row about them, and their contribution.

Removed in one transaction, under the segmentation, ingest and campaigns locks: the user's events, running aggregates
(``user_stats``, ``user_orders``, ``user_items``, ``user_categories``, ``batch_users``),
memberships, migrations, segment-change outbox events, campaign decisions, deliveries and their
dead letters, coupons, routing, quarantined rows with their id, the user row itself, and their
rows in the feature snapshot (its base and every delta). Their contribution to segment statistics is taken out: each segment's
``size`` (and ``share``) in every version they were counted in, and the live segment state's
weight. Stored recommender models are deleted and the erasure counter moves on, so every model
fitted with the user (stored, or held by a running service) is stale and is refitted from a
store that no longer holds any of their events.
"""

from __future__ import annotations

from sqlalchemy import Connection, Engine, text

from automation.errors import NotFoundError
from automation.store.history import resolve_user
from automation.store.locks import acquire_lock
from automation.store.snapshots import drop_user

#: Tables keyed by ``user_key`` that hold nothing but rows about one user each.
USER_TABLES = (
    "events",
    "user_stats",
    "user_orders",
    "user_items",
    "user_categories",
    "batch_users",
    "segment_migrations",
    "outbox",
    "campaign_decisions",
    "deliveries",
    "coupons",
    "routing",
)


def _segment_counts(conn: Connection, user_key: int) -> list[tuple[int, str]]:
    """(version, segment id) for every version that counted the user in a segment."""
    out = []
    for version in conn.execute(text("SELECT id, base_id FROM segmentations")).all():
        seg = resolve_user(conn, version, user_key)
        if seg is not None:
            out.append((int(version.id), seg))
    return out


def erase_user(engine: Engine, external_id: str) -> dict[str, int]:
    """Erase ``external_id``; returns rows removed per table. NotFoundError if unknown."""
    removed: dict[str, int] = {}
    with engine.begin() as conn:
        # The segmentation lock first (updates and refits hold it while they read and write
        # memberships), then the ingest lock: nothing folds the user back in meanwhile.
        acquire_lock(conn, "segmentation")
        acquire_lock(conn, "ingest")
        acquire_lock(conn, "campaigns")  # no campaign decides for them meanwhile
        acquire_lock(conn, "erasure")  # counts erasures: models fitted before are stale
        key = conn.execute(
            text("SELECT id FROM users WHERE external_id = :x"), {"x": external_id}
        ).scalar()
        if key is None:
            raise NotFoundError(f"no user {external_id!r} in the store")
        user_key = int(key)
        counted = _segment_counts(conn, user_key)
        for seg_version, seg_id in counted:
            conn.execute(
                text(
                    "UPDATE segments SET size = size - 1 WHERE segmentation_id = :v "
                    "AND segment_id = :s AND size > 0"
                ),
                {"v": seg_version, "s": seg_id},
            )
        state = max(counted)[1] if counted else None  # their segment in the newest version
        if state is not None:
            conn.execute(
                text(
                    "UPDATE segment_state SET weight = CASE WHEN weight > 1 THEN weight - 1 "
                    "ELSE 0 END WHERE segment_id = :s"
                ),
                {"s": str(state)},
            )
        removed["memberships"] = conn.execute(
            text("DELETE FROM memberships WHERE user_key = :u"), {"u": user_key}
        ).rowcount
        removed["dead_letters"] = conn.execute(
            text(
                "DELETE FROM dead_letters WHERE delivery_id IN "
                "(SELECT id FROM deliveries WHERE user_key = :u)"
            ),
            {"u": user_key},
        ).rowcount
        removed["recommender_models"] = conn.execute(
            text("DELETE FROM recommender_models")
        ).rowcount
        for table in USER_TABLES:
            removed[table] = conn.execute(
                text(f"DELETE FROM {table} WHERE user_key = :u"), {"u": user_key}
            ).rowcount
        removed["quarantine"] = conn.execute(
            text("DELETE FROM quarantine WHERE user_id = :x"), {"x": external_id}
        ).rowcount
        drop_user(conn, user_key)
        conn.execute(
            text(
                "UPDATE segments SET share = CAST(size AS FLOAT) / "
                "(SELECT CASE WHEN SUM(s2.size) > 0 THEN SUM(s2.size) ELSE 1 END "
                "FROM segments s2 WHERE s2.segmentation_id = segments.segmentation_id)"
            )
        )
        removed["users"] = conn.execute(
            text("DELETE FROM users WHERE id = :u"), {"u": user_key}
        ).rowcount
    return {k: v for k, v in removed.items() if v}
